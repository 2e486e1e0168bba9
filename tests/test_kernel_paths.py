"""Every compiled code path against the reference: plain-loop GEMM and BLAS GEMM, the
fused SGD step and the separate-update optimizers, both dtypes."""
import numpy as np
import pytest

import bpfast
from bpfast import _blas_backend, reference
from bpfast._core import kernels as _kernels
from bpfast.engine import EpochOptions, Step, tuning

from bpfast.activations import activation_codes
from conftest import assert_close, make_data, make_params, rtol_for

SIZES = [(3, 4, 2), (9, 17, 5, 3), (64, 32, 10), (20, 40, 30, 1)]
ACTS = ["tanh", "relu", "leaky_relu", "sigmoid", "silu"]


@pytest.fixture(params=["loops", "numpy-blas", "scipy-blas"])
def gemm_path(request):
    """Every product through the plain loops, or through each BLAS backend."""
    before = bpfast.blas_info()["backend"]
    with tuning(small_gemm_limit=10**15 if request.param == "loops" else 0):
        if request.param != "loops":
            backend = request.param.split("-")[0]
            if _blas_backend.use(backend) != backend:
                pytest.skip(f"{backend}'s BLAS cannot be found here")
        yield request.param
    _blas_backend.use(before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("m", [1, 7, 64])
def test_backprop_on_each_gemm_path(gemm_path, sizes, m, dtype):
    acts = [ACTS[(len(sizes) + k) % len(ACTS)] for k in range(len(sizes) - 1)]
    W, b = make_params(sizes, dtype, seed=m)
    X, Y = make_data(sizes, m, dtype, seed=m + 1)
    E, dW, db = bpfast.backprop(W, b, acts, X, Y)
    E_ref, dW_ref, db_ref = reference.backprop(W, b, acts, X, Y)
    assert E == pytest.approx(E_ref, rel=rtol_for(dtype))
    for got, want in zip(dW + db, dW_ref + db_ref):
        assert_close(got, want, dtype)
    assert_close(bpfast.forward(W, b, acts, X), reference.forward(W, b, acts, X), dtype)


@pytest.fixture(params=["transposed", "plain"])
def first_layer(request):
    """The trainer's first layer kept transposed during epochs (small layers) or not."""
    with tuning(first_transpose_limit=2**62 if request.param == "transposed" else 0):
        yield request.param


@pytest.fixture(params=["fused", "separate"])
def update_route(request):
    """Momentum and Adam steps through the fused gradient-and-update kernel for every
    layer, or the weight gradient into dW and then the update pass."""
    if request.param == "fused" and not _kernels.fused_update_available():
        pytest.skip("the fused gradient-and-update kernel needs AVX2 or AVX-512")
    with tuning(fused_update_limit=2**62 if request.param == "fused" else 0):
        yield request.param


def _fit_matches_reference(sizes, acts, dtype, optimizer, batch_size, epochs, rows,
                           seed, l2=0.0):
    """Network.fit and reference.fit from the same parameters, data order, no shuffle:
    the same parameters and loss history (the steps compound rounding a little)."""
    W, b = make_params(sizes, dtype, seed=seed)
    X, Y = make_data(sizes, rows, dtype, seed=seed + 1)
    net = bpfast.Network(sizes, acts, dtype=dtype)
    for p, q in zip(net.weights + net.biases, W + b):
        p[...] = q
    lr = 0.01 if optimizer == "adam" else 0.1
    hist = net.fit(X, Y, epochs=epochs, batch_size=batch_size, learning_rate=lr,
                   optimizer=optimizer, l2=l2, shuffle=False).loss
    W_ref, b_ref, hist_ref = reference.fit(W, b, net.activations, X, Y, epochs=epochs,
                                           batch_size=batch_size, learning_rate=lr,
                                           optimizer=optimizer, l2=l2)
    rtol = 1e-9 if np.dtype(dtype) == np.float64 else 1e-3
    for got, want in zip(net.weights + net.biases, W_ref + b_ref):
        assert_close(got, want, rtol=rtol)
    np.testing.assert_allclose(hist, hist_ref, rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer, update_route",
                         [("sgd", "separate"), ("momentum", "fused"),
                          ("momentum", "separate"), ("adam", "fused"),
                          ("adam", "separate")], indirect=["update_route"])
@pytest.mark.parametrize("l2", [0.0, 0.5])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_fit_on_each_gemm_path(gemm_path, first_layer, update_route, optimizer, l2,
                               batch_size, dtype):
    """sgd takes the fused step (no dW), momentum and adam the fused gradient-and-update
    kernel or the gradient-then-update route; each with the first layer transposed
    during epochs or in place."""
    _fit_matches_reference((9, 17, 5, 3), ["relu", "tanh", "sigmoid"], dtype, optimizer,
                           batch_size, epochs=3, rows=41, seed=3, l2=l2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
@pytest.mark.parametrize("block", [1, 7, 40, 2**40])
@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_gradient_blocks_give_the_same_steps(first_layer, optimizer, block, l2, dtype):
    """Large layers' momentum and Adam steps take the gradient a block of rows at a time
    (one row, a few, ragged last blocks, or whole): the same fit as the reference's."""
    # every layer through the blocks
    with tuning(fused_update_limit=0, gradient_block=block):
        _fit_matches_reference((9, 17, 5, 3), ["relu", "tanh", "sigmoid"], dtype,
                               optimizer, 8, epochs=2, rows=23, seed=5, l2=l2)


def test_gradient_block_must_be_positive():
    with pytest.raises(ValueError, match="gradient_block"):
        with tuning(gradient_block=0):
            pass


@pytest.fixture(params=["direct", "gathered"])
def batch_rows(request):
    """A small transposed first layer's products read the batch's rows where they sit,
    or a gathered copy of them."""
    with tuning(direct_rows=request.param == "direct"):
        yield request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer, first_activation",
                         [("momentum", "tanh"), ("nesterov", "relu"),
                          ("adam", "leaky_relu"), ("momentum", "identity")])
@pytest.mark.parametrize("batch_size", [1, 33])
@pytest.mark.parametrize("shuffle", [False, True])
def test_fused_kernels_on_every_tile_shape(first_layer, update_route, batch_rows,
                                           optimizer, first_activation, batch_size,
                                           shuffle, dtype):
    """Layers wide enough for the tile kernels' full 4-row tiles, single rows, full and
    single vectors and a scalar tail (50 inputs, 75 and 20 hidden units, both layouts of
    the first layer; the first layer's forward product with each kind of activation),
    against the reference trainer, in data order and shuffled."""
    sizes = (50, 75, 20, 3)
    W, b = make_params(sizes, dtype, seed=5)
    X, Y = make_data(sizes, 70, dtype, seed=6)
    net = bpfast.Network(sizes, [first_activation, "relu", "sigmoid"], dtype=dtype)
    for p, q in zip(net.weights + net.biases, W + b):
        p[...] = q
    lr = 0.01 if optimizer == "adam" else 0.05
    if shuffle:
        # the reference trainer has no shuffling: feed it the rows in the order that
        # fit's seed draws, one epoch at a time
        hist, W_ref, b_ref, hist_ref = [], W, b, []
        for epoch in range(2):
            hist += net.fit(X, Y, epochs=1, batch_size=batch_size, learning_rate=lr,
                            optimizer=optimizer, l2=0.3, shuffle=True, seed=epoch).loss
            order = np.random.default_rng(epoch).permutation(len(X))
            W_ref, b_ref, h = reference.fit(W_ref, b_ref, net.activations, X[order],
                                            Y[order], epochs=1, batch_size=batch_size,
                                            learning_rate=lr, optimizer=optimizer,
                                            l2=0.3)
            hist_ref += list(h)
    else:
        hist = net.fit(X, Y, epochs=2, batch_size=batch_size, learning_rate=lr,
                       optimizer=optimizer, l2=0.3, shuffle=False).loss
        W_ref, b_ref, hist_ref = reference.fit(W, b, net.activations, X, Y, epochs=2,
                                               batch_size=batch_size, learning_rate=lr,
                                               optimizer=optimizer, l2=0.3)
    rtol = 1e-9 if np.dtype(dtype) == np.float64 else 1e-3
    for got, want in zip(net.weights + net.biases, W_ref + b_ref):
        assert_close(got, want, rtol=rtol)
    np.testing.assert_allclose(hist, hist_ref, rtol=rtol)


def test_blas_backends_are_selectable_and_fall_back(monkeypatch):
    before = bpfast.blas_info()["backend"]
    try:
        assert _blas_backend.use("scipy") == "scipy"
        assert bpfast.blas_info() == {"backend": "scipy", "library": "scipy.linalg.cython_blas"}
        monkeypatch.setattr(_blas_backend, "_numpy_blas_candidates", lambda: [])
        assert _blas_backend.use("numpy") == "scipy"  # not found: SciPy's, never a crash
        with pytest.raises(ValueError, match="backend"):
            _blas_backend.use("mkl")
    finally:
        monkeypatch.undo()
        _blas_backend.use(before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_without_any_blas_every_product_takes_the_loops(monkeypatch, dtype):
    before = bpfast.blas_info()["backend"]
    monkeypatch.setattr(_blas_backend, "_numpy_blas_candidates", lambda: [])
    monkeypatch.setattr(_blas_backend, "_scipy_gemm", lambda: None)
    try:
        assert _blas_backend.use("numpy") == "none"
        assert bpfast.blas_info() == {"backend": "none", "library": None}
        sizes = (30, 40, 5)  # products well above the plain-loop limit
        W, b = make_params(sizes, dtype, seed=3)
        X, Y = make_data(sizes, 50, dtype, seed=4)
        E, dW, db = bpfast.backprop(W, b, ["tanh", "sigmoid"], X, Y)
        E_ref, dW_ref, db_ref = reference.backprop(W, b, ["tanh", "sigmoid"], X, Y)
        assert E == pytest.approx(E_ref, rel=rtol_for(dtype))
        for got, want in zip(dW + db, dW_ref + db_ref):
            assert_close(got, want, dtype)
    finally:
        monkeypatch.undo()
        _blas_backend.use(before)


def test_import_bpfast_leaves_scipy_unloaded(tmp_path):
    """NumPy's BLAS found, ``import bpfast`` does not load SciPy (27 MB resident)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("BPFAST_BLAS", None)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    code = ("import sys, bpfast; print(bpfast.blas_info()['backend'], "
            "any(m == 'scipy' or m.startswith('scipy.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "numpy":
        pytest.skip("NumPy's own BLAS is not reachable here")
    assert out[1] == "False"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_probe_matches_numpy(dtype):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((40, 33)).astype(dtype)
    B = rng.standard_normal((21, 33)).astype(dtype)
    assert_close(_kernels.gemm_probe(A, B), A @ B.T, dtype)


@pytest.mark.parametrize("choice,expected", [("scipy", "scipy"), ("bogus", None)])
def test_BPFAST_BLAS_environment_variable(tmp_path, choice, expected):
    import os
    import subprocess
    import sys

    env = dict(os.environ, BPFAST_BLAS=choice)
    if env.get("PYTHONPATH"):  # a development run: keep pointing at the source tree
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    out = subprocess.run(
        [sys.executable, "-c", "import bpfast; print(bpfast.blas_info()['backend'])"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    if expected:
        assert out == expected
    else:  # an unknown value means the default: NumPy's BLAS when it can be found
        assert out in ("numpy", "scipy")


def _switched_route(request, fast, available, switch, why):
    """Yield request.param with the route ``fast`` (the tuning switch ``switch``) on when
    that is the param (skipped where ``available()`` is false), off otherwise; restored
    afterwards."""
    if request.param == fast and not available():
        pytest.skip(why)
    with tuning(**{switch: request.param == fast}):
        yield request.param


@pytest.fixture(params=["vector", "portable"])
def vector_math(request):
    """exp, tanh, sigmoid and silu over arrays by vmath_vec.inc or the portable loops."""
    yield from _switched_route(request, "vector", _kernels.vector_math, "vector_math",
                               "the vector math needs AVX2+FMA or AVX-512F")


def _activation_points(dt):
    """Points over the whole range, the subnormal results and the special values."""
    limit = 700.0 if dt == np.float64 else 85.0
    low = -745.0 if dt == np.float64 else -103.0  # results down to the subnormals
    return np.concatenate([np.linspace(-60, 60, 4001), np.linspace(-limit, limit, 2001),
                           np.linspace(low, low + 40, 401),
                           [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 3e-5, -3e-5]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "silu", "exp", "softmax"])
def test_vectorised_activations_within_a_few_ulp(name, dtype, vector_math):
    """The vmath.h functions against NumPy's (within 4 ulp; subnormal results absolute)."""
    dt = np.dtype(dtype)
    z = _activation_points(dt)
    if name != "exp":
        z = np.concatenate([z, [-1e4, 1e4, -800.0, 800.0]])
    z = z.astype(dt)
    n = z.size if name != "softmax" else 7
    z = z[: z.size - z.size % n]
    Z = z.reshape(-1, n)
    W, b = [np.eye(n, dtype=dt)], [np.zeros(n, dtype=dt)]
    got = bpfast.forward(W, b, name, Z)
    with np.errstate(over="ignore", under="ignore"):
        want = reference.forward(W, b, name, Z)
    eps = np.finfo(dt).eps
    np.testing.assert_allclose(got, want, rtol=4 * eps, atol=np.finfo(dt).tiny * 4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "silu", "exp"])
@pytest.mark.parametrize("width", [1, 7, 8, 15, 16, 17, 33])
def test_vector_math_matches_the_portable_loops(name, dtype, width):
    """vmath_vec.inc's functions against the portable loops, through the fused bias pass:
    the same formulas, so the same bits where the result is a normal number (float32: at
    most an ulp apart, as the portable loops' vector epilogues contract a multiply-add
    differently from their main loops, one ulp here and there), and at most one unit of
    the smallest subnormal below, where AVX-512's VSCALEF rounds once instead of twice.
    NaN and the infinities come through the same. And the vector results do not depend
    on where in the array a value sits (every lane and the partial tail run the same
    instructions)."""
    if not _kernels.vector_math():
        pytest.skip("the vector math needs AVX2+FMA or AVX-512F")
    dt = np.dtype(dtype)
    z = np.resize(_activation_points(dt).astype(dt), (1000 + width - 1) // width * width)
    # NaN and the infinities come in through the bias (through X W^T they would spread)
    specials = np.resize(np.array([np.nan, np.inf, -np.inf, 1e4, -1e4], dt), width)
    codes = bpfast.activations.activation_codes([name])

    def run(values, fast):
        with tuning(vector_math=fast):
            rows = []
            for X, b in ((values.reshape(-1, width), np.zeros(width, dt)),
                         (np.zeros((1, width), dt), specials)):
                Z, A = [np.empty_like(X)], [np.empty_like(X)]
                _kernels.Layers([np.eye(width, dtype=dt)], [b], codes, width, len(X),
                                Z, A).forward(X)
                rows.append(A[0].ravel())
            return np.concatenate(rows)

    fast, portable = run(z, True), run(z, False)
    tiny = np.finfo(dt).tiny
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(portable))
    normal = np.abs(portable) >= tiny  # and the infinities (NaN: checked above)
    same = fast[normal] == portable[normal]  # the infinities among them
    finite = normal & np.isfinite(portable)
    assert np.all(same | np.isfinite(portable[normal]))
    # float64: the same bits (no epilogue differs there)
    ulps = 0 if dt == np.float64 else 1
    assert np.all(np.abs(fast[finite] - portable[finite])
                  <= ulps * np.spacing(np.abs(portable[finite])))
    smallest = np.nextafter(dt.type(0), dt.type(1))
    low = np.abs(portable) < tiny
    assert np.all(np.abs(fast[low] - portable[low]) <= smallest)
    shifted = run(np.roll(z, 5), True)
    np.testing.assert_array_equal(np.roll(shifted[:z.size], -5), fast[:z.size])


def _special_points(dt):
    """Values where exp and the functions built on it change course: the signed zeros,
    the infinities, NaN, subnormal and huge inputs, the ends of exp's range (results
    near overflow and in the subnormals) and the floors of expm1."""
    info = np.finfo(dt)
    if dt == np.float64:
        edges = [709.782712893384, 709.78, 709.7, 700.0, 693.0, -708.0, -709.0, -720.0,
                 -740.0, -744.0, -745.1, -745.2, -745.3, -746.0, -40.0, -40.5, 20.0, -20.0]
    else:
        edges = [88.72283905, 88.7, 88.0, 83.0, -87.0, -88.0, -95.0, -100.0, -103.0,
                 -103.9, -104.0, -104.1, -105.0, -20.0, -20.5, -10.0, 10.0, 9.0]
    values = [0.0, np.inf, np.nan, info.tiny, info.tiny / 3, info.smallest_subnormal,
              info.max, info.max / 7, 1e-30, 3e-5, 0.5, 1.0, 2.0, 1e4] + edges
    points = np.array(values + [-v for v in values], dt)
    assert np.signbit(points).sum() > 10  # -0.0 among them
    return points


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "silu", "exp"])
def test_vector_math_is_bitwise_the_scalar_math(name, dtype):
    """vmath_vec.inc's array functions against the portable loops (vmath.h's scalar
    functions) over the special values, at every length 0..3 vectors + 1 so that every
    size of partial tail runs and every value sits in every lane: the same bits, signs
    of zero and NaN included, where exp's 2^n is built from exponent bits as vmath.h
    does (AVX2); on AVX-512, whose VSCALEF rounds subnormal results once instead of
    twice, those may be one unit of the smallest subnormal apart."""
    if not _kernels.vector_math():
        pytest.skip("the vector math needs AVX2+FMA or AVX-512F")
    dt = np.dtype(dtype)
    code = int(activation_codes([name])[0])
    points = _special_points(dt)
    lanes = 64 // dt.itemsize  # the widest vectors of any build (64 bytes)
    bits = np.uint64 if dt == np.float64 else np.uint32
    scalef = _kernels.kernel_target() == "avx512f"
    for length in range(3 * lanes + 2):
        for shift in range(0, points.size, max(1, length)):
            z = np.resize(np.roll(points, -shift), length)
            with tuning(vector_math=True):
                fast = _kernels.activation_rows(code, z)
            with tuning(vector_math=False):
                portable = _kernels.activation_rows(code, z)
            np.testing.assert_array_equal(np.isnan(fast), np.isnan(portable))
            tiny = np.abs(portable) < np.finfo(dt).tiny
            exact = ~np.isnan(portable) & ~(tiny & scalef)
            assert np.array_equal(fast[exact].view(bits), portable[exact].view(bits)), (
                length, z[exact][fast[exact].view(bits) != portable[exact].view(bits)])
            smallest = np.finfo(dt).smallest_subnormal
            assert np.all(np.abs(fast[tiny] - portable[tiny]) <= smallest)


