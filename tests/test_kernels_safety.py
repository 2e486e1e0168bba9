"""The private ``bpfast._kernels.Layers`` checks every buffer: it raises, never crashes.

Cases that could crash the interpreter run in a subprocess, so that a segfault is a test
failure rather than the end of the test run.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpfast
from bpfast._core import kernels as _kernels
from bpfast.activations import activation_codes

from conftest import DTYPES, assert_close, make_data, make_params

SIZES = (4, 6, 5, 3)
M = 7
REPO = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))


def _setup(dtype=np.float64, sizes=SIZES, m=M, grads=True):
    W, b = make_params(sizes, dtype=dtype, seed=0)
    X, Y = make_data(sizes, m, dtype=dtype, seed=1)
    d = dict(
        weights=W, biases=b,
        codes=activation_codes(("tanh", "relu", "sigmoid")[:len(W)] if len(W) <= 3
                               else ("tanh",) * len(W)),
        n_inputs=sizes[0], m=m,
        Z=[np.zeros((m, n), dtype=dtype) for n in sizes[1:]],
        A=[np.zeros((m, n), dtype=dtype) for n in sizes[1:]],
    )
    if grads:
        d["dW"] = [np.zeros_like(w) for w in W]
        d["db"] = [np.zeros_like(v) for v in b]
    scratch = np.zeros(m * max(sizes[1:-1], default=1), dtype=dtype)
    return d, X, Y, scratch


def _build(d):
    return _kernels.Layers(d["weights"], d["biases"], d["codes"], d["n_inputs"], d["m"],
                           d["Z"], d["A"], d.get("dW"), d.get("db"))


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _strided(a):
    big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
    return big[tuple(slice(None, None, 2) for _ in a.shape)]


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    assert not out.flags.aligned
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_valid_layers_match_public_api(dtype):
    d, X, Y, scratch = _setup(dtype)
    layers = _build(d)
    assert layers.L == 3 and layers.m == M
    E = layers.backprop(X, Y, scratch)
    acts = ("tanh", "relu", "sigmoid")
    E2, dW, db = bpfast.backprop(d["weights"], d["biases"], acts, X, Y)
    np.testing.assert_allclose(E, E2, rtol=1e-6 if dtype is np.float32 else 1e-12)
    for g, g2 in zip(d["dW"] + d["db"], dW + db):
        assert_close(g, g2, dtype)
    layers.forward(X)
    assert_close(d["A"][-1], bpfast.forward(d["weights"], d["biases"], acts, X), dtype)


# --------------------------------------------------------------------------------------
# Wrong buffers passed to the constructor
# --------------------------------------------------------------------------------------

def _other(dtype):
    return np.float32 if np.dtype(dtype) == np.float64 else np.float64


BUFFER_KEYS = [("weights", 1), ("biases", 2), ("Z", 0), ("A", 2), ("dW", 1), ("db", 0),
               ("weights", 0), ("A", 0), ("dW", 2), ("db", 1), ("Z", 2)]


def _mutations(dtype):
    """name -> function(array) -> bad array; applied to one entry of one list."""
    return {
        "wrong_dtype": lambda a: a.astype(_other(dtype)),
        "int_dtype": lambda a: a.astype(np.int64),
        "float16": lambda a: a.astype(np.float16),
        "complex": lambda a: a.astype(np.complex128),
        "object": lambda a: a.astype(object),
        "shape_more_rows": lambda a: np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype),
        "shape_fewer_rows": lambda a: a[:-1].copy() if a.shape[0] > 1 else a[:0].copy(),
        "shape_more_cols": lambda a: (np.zeros((a.shape[0], a.shape[1] + 1), a.dtype)
                                      if a.ndim == 2 else np.zeros(a.size + 1, a.dtype)),
        "extra_dim": lambda a: a[None].copy(),
        "flattened": lambda a: a.ravel().copy() if a.ndim == 2 else a[:, None].copy(),
        "fortran": lambda a: (np.asfortranarray(a) if a.ndim == 2 else _strided(a)),
        "strided": _strided,
        "unaligned": _unaligned,
        "list": lambda a: a.tolist(),
        "none": lambda a: None,
        "scalar": lambda a: 1.0,
        "zero_rows": lambda a: np.zeros((0,) + a.shape[1:], dtype=a.dtype),
    }


MUTATIONS = list(_mutations(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("key,l", BUFFER_KEYS, ids=[f"{k}[{l}]" for k, l in BUFFER_KEYS])
def test_constructor_rejects_bad_buffer(dtype, mutation, key, l):
    d, X, Y, scratch = _setup(dtype)
    good = d[key][l]
    bad = _mutations(dtype)[mutation](good)
    if isinstance(bad, np.ndarray) and mutation in ("fortran",) and bad.flags.c_contiguous:
        pytest.skip("this layout is C-contiguous for this shape")  # pragma: no cover
    d[key] = list(d[key])
    d[key][l] = bad
    with pytest.raises((TypeError, ValueError)):
        _build(d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", ["Z", "A", "dW", "db"])
@pytest.mark.parametrize("l", [0, 1, 2])
def test_constructor_rejects_read_only_outputs(dtype, key, l):
    d, _, _, _ = _setup(dtype)
    d[key][l] = _readonly(d[key][l])
    with pytest.raises(ValueError, match="writ"):
        _build(d)


@pytest.mark.parametrize("key", ["weights", "biases"])
def test_read_only_parameters_are_fine(key):
    d, X, Y, scratch = _setup()
    d[key] = [_readonly(a) for a in d[key]]
    _build(d).backprop(_readonly(X), _readonly(Y), scratch)


@pytest.mark.parametrize("key", ["biases", "Z", "A", "dW", "db", "codes"])
@pytest.mark.parametrize("change", ["shorter", "longer", "empty"])
def test_constructor_rejects_wrong_list_lengths(key, change):
    d, _, _, _ = _setup()
    seq = list(d[key])
    seq = {"shorter": seq[:-1], "longer": seq + [seq[-1]], "empty": []}[change]
    d[key] = np.array(seq, dtype=np.intc) if key == "codes" else seq
    with pytest.raises((TypeError, ValueError)):
        _build(d)


def test_constructor_rejects_empty_weights():
    d, _, _, _ = _setup()
    for key in ("weights", "biases", "Z", "A", "dW", "db"):
        d[key] = []
    d["codes"] = np.array([], dtype=np.intc)
    with pytest.raises(ValueError):
        _build(d)


def test_constructor_rejects_dW_without_db():
    d, _, _, _ = _setup()
    d["db"] = None
    with pytest.raises(ValueError):
        _build(d)
    d, _, _, _ = _setup()
    d["dW"] = None
    with pytest.raises(ValueError):
        _build(d)


@pytest.mark.parametrize("key,container", [
    (k, c) for k in ["weights", "biases", "Z", "A", "dW", "db"]
    for c in ["tuple", "array", "none"] if not (c == "none" and k in ("dW", "db"))])
def test_constructor_rejects_non_list_containers(key, container):
    d, _, _, _ = _setup()
    d[key] = {"tuple": tuple(d[key]), "array": d[key][0], "none": None}[container]
    with pytest.raises((TypeError, ValueError)):
        _build(d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["weights[0]", "A[0]", "X"])
def test_rejects_byteswapped_buffers(dtype, target):
    """A non-native byte order is a different dtype: accepting it reads/writes garbage."""
    d, X, Y, scratch = _setup(dtype)
    swap = lambda a: a.astype(a.dtype.newbyteorder())
    if target in ("X", "Y", "scratch"):
        layers = _build(d)
        args = {"X": X, "Y": Y, "scratch": scratch}
        args[target] = swap(args[target])
        with pytest.raises((TypeError, ValueError)):
            layers.backprop(args["X"], args["Y"], args["scratch"])
        return
    key, l = target[:-3], int(target[-2])
    d[key][l] = swap(d[key][l])
    with pytest.raises((TypeError, ValueError)):
        _build(d)


@pytest.mark.parametrize("code", [-1, len(bpfast.ACTIVATIONS), 100, -(2**31), 2**31 - 1])
def test_constructor_rejects_bad_activation_code(code):
    d, _, _, _ = _setup()
    d["codes"] = np.array([2, code, 1], dtype=np.int64)
    with pytest.raises(ValueError, match="code"):
        _build(d)


@pytest.mark.parametrize("codes", [None, 3, "abc", [1, None, 2]])
def test_constructor_rejects_malformed_codes(codes):
    d, _, _, _ = _setup()
    d["codes"] = codes
    with pytest.raises((TypeError, ValueError)):
        _build(d)


@pytest.mark.parametrize("m", [0, -1, M + 1, M - 1])
def test_constructor_rejects_wrong_m(m):
    d, _, _, _ = _setup()
    d["m"] = m
    with pytest.raises(ValueError):
        _build(d)


@pytest.mark.parametrize("n_inputs", [0, -4, 3, 5])
def test_constructor_rejects_wrong_n_inputs(n_inputs):
    d, _, _, _ = _setup()
    d["n_inputs"] = n_inputs
    with pytest.raises(ValueError):
        _build(d)


@pytest.mark.parametrize("value", [2**31, 2**63, "7", None])
def test_constructor_rejects_unrepresentable_ints(value):
    d, _, _, _ = _setup()
    d["m"] = value
    with pytest.raises((TypeError, ValueError, OverflowError)):
        _build(d)


def test_constructor_rejects_integer_weights():
    d, _, _, _ = _setup()
    d["weights"] = [w.astype(np.int64) for w in d["weights"]]
    with pytest.raises(TypeError):
        _build(d)


# --------------------------------------------------------------------------------------
# Wrong buffers passed to forward / backprop
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", ["X", "Y", "scratch"])
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_backprop_rejects_bad_arguments(dtype, target, mutation):
    d, X, Y, scratch = _setup(dtype)
    layers = _build(d)
    args = {"X": X, "Y": Y, "scratch": scratch}
    bad = _mutations(dtype)[mutation](args[target])
    if mutation == "fortran" and isinstance(bad, np.ndarray) and bad.flags.c_contiguous:
        pytest.skip("C-contiguous for this shape")  # pragma: no cover
    args[target] = bad
    with pytest.raises((TypeError, ValueError)):
        layers.backprop(args["X"], args["Y"], args["scratch"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_forward_rejects_bad_X(dtype, mutation):
    d, X, _, _ = _setup(dtype, grads=False)
    layers = _build(d)
    bad = _mutations(dtype)[mutation](X)
    with pytest.raises((TypeError, ValueError)):
        layers.forward(bad)


@pytest.mark.parametrize("short", [1, M, M * 6 - 1])
def test_backprop_rejects_scratch_too_small(short):
    d, X, Y, scratch = _setup()
    layers = _build(d)
    assert scratch.size == M * 6
    with pytest.raises(ValueError, match="scratch"):
        layers.backprop(X, Y, np.empty(short))


def test_backprop_rejects_read_only_scratch():
    d, X, Y, scratch = _setup()
    with pytest.raises(ValueError, match="scratch"):
        _build(d).backprop(X, Y, _readonly(scratch))


def test_backprop_scratch_for_single_layer():
    """One layer has no hidden layer: a scratch of m entries is enough."""
    d, X, Y, scratch = _setup(sizes=(4, 3), m=5)
    assert scratch.size == 5
    layers = _build(d)
    layers.backprop(X, Y, scratch)
    with pytest.raises(ValueError, match="scratch"):
        layers.backprop(X, Y, np.empty(4))


def test_backprop_without_gradient_buffers():
    d, X, Y, scratch = _setup(grads=False)
    layers = _build(d)
    layers.forward(X)
    with pytest.raises(ValueError):
        layers.backprop(X, Y, scratch)


def test_read_only_X_Y_accepted():
    d, X, Y, scratch = _setup()
    layers = _build(d)
    layers.forward(_readonly(X))
    layers.backprop(_readonly(X), _readonly(Y), scratch)


def test_many_failed_constructions_then_valid_use():
    """Failed constructors free what they allocated and leave nothing half-usable."""
    for i in range(200):
        d, X, Y, scratch = _setup()
        d["A"][i % 3] = d["A"][i % 3].astype(np.float32)
        with pytest.raises(TypeError):
            _build(d)
    d, X, Y, scratch = _setup()
    _build(d).backprop(X, Y, scratch)


# --------------------------------------------------------------------------------------
# Crash-prone misuse, each in its own interpreter
# --------------------------------------------------------------------------------------

_PRELUDE = textwrap.dedent("""
    import gc, sys
    import numpy as np
    from bpfast._core.kernels import Layers
    m, n0, n1 = 2000, 100, 300   # buffers above malloc's mmap threshold: once freed,
                                 # their pages go back to the OS
    codes = np.array([1], dtype=np.intc)
    W = [np.full((n1, n0), 0.01)]
    b = [np.zeros(n1)]
    Z = [np.empty((m, n1))]
    A = [np.empty((m, n1))]
    X = np.ones((m, n0))
    def expect_error(f):
        try:
            f()
        except (TypeError, ValueError, RuntimeError, AttributeError):
            return
