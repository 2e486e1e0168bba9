"""bpfast.Network: construction, initialisation, shared parameters, methods, repr."""
import numpy as np
import pytest

import bpfast
from bpfast import reference

from conftest import DTYPES, assert_close, e_rtol_for, make_data


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(5, 7, 2), (1, 1), (3, 10, 4, 1), (8, 2, 2, 2, 2, 3)])
def test_shapes_and_dtype(sizes, dtype):
    net = bpfast.Network(sizes, activations="tanh", dtype=dtype, seed=0)
    L = len(sizes) - 1
    assert net.sizes == tuple(sizes)
    assert net.n_layers == L
    assert len(net.weights) == L and len(net.biases) == L
    for l in range(L):
        assert net.weights[l].shape == (sizes[l + 1], sizes[l])
        assert net.biases[l].shape == (sizes[l + 1],)
        assert net.weights[l].dtype == np.dtype(dtype)
        assert net.biases[l].dtype == np.dtype(dtype)
        assert net.weights[l].flags.c_contiguous and net.weights[l].flags.writeable
        np.testing.assert_array_equal(net.biases[l], 0)
    assert net.dtype == np.dtype(dtype)
    assert net.n_parameters == sum(sizes[l] * sizes[l + 1] + sizes[l + 1] for l in range(L))
    assert net.activations == ("tanh",) * L


def test_defaults():
    net = bpfast.Network([3, 4, 2])
    assert net.activations == ("sigmoid", "sigmoid")
    assert net.dtype == np.dtype(np.float64)


def test_sizes_accept_numpy_integers_and_arrays():
    net = bpfast.Network(np.array([3, 4, 2]), seed=0)
    assert net.sizes == (3, 4, 2)
    assert all(type(n) is int for n in net.sizes)
    net = bpfast.Network((np.int64(3), np.int32(2)), seed=0)
    assert net.sizes == (3, 2)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.dtype("float32"), "f4", "d"])
def test_dtype_spellings(dtype):
    assert bpfast.Network([2, 2], dtype=dtype).dtype == np.dtype(dtype)


def test_per_layer_activations_and_aliases():
    net = bpfast.Network([3, 4, 5, 2], activations=["ReLU", "swish", "logistic"], seed=1)
    assert net.activations == ("relu", "silu", "sigmoid")


# --------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_same_seed_same_parameters(dtype):
    a = bpfast.Network([6, 9, 3], activations=["relu", "tanh"], dtype=dtype, seed=123)
    b = bpfast.Network([6, 9, 3], activations=["relu", "tanh"], dtype=dtype, seed=123)
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(x, y)
        assert not np.shares_memory(x, y)


def test_different_seed_different_parameters():
    a = bpfast.Network([6, 9, 3], seed=1)
    b = bpfast.Network([6, 9, 3], seed=2)
    for x, y in zip(a.weights, b.weights):
        assert not np.array_equal(x, y)


def test_no_seed_differs_between_networks():
    a = bpfast.Network([6, 9, 3])
    b = bpfast.Network([6, 9, 3])
    assert not np.array_equal(a.weights[0], b.weights[0])


def test_generator_seed():
    a = bpfast.Network([4, 3], seed=np.random.default_rng(7))
    b = bpfast.Network([4, 3], seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a.weights[0], b.weights[0])


# --------------------------------------------------------------------------------------
# Initialisation scale, checked empirically on large layers
# --------------------------------------------------------------------------------------

N_IN, N_OUT = 600, 500


@pytest.mark.parametrize("activation,factor", [("sigmoid", 4.0), ("logistic", 4.0),
                                               ("tanh", 1.0), ("identity", 1.0)])