def test_vector_math_switch_keeps_its_old_name():
    """tuning's avx512_vector_math (the route ran on AVX-512 only) is vector_math now;
    the old name still sets it, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="vector_math"):
        with tuning(avx512_vector_math=False):
            assert not _kernels.vector_math()
    assert _kernels.vector_math() == (_kernels.kernel_target() != "baseline")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "exp", "silu"])
@pytest.mark.parametrize("m", [1, 3, 32])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 10, 13, 16, 24, 31, 32, 33, 64, 65, 72, 127,
                               128, 129, 200])
def test_smooth_passes_match_the_portable_loops(n, m, act, dtype):
    """pointwise_fused.inc's passes (bias with activation, hidden delta, squared-error output
    delta) against pointwise.inc's loops, through a whole backprop: widths that walk the
    block flat with every period of 1-8 vectors and a ragged last one, and row by row in
    blocks of 1-8 vectors. To rounding: the column sums are added in another order, and
    the portable loops' scalar epilogue (the last values of a block) can round an
    activation 1 ulp apart from the vector body."""
    if not _kernels.vector_math():
        pytest.skip("the vector passes need AVX2+FMA or AVX-512F")
    dt = np.dtype(dtype)
    rng = np.random.default_rng(n * 100 + m)
    sizes = (7, n, n)
    scale = 0.3 if act == "exp" else 1.0  # exp of exp: keep float32 finite
    W = [(scale * rng.standard_normal((o, i)) / np.sqrt(i)).astype(dt)
         for i, o in zip(sizes[:-1], sizes[1:])]
    b = [rng.uniform(-0.5, 0.5, o).astype(dt) for o in sizes[1:]]
    acts = [act, act if act != "silu" else "identity"]
    X = rng.standard_normal((m, 7)).astype(dt)
    Y = rng.uniform(0, 1, (m, n)).astype(dt)

    def run(fast):
        with tuning(vector_math=fast):
            return bpfast.forward(W, b, acts, X), bpfast.backprop(W, b, acts, X, Y)

    (A_fast, (E_fast, dW_fast, db_fast)), (A_port, (E_port, dW_port, db_port)) = (
        run(True), run(False))
    rtol = 1e-13 if dt == np.float64 else 2e-6
    assert np.isfinite(E_port) and all(np.isfinite(g).all() for g in dW_port + db_port)
    np.testing.assert_allclose(E_fast, E_port, rtol=rtol)
    for got, want in zip([A_fast] + dW_fast + db_fast, [A_port] + dW_port + db_port):
        assert got.dtype == dt
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes", [(4, 5, 2), (3, 7, 6), (9, 17, 5, 3)])
@pytest.mark.parametrize("m", [2, 4, 6])
def test_results_do_not_depend_on_where_buffers_sit(sizes, m, dtype):
    """The same backprop with its buffers packed back to back in one block of memory, at
    every element offset, gives exactly the bits of separately allocated buffers.

    A loop the compiler vectorised behind a run-time overlap test used to round
    differently when an output sat right after an input, so identical fits could differ
    in their last bits depending on where the allocator put things."""
    acts = ["tanh"] * (len(sizes) - 2) + ["identity"]
    W, b = make_params(sizes, dtype, seed=m)
    X, Y = make_data(sizes, m, dtype, seed=m + 1)
    codes = bpfast.activations.activation_codes(acts)
    L = len(sizes) - 1
    shapes = ([(m, n) for n in sizes[1:]] * 2 + [w.shape for w in W] + [v.shape for v in b]
              + [(m * max(sizes[1:-1]),)])

    def run(arrays):
        Z, A, dW, db, (scratch,) = (arrays[:L], arrays[L:2 * L], arrays[2 * L:3 * L],
                                    arrays[3 * L:4 * L], arrays[4 * L:])
        layers = _kernels.Layers(W, b, codes, sizes[0], m, Z, A, dW, db)
        E = layers.backprop(X, Y, scratch)
        return [E] + [a.copy() for a in dW + db]

    expected = run([np.empty(s, dtype) for s in shapes])
    total = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(0)
    for trial in range(24):  # buffers in shuffled orders, at every element offset
        order, offset = rng.permutation(len(shapes)), trial % 8
        pool = np.zeros(total + offset, dtype)
        arrays, at = [None] * len(shapes), offset
        for k in order:
            size = int(np.prod(shapes[k]))
            arrays[k] = pool[at:at + size].reshape(shapes[k])
            at += size
        got = run(arrays)
        assert got[0] == expected[0]
        for g, e in zip(got[1:], expected[1:]):
            np.testing.assert_array_equal(g, e, err_msg=f"order {order}, offset {offset}")


def _sgd_trainer(sizes, acts, dtype, batch_size, seed=0, optimizer="sgd"):
    W, b = make_params(sizes, dtype, seed=seed)
    codes = bpfast.activations.activation_codes(acts)
    return W, b, _kernels.Trainer(W, b, codes, sizes[0], batch_size, 0,
                                  bpfast.training.OPTIMIZERS[optimizer])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aligned_empty_starts_on_a_cache_line(dtype):
    """aligned_empty: the asked shape and dtype, C-contiguous, writable, its own memory,
    on a 64-byte boundary whatever NumPy's allocator returned; zeros when asked."""
    keep = [np.empty(k, np.uint8) for k in range(1, 40)]  # shift the allocator around
    assert _kernels.aligned_empty((0,), dtype).shape == (0,)  # no data to align
    for shape in [(1,), (3,), (7, 5), (64, 128), (784, 128), (2, 3, 4)]:
        for zero in (False, True):
            a = _kernels.aligned_empty(shape, dtype, zero)
            assert a.shape == shape and a.dtype == dtype
            assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
            assert a.ctypes.data % 64 == 0
            if zero:
                assert not a.any()
            a[...] = 1  # writes stay inside its own buffer
            assert a.sum() == a.size
    assert len(keep) == 39


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("sizes,batch_size", [((5, 7, 3), 4), ((784, 128, 10), 64),
                                               ((33, 17, 9, 2), 5)])
