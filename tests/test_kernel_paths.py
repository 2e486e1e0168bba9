"""Every compiled code path against the reference: plain-loop GEMM and BLAS GEMM, the
fused SGD step and the separate-update optimizers, both dtypes."""
import numpy as np
import pytest

import bpfast
from bpfast import _kernels, reference

from conftest import assert_close, make_data, make_params, rtol_for

SIZES = [(3, 4, 2), (9, 17, 5, 3), (64, 32, 10), (20, 40, 30, 1)]
ACTS = ["tanh", "relu", "leaky_relu", "sigmoid", "silu"]


@pytest.fixture(params=["loops", "blas"])
def gemm_path(request):
    old = _kernels.set_small_gemm_limit(10**15 if request.param == "loops" else 0)
    yield request.param
    _kernels.set_small_gemm_limit(old)


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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
@pytest.mark.parametrize("l2", [0.0, 0.5])
@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_fit_on_each_gemm_path(gemm_path, optimizer, l2, batch_size, dtype):
    """sgd takes the fused step (no dW), momentum the gradient-then-update route."""
    sizes = (9, 17, 5, 3)
    W, b = make_params(sizes, dtype, seed=3)
    X, Y = make_data(sizes, 41, dtype, seed=4)
    net = bpfast.Network(sizes, ["relu", "tanh", "sigmoid"], dtype=dtype)
    for p, q in zip(net.weights + net.biases, W + b):
        p[...] = q
    hist = net.fit(X, Y, epochs=3, batch_size=batch_size, learning_rate=0.1,
                   optimizer=optimizer, l2=l2, shuffle=False).loss
    W_ref, b_ref, hist_ref = reference.fit(W, b, net.activations, X, Y, epochs=3,
                                           batch_size=batch_size, learning_rate=0.1,
                                           optimizer=optimizer, l2=l2)
    # three epochs of steps compound rounding differences a little
    rtol = 1e-9 if np.dtype(dtype) == np.float64 else 1e-3
    for got, want in zip(net.weights + net.biases, W_ref + b_ref):
        assert_close(got, want, rtol=rtol)
    np.testing.assert_allclose(hist, hist_ref, rtol=rtol)
