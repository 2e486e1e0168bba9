"""Names of the activation functions and their resolution to per-layer codes.

The names and the compiled kernels' codes are :mod:`bpfast.registry`'s (this module's
``ACTIVATIONS``, ``ALIASES`` and ``OUTPUT_ONLY`` are the registry's own); the
formulas themselves live twice, on purpose: in NumPy in :mod:`bpfast.reference` (the
oracle) and in C in ``_activation_math.pxd`` (the kernels). Tests hold the two together.
"""
from collections.abc import Sequence

import numpy as np

from .registry import ACTIVATION_CODES, ACTIVATIONS, ALIASES, OUTPUT_ONLY


#: Slope of ``leaky_relu`` for negative inputs.
LEAKY_SLOPE = 0.01


def _canonical(name, where):
    if not isinstance(name, str):
        raise TypeError(
            f"{where}: expected an activation name (str), got {type(name).__name__} {name!r}"
        )
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        valid = ", ".join(ACTIVATIONS + tuple(ALIASES))
        raise ValueError(f"{where}: unknown activation {name!r}; valid names are {valid}")
    return key


def resolve_activations(activations: str | Sequence[str], n_layers: int) -> tuple[str, ...]:
    """Expand ``activations`` to one canonical name per layer.

    Parameters
    ----------
    activations : str or sequence of str
        One name for every layer, or exactly ``n_layers`` names.
    n_layers : int
        Number of layers ``L`` (weight matrices).

    Returns
    -------
    tuple of str, length ``n_layers``
    """
    if isinstance(activations, str):
        name = _canonical(activations, "activations")
        if name in OUTPUT_ONLY and n_layers > 1:
            raise ValueError(
                f"activations: {name!r} acts on a whole output row and is allowed only on "
                f"the last layer; give one name per layer, e.g. ['relu', ..., {name!r}]"
            )
        return (name,) * n_layers
    try:
        names = list(activations)
    except TypeError:
        raise TypeError(
            "activations: expected a name or a list of names, "
            f"got {type(activations).__name__}"
        ) from None
    if len(names) != n_layers:
        raise ValueError(
            f"activations: expected one name for every layer or a list of {n_layers} "
            f"(one per layer), got a list of {len(names)}"
        )
    resolved = tuple(_canonical(n, f"activations[{i}]") for i, n in enumerate(names))
    for i, name in enumerate(resolved[:-1]):
        if name in OUTPUT_ONLY:
            raise ValueError(
                f"activations[{i}]: {name!r} is allowed only on the last layer"
            )
    return resolved


def canonical_names(names: Sequence[str]) -> tuple[str, ...]:
    """The canonical name of every entry of ``names``.

    ``names`` are usually a network's canonical names, but a user may have replaced
    ``net.activations``: an alias is accepted, an unknown name raises ``ValueError``
    naming ``activations[i]`` and the valid names.
    """
    return tuple(_canonical(n, f"activations[{i}]") for i, n in enumerate(names))


def activation_codes(names: Sequence[str]) -> np.ndarray:
    """Integer codes of activation names, as the compiled kernels expect them (names
    checked as by :func:`canonical_names`)."""
    return np.array([ACTIVATION_CODES[n] for n in canonical_names(names)], dtype=np.intc)