""")

CRASH_CASES = {
    # A Layers made without __init__ has NULL sizes: forward must raise, not dereference.
    "uninitialised_forward": """
        layers = Layers.__new__(Layers)
        expect_error(lambda: layers.forward(X))
    """,
    "uninitialised_backprop": """
        layers = Layers.__new__(Layers)
        expect_error(lambda: layers.backprop(X, X, np.empty(10)))
    """,
    # The class keeps the caller's lists, which the caller may still change: the
    # arrays they held must stay alive (or the call must raise), not be freed under it.
    "caller_empties_lists_after_construction": """
        layers = Layers(W, b, codes, n0, m, Z, A)
        Z[0] = None
        A[0] = None
        gc.collect()
        junk = [np.ones((m, n1)) for _ in range(4)]
        try:
            layers.forward(X)
        except (TypeError, ValueError, RuntimeError):
            pass
    """,
    "caller_replaces_weights_after_construction": """
        layers = Layers(W, b, codes, n0, m, Z, A)
        W[0] = None                      # the only reference to the weights was the list's
        gc.collect()
        junk = [np.full((n1, n0), -7.0) for _ in range(4)]   # may reuse the freed memory
        try:
            layers.forward(X)
        except (TypeError, ValueError, RuntimeError):
            pass
        else:
            want = 1 / (1 + np.exp(-0.01 * n0))              # sigmoid(X @ W.T), W = 0.01
            if not np.allclose(A[0], want):
                print("forward read freed weights: A[0, 0] =", A[0][0, 0], "want", want)
                sys.exit(3)
    """,
    # Calling __init__ again with a bad argument must not leave dangling pointers.
    "failed_reinit_then_forward": """
        layers = Layers(W, b, codes, n0, m, Z, A)
        expect_error(lambda: layers.__init__(W, b, np.array([99], dtype=np.intc), n0, m, Z, A))
        try:
            layers.forward(X)
        except (TypeError, ValueError, RuntimeError):
            pass
    """,
}


@pytest.mark.parametrize("case", list(CRASH_CASES))
def test_misuse_is_safe(case):
    code = _PRELUDE + textwrap.dedent(CRASH_CASES[case]) + "\nprint('survived')\n"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and "survived" in proc.stdout, (
        f"{case}: interpreter exited with {proc.returncode}\n{proc.stdout[-2000:]}"
        f"{proc.stderr[-2000:]}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_sizes_are_rejected_not_overflowed(dtype):
    """Shapes past the kernels' int range are refused by the checks."""
    d, _, _, _ = _setup(dtype)
    d["n_inputs"] = 2**31
    with pytest.raises((OverflowError, ValueError)):
        _build(d)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("where", ["weight", "bias", "last-weight", "none"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_parameters_finite_finds_any_non_finite_parameter(dtype, where, bad):
    rng = np.random.default_rng(0)
    W = [rng.normal(size=(5, 3)).astype(dtype), rng.normal(size=(17, 5)).astype(dtype)]
    b = [np.zeros(5, dtype), np.full(17, 1e30, dtype)]  # huge but finite
    if where == "weight":
        W[0][4, 2] = bad
    elif where == "bias":
        b[0][3] = bad
    elif where == "last-weight":
        W[1][16, 4] = bad
    trainer = _kernels.Trainer(W, b, [1, 0], 3, 4, 0, bpfast.training.OPTIMIZERS["sgd"])
    assert trainer.parameters_finite() is (where == "none")