def test_trainer_buffers_start_on_cache_lines(sizes, batch_size, optimizer):
    """Every array a trainer allocates starts on a cache line (the panel kernel's threads
    split rows by columns; a shared line would bounce between their caches), and they
    are what its nbytes counts."""
    acts = ["tanh"] * (len(sizes) - 2) + ["sigmoid"]
    for dtype in (np.float32, np.float64):
        W, b, trainer = _sgd_trainer(sizes, acts, dtype, batch_size, optimizer=optimizer)
        assert trainer.buffers
        for a in trainer.buffers:
            assert a.ctypes.data % 64 == 0 and a.dtype == dtype
        assert trainer.nbytes == sum(a.nbytes for a in trainer.buffers)


def test_trainer_reusable_only_for_what_it_was_built_for():
    """Trainer.reusable: the same arrays, settings and layout, nothing else."""
    sizes, acts = (5, 7, 3), ["tanh", "sigmoid"]
    W, b, trainer = _sgd_trainer(sizes, acts, np.float64, 4, optimizer="momentum")
    codes = bpfast.activations.activation_codes(acts)
    OPTIMIZERS = bpfast.training.OPTIMIZERS
    args = [W, b, codes, 5, 4, 0, OPTIMIZERS["momentum"]]
    bias_address = b[0].ctypes.data
    assert trainer.reusable(*args)
    assert trainer.nbytes > 0
    changes = {
        "new weight array": (0, [W[0].copy(), W[1]]),
        "new bias array": (1, [b[0], b[1].copy()]),
        "activations": (2, bpfast.activations.activation_codes(["relu", "sigmoid"])),
        "n_inputs": (3, 6),
        "batch_size": (4, 5),
        "loss": (5, 2),
        "optimizer": (6, OPTIMIZERS["adam"]),
        "no velocity": (6, OPTIMIZERS["sgd"]),
        "nesterov": (6, OPTIMIZERS["nesterov"]),
        "fewer layers": (0, W[:1]),
    }
    for what, (k, value) in changes.items():
        other = list(args)
        other[k] = value
        if what == "fewer layers":
            other[1] = b[:1]
            other[2] = codes[:1]
        assert not trainer.reusable(*other), what
    W[1].flags.writeable = False
    assert not trainer.reusable(*args)
    W[1].flags.writeable = True
    b[0].shape = (7, 1)  # the same array object, another shape
    assert not trainer.reusable(*args)
    b[0].shape = (7,)
    assert trainer.reusable(*args)
    # reset zeroes the optimizer state a fit left behind
    X, Y = make_data(sizes, 9, np.float64, seed=2)
    trainer.epoch(X, Y, None, None, Step(0.1, 0.9))
    assert any(np.any(state != 0) for state in trainer.state)
    trainer.reset()
    assert all(np.all(state == 0) for state in trainer.state)
    # the same object and shape, its data moved (resize without the reference check):
    # the kept pointer would be stale
    values = b[0].copy()
    b[0].resize((4096,), refcheck=False)
    b[0].resize((7,), refcheck=False)
    b[0][...] = values
    assert b[0].ctypes.data != bias_address
    assert not trainer.reusable(*args)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("acts", [["relu", "sigmoid"], ["exp", "identity"],
                                  ["softplus", "silu"]])