def test_glorot_uniform(activation, factor):
    net = bpfast.Network([N_IN, N_OUT], activations=activation, seed=0)
    W = net.weights[0]
    r = factor * np.sqrt(6.0 / (N_IN + N_OUT))
    assert np.max(np.abs(W)) <= r
    assert np.max(W) > 0.999 * r and np.min(W) < -0.999 * r
    # uniform on [-r, r]: mean 0, std r / sqrt(3), a quarter of the mass in each quarter
    np.testing.assert_allclose(np.std(W), r / np.sqrt(3), rtol=0.01)
    assert abs(np.mean(W)) < 0.01 * r
    hist, _ = np.histogram(W, bins=4, range=(-r, r))
    np.testing.assert_allclose(hist / W.size, 0.25, atol=0.01)
    np.testing.assert_array_equal(net.biases[0], 0)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "softplus", "silu"])
def test_he_normal(activation):
    net = bpfast.Network([N_IN, N_OUT], activations=activation, seed=0)
    W = net.weights[0]
    std = np.sqrt(2.0 / N_IN)
    np.testing.assert_allclose(np.std(W), std, rtol=0.01)
    assert abs(np.mean(W)) < 0.01 * std
    # normal, not uniform: about 68.27 % within one std, and tails beyond 3 std
    np.testing.assert_allclose(np.mean(np.abs(W) < std), 0.6827, atol=0.01)
    assert np.max(np.abs(W)) > 3 * std
    np.testing.assert_array_equal(net.biases[0], 0)


def test_init_rule_follows_each_layer_activation():
    net = bpfast.Network([400, 500, 300], activations=["relu", "sigmoid"], seed=3)
    W0, W1 = net.weights
    np.testing.assert_allclose(np.std(W0), np.sqrt(2.0 / 400), rtol=0.02)
    r = 4 * np.sqrt(6.0 / (500 + 300))
    assert np.max(np.abs(W1)) <= r
    np.testing.assert_allclose(np.std(W1), r / np.sqrt(3), rtol=0.02)


@pytest.mark.parametrize("dtype", DTYPES)
def test_init_in_dtype(dtype):
    net = bpfast.Network([300, 200], activations="relu", dtype=dtype, seed=0)
    assert net.weights[0].dtype == np.dtype(dtype)
    np.testing.assert_allclose(np.std(net.weights[0]), np.sqrt(2 / 300), rtol=0.02)


