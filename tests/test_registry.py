"""The registry against the compiled side: the Cython enums and the C kernels' activation
codes, and every name run through the compiled path equal to the NumPy reference."""
import pathlib
import re

import numpy as np
import pytest

import bpfast
from bpfast import reference, registry

PACKAGE = pathlib.Path(bpfast.__file__).parent
#: float64 comparisons of the compiled path against the reference.
RTOL = 1e-10


def _cython_enums():
    """Every ``NAME = value`` of every ``cdef enum`` block in the package's Cython
    sources, wherever they live under the package."""
    sources = [p for pattern in ("**/*.pxd", "**/*.pyx", "**/*.pxi")
               for p in PACKAGE.glob(pattern)]
    members = {}
    for path in sources:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"\s*cdef\s+enum\b", line):
                continue
            indent = None
            for body in lines[i + 1:]:
                if not body.strip() or body.strip().startswith("#"):
                    continue
                depth = len(body) - len(body.lstrip())
                if indent is None:
                    indent = depth
                if depth < indent or depth == 0:
                    break
                member = re.match(r"\s*([A-Z][A-Z0-9_]*)\s*=\s*(-?\d+)", body)
                if member:
                    assert members.get(member[1], int(member[2])) == int(member[2]), \
                        f"{member[1]} has two values ({path})"
                    members[member[1]] = int(member[2])
    return members


# the C kernels' header in the source tree beside these tests (an installed wheel carries
# only the compiled module)
KERNEL_TABLE = pathlib.Path(__file__).parent.parent / "bpfast" / "_core" / "src" / "kernel_table.h"
SOURCE_PACKAGE = KERNEL_TABLE.parent.parent.parent


def _c_activation_codes():
    """The ``BPFAST_NAME = value`` members of kernel_table.h's activation enum, by NAME,
    and the Cython names bound to them (``NAME "BPFAST_NAME"`` in an extern enum)."""
    if not KERNEL_TABLE.exists():
        pytest.skip("needs the source tree's C kernels")
    text = KERNEL_TABLE.read_text()
    block = re.search(r"enum\s*\{([^}]*BPFAST_IDENTITY[^}]*)\}", text)
    assert block, "kernel_table.h has no activation enum"
    codes = {m[1]: int(m[2]) for m in re.finditer(r"BPFAST_([A-Z_]+)\s*=\s*(\d+)", block[1])}
    bound = {}
    for path in SOURCE_PACKAGE.glob("**/*.pxd"):
        for m in re.finditer(r'^\s+([A-Z][A-Z0-9_]*)\s+"BPFAST_([A-Z_]+)"\s*$',
                             path.read_text(), re.M):
            bound[m[1]] = m[2]
    return codes, bound


def test_c_activation_codes_are_the_registry_codes():
    codes, bound = _c_activation_codes()
    assert codes == {name.upper(): code for name, code in registry.ACTIVATION_CODES.items()}
    # every Cython activation constant is the C constant of the same name
    assert {name: name for name in codes} == {k: v for k, v in bound.items() if v in codes}


def test_registry_matches_the_cython_enums():
    enums = _cython_enums()
    enums.update(_c_activation_codes()[0])
    for name, code in registry.KERNEL_ENUM.items():
        assert name in enums, f"{name} is in the registry but in no cdef enum"
        assert enums[name] == code, f"{name}: registry {code}, Cython {enums[name]}"
    activation_members = {n.upper() for n in registry.ACTIVATIONS}
    loss_or_opt = {n for n in enums if n.startswith(("LOSS_", "OPT_"))}
    assert activation_members | loss_or_opt <= set(registry.KERNEL_ENUM)


def test_tables_are_consistent():
    assert [registry.ACTIVATION_CODES[n] for n in registry.ACTIVATIONS] == \
        list(range(len(registry.ACTIVATIONS)))
    assert set(registry.ALIASES.values()) <= set(registry.ACTIVATIONS)
    assert set(registry.OUTPUT_ONLY) <= set(registry.ACTIVATIONS)
    for name, loss in registry.LOSSES.items():
        assert loss.output is None or loss.output in registry.ACTIVATIONS, name
    assert set(registry.CLASSIFICATION_LOSSES) <= set(registry.LOSSES)
    assert set(registry.SKLEARN_ACTIVATIONS.values()) <= set(registry.ACTIVATIONS)
    for (_, output), ours in registry.SKLEARN_LOSSES.items():
        needed = registry.LOSSES[ours].output
        assert needed is None or registry.SKLEARN_ACTIVATIONS[output] == needed
    # the reference computes exactly the registry's activations
    assert set(reference.ACTIVATIONS) == set(registry.ACTIVATIONS)


def test_public_names_are_views_of_the_registry():
    assert bpfast.activations.ACTIVATIONS is registry.ACTIVATIONS
    assert bpfast.activations.ALIASES is registry.ALIASES
    assert bpfast.training.LOSSES is registry.LOSSES
    assert bpfast.training.OPTIMIZERS is registry.OPTIMIZERS


def _params(sizes, seed):
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((n, k)) / np.sqrt(k) for k, n in zip(sizes, sizes[1:])]
    biases = [0.1 * rng.standard_normal(n) for n in sizes[1:]]
    return weights, biases


@pytest.mark.parametrize("name", registry.ACTIVATIONS + tuple(registry.ALIASES))
def test_every_activation_runs_compiled_as_the_reference(name):
    hidden = "tanh" if name in registry.OUTPUT_ONLY else name
    activations = [hidden, name]
    weights, biases = _params((5, 7, 4), seed=len(name))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((11, 5))
    Y = rng.uniform(0.1, 0.9, (11, 4))
    np.testing.assert_allclose(bpfast.forward(weights, biases, activations, X),
                               reference.forward(weights, biases, activations, X),
                               rtol=RTOL, atol=RTOL)
    got = bpfast.backprop(weights, biases, activations, X, Y)
    want = reference.backprop(weights, biases, activations, X, Y)
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL)
    for g, w in zip(got[1] + got[2], want[1] + want[2]):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("optimizer", tuple(registry.OPTIMIZERS))
@pytest.mark.parametrize("loss", tuple(registry.LOSSES))
def test_every_loss_and_optimizer_trains_compiled_as_the_reference(loss, optimizer):
    output = registry.LOSSES[loss].output or "identity"
    net = bpfast.Network([4, 6, 3], activations=["tanh", output], seed=3)
    rng = np.random.default_rng(4)
    X = rng.standard_normal((10, 4))
    if output == "softmax":
        Y = np.eye(3)[rng.integers(0, 3, 10)]
    elif output == "exp":
        Y = rng.poisson(1.0, (10, 3)).astype(float)
    else:
        Y = rng.uniform(0.0, 1.0, (10, 3))
    w0 = [w.copy() for w in net.weights]
    b0 = [b.copy() for b in net.biases]
    kw = dict(epochs=2, batch_size=4, learning_rate=0.05, optimizer=optimizer, loss=loss)
    history = net.fit(X, Y, shuffle=False, **kw)
    weights, biases, losses = reference.fit(w0, b0, net.activations, X, Y, **kw)
    for got, want in zip(net.weights + net.biases, weights + biases):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
    np.testing.assert_allclose(history.loss, losses, rtol=RTOL)