@pytest.mark.parametrize("force_careful", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_guard_changes_no_result(acts, dtype, force_careful, optimizer):
    """Every optimizer with the overflow guard gives the bits of the unguarded step,
    whether the bound proves the step safe or (infinite data bounds) sends every batch
    through the careful copy-step-check path."""
    sizes = (5, 7, 3)
    X, Y = make_data(sizes, 23, dtype, seed=1)
    X = X * 0.5
    W, b, plain = _sgd_trainer(sizes, acts, dtype, 4, optimizer=optimizer)
    W2, b2, guarded = _sgd_trainer(sizes, acts, dtype, 4, optimizer=optimizer)
    bounds = (np.inf, np.inf, 1.0) if force_careful else None
    step = Step(0.05, 0.9, l2=0.01)
    t = u = 0
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(23).astype(np.intp)
        a = plain.epoch(X, Y, None, order, step, t)
        g = guarded.epoch(X, Y, None, order, step, u,
                          EpochOptions(guard=True, data_bound=bounds))
        assert a == g and not guarded.overflowed
        t, u = a[1], g[1]
    for p, q in zip(W + b + plain.state, W2 + b2 + guarded.state):
        np.testing.assert_array_equal(p, q)
    assert (guarded.careful_steps > 0) == force_careful


def test_guard_rejects_bad_bounds():
    X, Y = make_data((3, 4, 2), 5, np.float64, seed=1)
    for optimizer in ("sgd", "momentum", "adam"):
        *_, trainer = _sgd_trainer((3, 4, 2), ["tanh", "identity"], np.float64, 5,
                                   optimizer=optimizer)
        with pytest.raises((TypeError, ValueError)):
            trainer.epoch(X, Y, None, None, Step(0.1),
                          options=EpochOptions(guard=True, data_bound=(1.0, 2.0)))


def test_epoch_records_named_in_errors():
    """The compiled trainer reads its optimizer, the step's settings and the epoch's
    options as records; anything else raises naming the argument."""
    X, Y = make_data((3, 4, 2), 5, np.float64, seed=1)
    W, b, trainer = _sgd_trainer((3, 4, 2), ["tanh", "identity"], np.float64, 5)
    with pytest.raises(TypeError, match="step"):
        trainer.epoch(X, Y, None, None, 0.1)
    with pytest.raises(TypeError, match="options"):
        trainer.epoch(X, Y, None, None, Step(0.1), 0, {"guard": True})
    codes = bpfast.activations.activation_codes(["tanh", "identity"])
    with pytest.raises(TypeError, match="optimizer"):
        _kernels.Trainer(W, b, codes, 3, 5, 0, 0)
    with pytest.raises(ValueError, match="optimizer"):
        _kernels.Trainer(W, b, codes, 3, 5, 0, bpfast.registry.Optimizer(7, False, False))


def test_magnitude_bound():
    x = np.array([[1.0, -7.5], [3.0, 0.25]])
    assert _kernels.magnitude_bound(x) == 7.5
    assert _kernels.magnitude_bound(x.astype(np.float32)) == 7.5
    assert _kernels.magnitude_bound(np.zeros(0)) == 0
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 0] = bad
        assert _kernels.magnitude_bound(y) == np.inf
    with pytest.raises(TypeError, match="X"):
        _kernels.magnitude_bound(np.ones((4, 4))[:, ::2])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 1000])
