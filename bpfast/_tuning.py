"""The compiled core's route switches, set for a ``with`` block (exported as
``bpfast.engine.tuning``): for tests and benchmarks, which hold each route against the
others."""
import contextlib
import math
import numbers
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np

from ._core import kernels as _kernels

__all__ = ["SWITCHES", "tuning"]


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _count(value, name, least=0):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < least:
        raise ValueError(f"{name}: expected an integer of at least {least}, got {value}")
    return int(value)


def _positive_count(value, name):
    return _count(value, name, least=1)


def _seconds(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number of seconds, got {value!r}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name}: expected a finite, non-negative number, got {value}")
    return float(value)


class _Switch(NamedTuple):
    setter: str  # the compiled core's setter, which returns the old value(s)
    field: int  # this switch's position among the setter's arguments
    check: Callable[[Any, str], Any]  # validates a value (the error names the switch)
    doc: str


#: Every switch of :func:`tuning`: name -> how it is set, and what it does.
SWITCHES = {
    "small_gemm_limit": _Switch(
        "set_small_gemm_limit", 0, _count,
        "products with m * n * k up to this run as plain loops, not through the BLAS "
        "(0: the BLAS everywhere)"),
    "panel_gemm": _Switch(
        "set_panel_gemm", 0, _flag,
        "mid-sized products may take the panel kernel on bpfast's thread pool"),
    "panel_threads": _Switch(
        "set_panel_gemm", 1, _count,
        "threads of the panel kernel (0: the BLAS's own count)"),
    "first_transpose_limit": _Switch(
        "set_first_transpose_limit", 0, _count,
        "trainers built within keep the first layer transposed when "
        "batch_size * n^0 * n^1 is at most this"),
    "fused_update_limit": _Switch(
        "set_fused_update_limit", 0, _count,
        "layers with batch * n^l * n^(l-1) up to this take the fused gradient-and-update "
        "kernel in momentum and Adam steps (0: never; always 0 without AVX2 or AVX-512)"),
    "gradient_block": _Switch(
        "set_gradient_block", 0, _positive_count,
        "momentum and Adam steps take large layers' gradients this many entries at a time"),
    "direct_rows": _Switch(
        "set_direct_rows", 0, _flag,
        "a small transposed first layer reads a shuffled batch's rows where they are"),
    "vector_math": _Switch(
        "set_vector_math", 0, _flag,
        "exp, tanh, sigmoid, silu and the fused pointwise passes may take their vector "
        "versions (AVX2+FMA or AVX-512)"),
    "vector_products": _Switch(
        "set_vector_products", 0, _flag,
        "one-row products skip the BLAS: the vector kernels (AVX2, AVX-512), or the plain "
        "loops"),
    "signal_work": _Switch(
        "set_signal_check", 0, _positive_count,
        "training reads the clock after this many multiply-adds"),
    "signal_interval": _Switch(
        "set_signal_check", 1, _seconds,
        "and then handles signals when this many seconds have passed"),
}

#: Old switch names still accepted, with a DeprecationWarning: old -> new.
_RENAMED = {"avx512_vector_math": "vector_math"}

#: Setters of several values, and arguments they always accept: set, they return the
#: values in force, which fill the fields a :func:`tuning` call leaves out.
_PROBES = {"set_panel_gemm": (False, 0), "set_signal_check": (1, 0.0)}


@contextlib.contextmanager
def tuning(**switches):
    """Within the ``with`` block, the compiled core's routes as ``switches`` say; the
    previous settings come back on leaving it, also when it raises.

    For tests and benchmarks, which hold each route against the others: the switches are
    process-global (every thread sees them, and a trainer reads some when it is built),
    so use it where nothing else trains at the same time. The names are those of
    :data:`SWITCHES`; an unknown name or a bad value raises before anything changes.

    >>> with tuning(panel_gemm=False, small_gemm_limit=0):  # every product to the BLAS
    ...     pass
    """
    wanted = {}
    for name, value in switches.items():
        if name in _RENAMED:
            warnings.warn(f"tuning: the switch {name!r} is now {_RENAMED[name]!r} (its "
                          "route runs on AVX2 too)", DeprecationWarning, stacklevel=3)
            name = _RENAMED[name]
        switch = SWITCHES.get(name)
        if switch is None:
            raise TypeError(f"tuning: unknown switch {name!r}; the switches are "
                            f"{', '.join(SWITCHES)}")
        wanted.setdefault(switch.setter, {})[switch.field] = switch.check(value, name)
    undo = []
    try:
        for setter_name, fields in wanted.items():
            setter = getattr(_kernels, setter_name)
            if setter_name in _PROBES:
                old = setter(*_PROBES[setter_name])
                undo.append((setter, old))
                setter(*(fields.get(k, v) for k, v in enumerate(old)))
            else:
                undo.append((setter, (setter(fields[0]),)))
        yield
    finally:
        for setter, old in reversed(undo):
            setter(*old)