# --------------------------------------------------------------------------------------
# Owned, shared parameters; methods equal the functional API
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_writes_change_the_network(dtype):
    net = bpfast.Network([5, 7, 2], activations="tanh", dtype=dtype, seed=0)
    X, Y = make_data((5, 7, 2), 4, dtype=dtype, seed=1)
    before = net.forward(X).copy()
    net.weights[0][...] = 0
    after = net.forward(X)
    assert not np.allclose(after, before)
    # with W^1 = 0 the hidden layer is tanh(b^1) = 0, so outputs are tanh(b^2) = 0
    np.testing.assert_array_equal(after, 0)
    net.biases[1][:] = 0.5
    np.testing.assert_allclose(net.forward(X), np.tanh(np.full((4, 2), 0.5, dtype)),
                               rtol=1e-6)
    net.weights[1] *= 2  # in-place on a list element: still the same array
    np.testing.assert_allclose(net.forward(X), np.tanh(np.full((4, 2), 0.5, dtype)),
                               rtol=1e-6)
    E, dW, db = net.gradient(X, Y)
    np.testing.assert_array_equal(dW[0], bpfast.backprop(net.weights, net.biases, "tanh",
                                                         X, Y)[1][0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("acts", ["sigmoid", ["relu", "tanh", "identity"], "silu"])
def test_methods_equal_functional_api(dtype, acts):
    sizes = (6, 8, 5, 3)
    net = bpfast.Network(sizes, activations=acts, dtype=dtype, seed=4)
    for v in net.biases:  # nonzero biases for a stronger check
        v[:] = np.linspace(-0.5, 0.5, v.size)
    X, Y = make_data(sizes, 15, dtype=dtype, seed=5)
    A = net.forward(X)
    assert A.dtype == np.dtype(dtype) and A.shape == (15, 3)
    np.testing.assert_array_equal(A, bpfast.forward(net.weights, net.biases, acts, X))
    assert_close(A, reference.forward(net.weights, net.biases, acts, X), dtype)

    E, dW, db = net.gradient(X, Y)
    E2, dW2, db2 = bpfast.backprop(net.weights, net.biases, acts, X, Y)
    assert E == E2 and type(E) is float
    for g, g2 in zip(dW + db, dW2 + db2):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(g, g2)

    Lo = net.loss(X, Y)
    assert type(Lo) is float
    np.testing.assert_allclose(Lo, reference.loss(net.weights, net.biases, acts, X, Y),
                               rtol=e_rtol_for(dtype))
    np.testing.assert_allclose(Lo, E, rtol=e_rtol_for(dtype))


def test_gradient_step_reduces_loss():
    net = bpfast.Network([4, 16, 2], activations="tanh", seed=0)
    X, Y = make_data((4, 16, 2), 64, seed=1)
    before = net.loss(X, Y)
    for _ in range(20):
        _, dW, db = net.gradient(X, Y)
        for p, g in zip(net.weights + net.biases, dW + db):
            p -= 0.5 * g
    assert net.loss(X, Y) < before


def test_method_inputs_are_checked():
    net = bpfast.Network([5, 7, 2], seed=0)
    with pytest.raises(ValueError, match="X"):
        net.forward(np.ones((3, 4)))
    with pytest.raises(ValueError, match="Y"):
        net.gradient(np.ones((3, 5)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="Y"):
        net.loss(np.ones((3, 5)), np.ones((4, 2)))


# --------------------------------------------------------------------------------------
# repr
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_repr(dtype):
    net = bpfast.Network([5, 7, 2], activations="tanh", dtype=dtype, seed=0)
    r = repr(net)
    assert "5-7-2" in r
    assert "tanh" in r
    assert np.dtype(dtype).name in r
    assert str(net.n_parameters) in r


def test_repr_mixed_activations():
    r = repr(bpfast.Network([3, 4, 1], activations=["relu", "sigmoid"]))
    assert "3-4-1" in r and "relu" in r and "sigmoid" in r


# --------------------------------------------------------------------------------------
# Bad constructor arguments
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes,exc,name", [
    ([5], ValueError, "sizes"),
    ([], ValueError, "sizes"),
    (5, TypeError, "sizes"),
    (None, TypeError, "sizes"),
    ([5, 0], ValueError, r"sizes\[1\]"),
    ([0, 5], ValueError, r"sizes\[0\]"),
    ([5, -3, 2], ValueError, r"sizes\[1\]"),
    ([5, 2.5], TypeError, r"sizes\[1\]"),
    ([5.0, 2], TypeError, r"sizes\[0\]"),
    ([5, "3"], TypeError, r"sizes\[1\]"),
    ([True, 2], TypeError, r"sizes\[0\]"),
    ([5, None], TypeError, r"sizes\[1\]"),
])
def test_bad_sizes(sizes, exc, name):
    with pytest.raises(exc, match=name):
        bpfast.Network(sizes)


@pytest.mark.parametrize("acts,exc", [
    ("gelu", ValueError),
    (["relu"], ValueError),
    (["relu", "tanh", "tanh"], ValueError),
    (["relu", "nope"], ValueError),
    (None, TypeError),
    (3, TypeError),
])
def test_bad_activations(acts, exc):
    with pytest.raises(exc, match="activations"):
        bpfast.Network([3, 4, 2], activations=acts)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.complex128, bool,
                                   np.longdouble, "banana", object, str])
def test_bad_dtype(dtype):
    if dtype is np.longdouble and np.dtype(np.longdouble) == np.dtype(np.float64):
        pytest.skip("longdouble is float64 here")  # pragma: no cover
    with pytest.raises(TypeError, match="dtype"):
        bpfast.Network([3, 2], dtype=dtype)