def test_magnitude_bound_over_bit_patterns(dtype, n):
    """The bound is taken over bit patterns: negative zero, subnormals, the largest
    finite value and every non-finite value in every lane and in the tail."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(n)
    x = rng.uniform(-2, 2, n).astype(dtype)
    assert _kernels.magnitude_bound(x) == np.abs(x).max()
    assert _kernels.magnitude_bound(np.full(n, -0.0, dtype)) == 0
    tiny = np.full(n, info.smallest_subnormal, dtype)
    tiny[n // 2] = -3 * info.smallest_subnormal
    assert _kernels.magnitude_bound(tiny) == 3 * float(info.smallest_subnormal)
    for k in {0, n // 2, n - 1}:
        y = x.copy()
        y[k] = -info.max
        assert _kernels.magnitude_bound(y) == float(info.max)
        for bad in (np.nan, -np.nan, np.inf, -np.inf):
            y[k] = bad
            assert _kernels.magnitude_bound(y) == np.inf, (k, bad)
        # a NaN with a payload: its pattern lies above inf's
        y.view(np.uint64 if dtype == np.float64 else np.uint32)[k] = (
            0xFFF0000000000001 if dtype == np.float64 else 0xFF800001)
        assert _kernels.magnitude_bound(y) == np.inf
    with pytest.raises(TypeError, match="X"):
        _kernels.magnitude_bound(np.ones(3, dtype=np.int64))
    with pytest.raises(TypeError, match="X"):
        _kernels.magnitude_bound([1.0, 2.0])


@pytest.mark.skipif(not _kernels.panel_gemm_available(), reason="no thread pool here")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [2, 3, 5])
def test_magnitude_bound_of_large_arrays_over_threads(dtype, threads):
    """Arrays of 8 MiB and more are split over the pool, each part a range of whole
    lines: the same bound as one thread, with the largest value, or a non-finite one,
    at either end of every part, and in an odd-sized tail."""
    itemsize = np.dtype(dtype).itemsize
    lanes = 64 // itemsize
    with tuning(panel_gemm=True, panel_threads=threads):
        for n in ((8 << 20) // itemsize, (8 << 20) // itemsize + 13):
            x = np.random.default_rng(n + threads).uniform(-1, 1, n).astype(dtype)
            x_before = x.copy()
            assert _kernels.magnitude_bound(x) == np.abs(x).max()
            lines = -(-n // lanes)
            edges = sorted({min(n - 1, max(0, lines * p // threads * lanes + d))
                            for p in range(threads + 1) for d in (-1, 0)})
            for k in edges:
                y = x.copy()
                y[k] = -7.5
                assert _kernels.magnitude_bound(y) == 7.5, (n, k)
                for bad in (np.nan, np.inf, -np.inf):
                    y[k] = bad
                    assert _kernels.magnitude_bound(y) == np.inf, (n, k, bad)
            np.testing.assert_array_equal(x, x_before)
        # below the size where the pool is used, and the same answer
        small = np.arange(-1000, 1000, dtype=dtype)
        assert _kernels.magnitude_bound(small) == 1000


BLOCKED_CASES = [  # sizes, activations, rows: every one taken in blocks, most ragged
    ((784, 128, 10), ["tanh", "sigmoid"], 500),
    ((64, 32, 10), ["sigmoid", "sigmoid"], 1797),
    ((100, 64, 10), ["relu", "identity"], 600),
    ((100, 64, 33, 7), ["relu", "tanh", "softmax"], 777),
    ((50, 40), ["sigmoid"], 700),
    ((72, 48, 24, 3), ["silu", "leaky_relu", "softplus"], 1031),
]


@pytest.mark.skipif(not _kernels.panel_gemm_available(), reason="no panel kernel here")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("sizes,acts,m", BLOCKED_CASES)
def test_full_batch_backprop_in_blocks(sizes, acts, m, threads, dtype):
    """A full-batch backprop taken in row blocks (the panel kernel's products, the first
    layer transposed, dW accumulated block after block, the last block ragged) gives the
    reference's loss and gradient and the one-pass route's, on any thread count, and
    leaves the caller's arrays alone."""
    W, b = make_params(sizes, dtype, seed=m)
    X, Y = make_data(sizes, m, dtype, seed=threads)
    before = [a.copy() for a in W + b + [X, Y]]
    with tuning(panel_gemm=True, panel_threads=threads):
        block = _kernels.backprop_block_rows(list(sizes), m, np.dtype(dtype).itemsize)
        assert 32 <= block <= m // 2 and block % 8 == 0
        calls = _kernels.panel_gemm_calls()
        E, dW, db = bpfast.backprop(W, b, acts, X, Y)
        assert _kernels.panel_gemm_calls() > calls
        # the same call again (the cached workspace) gives the same values, bit for bit
        E2, dW2, db2 = bpfast.backprop(W, b, acts, X, Y)
    E_ref, dW_ref, db_ref = reference.backprop(W, b, acts, X, Y)
    assert E == pytest.approx(E_ref, rel=rtol_for(dtype))
    for l in range(len(W)):
        assert dW[l].dtype == dtype and dW[l].shape == W[l].shape
        assert_close(dW[l], dW_ref[l], dtype, err_msg=f"dW[{l}]")
        assert_close(db[l], db_ref[l], dtype, err_msg=f"db[{l}]")
    with _one_pass_backprop():
        E1, dW1, db1 = bpfast.backprop(W, b, acts, X, Y)
    assert E == pytest.approx(E1, rel=rtol_for(dtype))
    for l in range(len(W)):
        assert_close(dW[l], dW1[l], dtype)
        assert_close(db[l], db1[l], dtype)
    for a, a0 in zip(W + b + [X, Y], before):
        np.testing.assert_array_equal(a, a0)
    assert E2 == E
    for got, want in zip(dW2 + db2, dW + db):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not _kernels.panel_gemm_available(), reason="no panel kernel here")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("sizes,acts,m", BLOCKED_CASES)
def test_forward_in_blocks(sizes, acts, m, threads, dtype):
    """The forward pass in the same row blocks through the panel kernel (fit's
    validation loss): the reference's outputs and the one-pass route's, written straight
    into the returned array, on any thread count; the caller's arrays are untouched."""
    from bpfast import engine
    W, b = make_params(sizes, dtype, seed=m + 1)
    X, Y = make_data(sizes, m, dtype, seed=threads + 7)
    names = bpfast.activations.resolve_activations(acts, len(W))
    before = [a.copy() for a in W + b + [X, Y]]
    with tuning(panel_gemm=True, panel_threads=threads):
        calls = _kernels.panel_gemm_calls()
        A = engine._forward_checked(W, b, names, X, in_blocks=True)
        assert _kernels.panel_gemm_calls() > calls
        A2 = engine._forward_checked(W, b, names, X, in_blocks=True)
    assert A.shape == (m, sizes[-1]) and A.dtype == dtype and A.flags.c_contiguous
    assert_close(A, reference.forward(W, b, acts, X), dtype)
    assert_close(A, bpfast.forward(W, b, acts, X), dtype)  # one pass
    for a, a0 in zip(W + b + [X, Y], before):
        np.testing.assert_array_equal(a, a0)
    assert A2 is not A
    np.testing.assert_array_equal(A2, A)


@pytest.mark.skipif(not _kernels.panel_gemm_available(), reason="no panel kernel here")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_validation_loss_in_blocks(dtype):
    """fit's validation loss takes the blocked forward pass: the loss of the network
    after each epoch, as the one-pass route and the reference compute it."""
    from bpfast import training
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((300, 784)).astype(dtype), rng.uniform(0, 1, (300, 10))
    Xv, Yv = rng.standard_normal((450, 784)).astype(dtype), rng.uniform(0, 1, (450, 10))
    net = bpfast.Network([784, 128, 10], activations=["tanh", "sigmoid"], dtype=dtype,
                         seed=0)
    seen = []
    with tuning(panel_gemm=True, panel_threads=2):
        assert _kernels.backprop_block_rows([784, 128, 10], 450, np.dtype(dtype).itemsize)
        calls = _kernels.panel_gemm_calls()
        history = net.fit(X, Y, epochs=3, batch_size=64, learning_rate=0.05,
                          validation_data=(Xv, Yv),
                          callback=lambda n, epoch, h: seen.append(
                              (h.val_loss[-1], training.evaluate_loss(n, Xv, Yv, "mse"),
                               reference.loss(n.weights, n.biases, n.activations, Xv, Yv))))
        assert _kernels.panel_gemm_calls() > calls
    assert len(history.val_loss) == 3
    for blocked, one_pass, ref in seen:
        assert blocked == pytest.approx(one_pass, rel=rtol_for(dtype))
        assert blocked == pytest.approx(ref, rel=rtol_for(dtype))


class _one_pass_backprop:
    """Within: bpfast.backprop and forward take all rows at once."""

    def __enter__(self):
        self.real = _kernels.backprop_block_rows
        _kernels.backprop_block_rows = lambda *args: 0

    def __exit__(self, *exc):
        _kernels.backprop_block_rows = self.real


@pytest.mark.skipif(not _kernels.panel_gemm_available(), reason="no panel kernel here")
def test_backprop_block_rows_choice():
    """Blocks only where every block's product fits the panel kernel or stays on one
    OpenBLAS thread, with the first layer's product above the panel's threshold, and at
    least two blocks."""
    f64 = 8
    with tuning(panel_gemm=True, panel_threads=2):  # whatever BLAS this process found
        assert _kernels.backprop_block_rows([784, 128, 10], 10000, f64) == 200  # 200x128x10
        assert _kernels.backprop_block_rows([784, 128, 10], 399, f64) == 192  # two blocks
        assert _kernels.backprop_block_rows([784, 128, 10], 100, f64) == 48
        assert _kernels.backprop_block_rows([784, 128, 10], 63, f64) == 0  # 32 rows at least
        assert _kernels.backprop_block_rows([784, 1024, 10], 10000, f64) == 0  # W 6.4 MB
        assert _kernels.backprop_block_rows([8, 8, 8], 10000, f64) == 0  # too small
        assert _kernels.backprop_block_rows([784, 128, 1024, 10], 10000, f64) == 0
        assert _kernels.backprop_block_rows([10], 10000, f64) == 0
        with tuning(panel_gemm=False, panel_threads=0):
            assert _kernels.backprop_block_rows([784, 128, 10], 10000, f64) == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("classes", [2, 10, 16, 17])
@pytest.mark.parametrize("m", [1, 31, 32, 33, 100])
@pytest.mark.parametrize("spread", [4, 400])
def test_softmax_across_rows_and_by_row(classes, m, spread, dtype):
    """Softmax outputs of up to 16 classes take the across-rows path (blocks of 32
    rows), wider ones the row loops: both against the reference, rows summing to 1.
    Logits in the hundreds overflow e^z unless each row's maximum is subtracted."""
    sizes = (5, classes)
    W, b = make_params(sizes, dtype, seed=classes + m)
    X, Y = make_data(sizes, m, dtype, seed=m)
    X = X * spread
    A = bpfast.forward(W, b, ["softmax"], X)
    assert_close(A, reference.forward(W, b, ["softmax"], X), dtype)
    np.testing.assert_allclose(A.sum(axis=1), 1, rtol=rtol_for(dtype))
    E, dW, db = bpfast.backprop(W, b, ["softmax"], X, Y)
    E_ref, dW_ref, db_ref = reference.backprop(W, b, ["softmax"], X, Y)
    assert E == pytest.approx(E_ref, rel=rtol_for(dtype))
    for got, want in zip(dW + db, dW_ref + db_ref):
        assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hidden, output", [("sigmoid", "sigmoid"), ("tanh", "tanh"),
                                            ("exp", "exp"), ("sigmoid", "identity"),
                                            ("tanh", "relu")])
@pytest.mark.parametrize("n_out", [1, 7, 64, 65, 130])
@pytest.mark.parametrize("weighted", [False, True])
def test_squared_error_deltas_match_reference(hidden, output, n_out, weighted, dtype):
    """The squared error's output delta and loss, and the hidden deltas of activations
    whose derivative comes from A (pointwise.inc), against the reference: over output
    widths below, at and past the 64-column blocks of the loss's partial sums, with and
    without sample weights. relu outputs take the general loop (their derivative needs Z)."""
    sizes = (5, 9, n_out)
    m = 11
    W, b = make_params(sizes, dtype, seed=n_out)
    if hidden == "exp" or output == "exp":  # keep e^z moderate
        W = [w * dtype(0.3) for w in W]
    X, Y = make_data(sizes, m, dtype, seed=n_out + 1)
    w = (np.random.default_rng(n_out).uniform(0.1, 2.0, m).astype(dtype)
         if weighted else None)
    acts = [hidden, output]
    trainer = _kernels.Trainer([x.copy() for x in W], [x.copy() for x in b],
                               bpfast.activations.activation_codes(acts), sizes[0], m, 0,
                               bpfast.training.OPTIMIZERS["sgd"])
    E = trainer.gradient(X, Y, w)
    dW, db = trainer.gradients
    E_ref, dW_ref, db_ref = reference.loss_gradient(W, b, tuple(acts), X, Y, "mse", w)
    np.testing.assert_allclose(E, E_ref, rtol=rtol_for(dtype))
    scale = max(float(np.abs(g).max()) for g in dW_ref + db_ref)
    for got, want in zip(list(dW) + list(db), list(dW_ref) + list(db_ref)):
        assert_close(got, want, dtype, scale=scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_guard_proves_ordinary_steps_safe(optimizer, dtype):
    """In an ordinary fit the guard's bounds prove every step safe: no batch takes the
    careful path, so no copy of the parameters is ever made or allocated (what keeps the
    peak memory of momentum and Adam fits within the speed issue's budget)."""
    sizes = (64, 256, 256, 10)
    X, Y = make_data(sizes, 320, dtype, seed=2)
    *_, trainer = _sgd_trainer(sizes, ["relu", "relu", "sigmoid"], dtype, 32,
                               optimizer=optimizer)
    t = 0
    for epoch in range(6):
        step = Step(0.01 if optimizer == "adam" else 0.1, 0.9)
        _, t, bad = trainer.epoch(X, Y, None, None, step, t, EpochOptions(guard=True))
        assert bad == -1
    assert trainer.careful_steps == 0


@pytest.fixture(params=["vector", "general"])
def one_row_products(request):
    """Products of one-row batches through their own route (vector_products.inc where
    the register-tile targets run, small_gemm.inc's loops elsewhere) or the general
    routes."""
    yield from _switched_route(request, "vector", lambda: True, "vector_products", "")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("form", ["vecmat", "matvec", "rank1"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 31, 32, 33, 64, 65, 100])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.3, 1.0), (0.7, -1.5)])
@pytest.mark.parametrize("k", [5, 13, 40])
def test_one_row_products(one_row_products, form, n, k, alpha, beta, dtype):
    """c = alpha a B + beta c, c = alpha a B^T + beta c and C = alpha x^T y + beta C for
    widths around the vector width (tails, one to five vectors, several blocks) and dot
    products with and without ragged ends, against NumPy; beta = 0 must not read C (NaN
    there stays out)."""
    rng = np.random.default_rng(n * k)
    if form == "vecmat":
        A, B = rng.standard_normal((1, k)), rng.standard_normal((k, n))
        trans_a, trans_b, want = False, False, lambda: A @ B
        C = rng.standard_normal((1, n))
    elif form == "matvec":
        A, B = rng.standard_normal((1, k)), rng.standard_normal((n, k))
        trans_a, trans_b, want = False, True, lambda: A @ B.T
        C = rng.standard_normal((1, n))
    else:
        A, B = rng.standard_normal((1, k)), rng.standard_normal((1, n))
        trans_a, trans_b, want = True, False, lambda: A.T @ B
        C = rng.standard_normal((k, n))
    A, B, C = (x.astype(dtype) for x in (A, B, C))
    expected = alpha * want().astype(np.float64) + (beta * C if beta else 0)
    if beta == 0:
        C[...] = np.nan
    _kernels.gemm_call(trans_a, trans_b, alpha, A, B, beta, C)
    assert_close(C, expected, dtype, scale=float(np.abs(expected).max()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("sizes", [(9, 17, 5, 3), (64, 32, 10), (3, 40, 1)])
def test_per_sample_fit_on_each_product_route(one_row_products, first_layer, optimizer,
                                              sizes, dtype):
    """Batches of one row (every product a vector against a matrix) through the vector
    products or the general routes, both first-layer layouts: the reference's fit."""
    acts = ["sigmoid"] * (len(sizes) - 2) + ["tanh"]
    _fit_matches_reference(sizes, acts, dtype, optimizer, 1, epochs=2, rows=19, seed=7)


# ---- panel_gemm.inc: mid-sized products, unpacked, over threads --------------------------

@pytest.fixture(params=["panel", "blas"])
def panel_products(request):
    """Mid-sized products through panel_gemm.inc (on two threads, whatever the BLAS's own
    count) or through BLAS."""
    if request.param == "panel" and not _kernels.panel_gemm_available():
        pytest.skip("the panel kernel needs AVX2 or AVX-512, on Linux")
    with tuning(panel_gemm=request.param == "panel", panel_threads=2):
        yield request.param


def _panel_threads(threads):
    """Context: the panel kernel allowed, on ``threads`` threads."""
    import contextlib

    @contextlib.contextmanager
    def switched():
        if not _kernels.panel_gemm_available():
            pytest.skip("the panel kernel needs AVX2 or AVX-512, on Linux")
        with tuning(panel_gemm=True, panel_threads=threads):
            yield
    return switched()


# (m, n, k): every one at least 2^18 multiply-adds, each operand at most 2 MiB; tails
# of rows (m not a multiple of 6) and of columns (n not a multiple of the vector width),
# fewer vectors of columns than threads (split by rows then), k of 2
PANEL_SHAPES = [(64, 128, 784), (61, 37, 200), (6, 1000, 50), (7, 9, 5000),
                (100, 65, 41), (13, 97, 211), (300, 17, 64), (997, 3, 100), (701, 200, 2)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("shape", PANEL_SHAPES)
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.3, 1.0), (0.7, -1.5)])
@pytest.mark.parametrize("threads", [1, 2, 3, 16])  # 16: blocks of rows and columns
def test_panel_products_match_numpy(shape, trans_a, alpha, beta, threads, dtype):
    """C = alpha op(A) B + beta C through the panel kernel against NumPy in float64; beta
    = 0 must not read C (NaN there stays out)."""
    m, n, k = shape
    rng = np.random.default_rng(m * n + k)
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    C = rng.standard_normal((m, n)).astype(dtype)
    opA = A.T if trans_a else A
    expected = alpha * (opA.astype(np.float64) @ B) + (beta * C if beta else 0)
    if beta == 0:
        C[...] = np.nan
    with _panel_threads(threads):
        before = _kernels.panel_gemm_calls()
        _kernels.gemm_call(trans_a, False, alpha, A, B, beta, C)
        assert _kernels.panel_gemm_calls() == before + 1
    # sums of k terms: rounding grows like sqrt(k) of the terms' scale
    scale = np.sqrt(k) * float(np.abs(alpha)) + abs(beta)
    assert_close(C, expected, dtype, scale=scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a", [False, True])
def test_panel_results_do_not_depend_on_the_thread_count(trans_a, dtype):
    """Each entry is one thread's sum in order: the same bits on 1 to 64 threads, split
    by columns only or by columns and rows."""
    m, n, k = 61, 150, 300
    rng = np.random.default_rng(5)
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    C0 = rng.standard_normal((m, n)).astype(dtype)
    results = []
    for threads in (1, 2, 3, 5, 8, 16, 24, 64):
        C = C0.copy()
        with _panel_threads(threads):
            _kernels.gemm_call(trans_a, False, -0.5, A, B, 1.0, C)
        results.append(C)
    for C in results[1:]:
        np.testing.assert_array_equal(C, results[0])


@pytest.mark.parametrize("case", ["B transposed", "too small", "A too large",
                                  "B too large", "C too large"])
def test_products_outside_the_panel_rules_stay_with_blas(case):
    """Only op(B) = B, at least 2^18 multiply-adds and operands of at most 2 MiB."""
    shapes = {"B transposed": (64, 128, 784), "too small": (63, 64, 64),
              "A too large": (64, 32, 4097), "B too large": (8, 4097, 64),
              "C too large": (4097, 64, 8)}
    m, n, k = shapes[case]
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k))
    trans_b = case == "B transposed"
    B = rng.standard_normal((n, k) if trans_b else (k, n))
    C = np.zeros((m, n))
    with _panel_threads(2):
        before = _kernels.panel_gemm_calls()
        _kernels.gemm_call(False, trans_b, 1.0, A, B, 0.0, C)
        assert _kernels.panel_gemm_calls() == before
    assert_close(C, A @ (B.T if trans_b else B), np.float64, scale=np.sqrt(k))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, taken", [((64, 64, 63), False), ((64, 64, 64), True)])
def test_panel_floor_is_where_openblas_threads(dtype, shape, taken):
    """From 2^18 multiply-adds (OpenBLAS's own threading threshold) and not below."""
    m, n, k = shape
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    C = np.zeros((m, n), dtype)
    with _panel_threads(2):
        before = _kernels.panel_gemm_calls()
        _kernels.gemm_call(False, False, 1.0, A, B, 0.0, C)
        assert (_kernels.panel_gemm_calls() > before) == taken
    assert_close(C, A.astype(np.float64) @ B, dtype, scale=np.sqrt(k))


def test_panel_products_with_changing_part_counts():
    """Products one after another on 1 to 4 threads and shapes that split into 1 to 4
    parts, each the one-thread result bit for bit (the race the ThreadSanitizer test
    below found did not show here: it needs a helper preempted at one exact point)."""
    rng = np.random.default_rng(9)
    shapes = [(64, 64, 64), (200, 8, 200), (60, 24, 200), (30, 40, 250)]
    cases = []
    for m, n, k in shapes:
        A, B = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        want = np.zeros((m, n))
        with _panel_threads(1):
            _kernels.gemm_call(False, False, 1.0, A, B, 0.0, want)
        cases.append((A, B, want))
    order = rng.integers(0, len(shapes), 3000)
    threads = rng.integers(1, 5, 3000)
    for case, t in zip(order, threads):
        A, B, want = cases[case]
        C = np.full_like(want, np.nan)
        with _panel_threads(int(t)):
            _kernels.gemm_call(False, False, 1.0, A, B, 0.0, C)
        np.testing.assert_array_equal(C, want)


def test_panel_pool_has_no_data_race(tmp_path):
    """tests/c/panel_pool_stress.c, built with ThreadSanitizer against the package's
    C sources (bpfast/_core/src): 200,000 products with changing thread counts and shapes, no race
    reported and every checked entry right. It found one: a helper that read one task's
    part count while holding another task's generation could claim, for that
    generation, a part the task did not have, run it on the next task's job and count
    it done, so that a later product returned before a helper had finished writing it.
    (The caller now claims the parts a task lacks before posting it.)"""
    import os
    import shutil
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    source = os.path.join(here, "c", "panel_pool_stress.c")
    headers = os.path.join(here, os.pardir, "bpfast", "_core", "src")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not os.path.exists(os.path.join(headers, "panel.h")):
        pytest.skip("needs a C compiler and the source tree's C sources")
    kernels = [os.path.join(headers, name) for name in sorted(os.listdir(headers))
               if name.endswith(".c")]
    binary = str(tmp_path / "panel_pool_stress")
    build = subprocess.run([compiler, "-O1", "-g", "-fsanitize=thread", "-I", headers,
                            source, *kernels, "-o", binary, "-lpthread", "-lm"],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"cannot build with ThreadSanitizer here: {build.stderr[-300:]}")
    run = subprocess.run([binary, "200000"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TSAN_OPTIONS="halt_on_error=1"))
    if run.returncode == 77:
        pytest.skip("the panel kernel needs AVX2 or AVX-512, on Linux")
    assert "ThreadSanitizer" not in run.stderr, run.stderr[-3000:]
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert run.stdout.strip() == "0 wrong entries"


def test_openmp_variant_of_the_pool_compiles():
    """panel.c's OpenMP variant of the pool, kept for measuring against it
    (docs/performance.md, "bpfast's pool against OpenMP"), still compiles, so that the
    comparison can be made again."""
    import os
    import shutil
    import subprocess

    headers = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bpfast",
                           "_core", "src")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not os.path.exists(os.path.join(headers, "panel.c")):
        pytest.skip("needs a C compiler and the source tree's C sources")
    build = subprocess.run([compiler, "-fsyntax-only", "-Wall", "-Werror", "-fopenmp",
                            "-DBPFAST_POOL_OPENMP", "-I", headers,
                            os.path.join(headers, "panel.c")],
                           capture_output=True, text=True)
    if "fopenmp" in build.stderr and "unsupported" in build.stderr:
        pytest.skip("this compiler has no OpenMP")
    assert build.returncode == 0, build.stderr[-2000:]


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"),
                    reason="needs sched_setaffinity")
def test_panel_products_finish_on_one_cpu():
    """With the process pinned to one CPU the helper rarely runs when the caller waits:
    the caller takes the parts no helper has started, and the results do not change."""
    import os

    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((64, 300)), rng.standard_normal((300, 130))
    want = np.zeros((64, 130))
    with _panel_threads(1):
        _kernels.gemm_call(False, False, 1.0, A, B, 0.0, want)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        with _panel_threads(4):
            for _ in range(200):
                C = np.zeros((64, 130))
                _kernels.gemm_call(False, False, 1.0, A, B, 0.0, C)
                np.testing.assert_array_equal(C, want)
    finally:
        os.sched_setaffinity(0, before)


# networks whose every product above 2^18 multiply-adds fits the panel kernel at these
# batch sizes (one mid-sized first layer, the rest small), and whose first layer is too
# large for the fused tile kernels of momentum and Adam (2^19)
PANEL_NETWORKS = [((300, 70, 5), 32), ((150, 60, 40, 3), 64), ((130, 131, 2), 33)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("sizes, batch_size", PANEL_NETWORKS)
def test_fit_with_panel_products_matches_reference(panel_products, sizes, batch_size,
                                                   optimizer, dtype):
    """Training steps whose large products run on the panel kernel (or BLAS): the
    reference's parameters and losses; the last batch of each epoch is shorter."""
    acts = ["tanh"] * (len(sizes) - 2) + ["sigmoid"]
    before = _kernels.panel_gemm_calls()
    _fit_matches_reference(sizes, acts, dtype, optimizer, batch_size, epochs=2,
                           rows=3 * batch_size + 5, seed=11)
    assert (_kernels.panel_gemm_calls() > before) == (panel_products == "panel")


@pytest.mark.parametrize("sizes, batch_size, expected",
                         [((784, 128, 10), 64, True), ((200, 70, 5), 32, True),
                          ((256, 256, 256, 10), 64, False), ((784, 1024, 10), 64, False),
                          ((64, 32, 10), 32, True)])
def test_trainer_takes_the_panel_only_when_blas_would_not_thread(sizes, batch_size,
                                                                 expected):
    """A network with any product that OpenBLAS would thread (above 2^18 multiply-adds)
    and the panel kernel does not fit keeps every product on BLAS: the two thread pools
    must not take turns on the cores."""
    with _panel_threads(2):
        net = bpfast.Network(list(sizes), "tanh")
        trainer = _kernels.Trainer(net.weights, net.biases, activation_codes(net.activations),
                                   sizes[0], batch_size, 0,
                                   bpfast.training.OPTIMIZERS["sgd"])
        assert trainer.panel == expected
        if expected and sizes[0] * sizes[1] * batch_size > 2**18:
            assert trainer.first_transposed  # the panel reads W by rows


def test_panel_threads_follow_the_blas_limits():
    """Without an override the kernel takes the BLAS's current thread count, which
    threadpoolctl's limits set."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if bpfast.blas_info()["backend"] != "numpy":
        pytest.skip("needs NumPy's OpenBLAS")
    with tuning(panel_gemm=True, panel_threads=0):
        with threadpoolctl.threadpool_limits(1):
            assert _kernels.panel_gemm_threads() == 1
        with threadpoolctl.threadpool_limits(2):
            assert _kernels.panel_gemm_threads() == 2
    with pytest.raises(ValueError, match="panel_threads"):
        with tuning(panel_gemm=True, panel_threads=-1):
            pass


_FORK_SCRIPT = """
import os, sys
import numpy as np
from bpfast._core import kernels as _kernels
from bpfast.engine import tuning
# for the rest of this process (kept: collected, the context would switch back)
switched = tuning(panel_gemm=True, panel_threads=2)
switched.__enter__()
rng = np.random.default_rng(2)
A, B = rng.standard_normal((64, 300)), rng.standard_normal((300, 130))
def product():
    C = np.zeros((64, 130))
    _kernels.gemm_call(False, False, 1.0, A, B, 0.0, C)
    return C
parent = product()  # the parent's pool runs
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    child = product()
    os.write(write, b"same" if np.array_equal(child, parent) else b"diff")
    os._exit(0)
os.close(write)
print(os.read(read, 4).decode(), _kernels.panel_gemm_calls())
os.waitpid(pid, 0)
"""


def test_panel_pool_works_in_a_forked_child(tmp_path):
    """A child forked after the pool's helpers started has none of them: it starts its own
    (and does not wait forever on the parent's). In a fresh process: os.fork under this
    test session's other threads (JAX's) is not safe."""
    import subprocess
    import sys

    if not _kernels.panel_gemm_available():
        pytest.skip("the panel kernel needs AVX2 or AVX-512, on Linux")
    script = tmp_path / "fork.py"
    script.write_text(_FORK_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["same", "1"]


def test_concurrent_trainers_share_the_pool_and_agree():
    """Two threads training at once: one has the pool, the other runs its products on its
    own thread; both get what they get alone (results do not depend on threads)."""
    import threading

    sizes, batch = (200, 70, 5), 32
    X, Y = make_data(sizes, 300, np.float64, seed=4)

    def train(out, i):
        net = bpfast.Network(list(sizes), ["tanh", "sigmoid"], seed=i)
        net.fit(X, Y, epochs=3, batch_size=batch, learning_rate=0.1, shuffle=False)
        out[i] = [w.copy() for w in net.weights]

    with _panel_threads(2):
        alone, together = {}, {}
        for i in range(2):
            train(alone, i)
        threads = [threading.Thread(target=train, args=(together, i)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(2):
        for a, b in zip(alone[i], together[i]):
            np.testing.assert_array_equal(a, b)
