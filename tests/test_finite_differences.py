"""The reference back-propagation against central finite differences; check_gradient."""
import numpy as np
import pytest

import bpfast
from bpfast import reference
from bpfast.gradcheck import finite_difference_gradient

from conftest import ACTIVATIONS, KINKED, SMOOTH, make_data, make_params, snapshot

EPS = 1e-6
FD_RTOL = 1e-6

ARCHITECTURES = [(3, 2), (4, 5, 3), (2, 4, 3, 2), (3, 1, 3, 2)]


def _central_differences(activations, weights, biases, X, Y, eps=EPS):
    """dE/dp for every parameter by (E(p + eps) - E(p - eps)) / (2 eps), in float64."""
    weights = [w.astype(np.float64) for w in weights]
    biases = [b.astype(np.float64) for b in biases]
    grads = []
    for params in (weights, biases):
        out = []
        for p in params:
            g = np.zeros_like(p)
            for idx in np.ndindex(p.shape):
                saved = p[idx]
                p[idx] = saved + eps
                up = reference.loss(weights, biases, activations, X, Y)
                p[idx] = saved - eps
                down = reference.loss(weights, biases, activations, X, Y)
                p[idx] = saved
                g[idx] = (up - down) / (2 * eps)
            out.append(g)
        grads.append(out)
    return grads[0], grads[1]


def _pre_activations(weights, biases, activations, X):
    from bpfast.activations import resolve_activations

    names = resolve_activations(activations, len(weights))
    a, Zs = X, []
    for W, b, name in zip(weights, biases, names):
        z = a @ W.T + b
        Zs.append(z)
        a = reference.ACTIVATIONS[name][0](z)
    return Zs


def _problem(sizes, activations, seed, m=4):
    """Parameters and data whose pre-activations all stay clear of 0 (relu kinks)."""
    for s in range(seed, seed + 200):
        weights, biases = make_params(sizes, seed=s, bias_scale=1.0)
        X, Y = make_data(sizes, m, seed=s + 1000)
        Zs = _pre_activations(weights, biases, activations, X)
        if min(np.min(np.abs(z)) for z in Zs) > 1e-3:
            return weights, biases, X, Y
    raise AssertionError("no kink-free problem found")  # pragma: no cover


def _assert_fd_close(got, fd, name):
    scale = max(float(np.max(np.abs(fd))), 1e-12)
    np.testing.assert_allclose(got, fd, rtol=FD_RTOL, atol=1e-7 * scale + 1e-10,
                               err_msg=name)


@pytest.mark.parametrize("sizes", ARCHITECTURES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reference_backprop_equals_finite_differences(activation, sizes):
    weights, biases, X, Y = _problem(sizes, activation, seed=len(sizes) * 31)
    E, dW, db = reference.backprop(weights, biases, activation, X, Y)
    fW, fb = _central_differences(activation, weights, biases, X, Y)
    np.testing.assert_allclose(E, reference.loss(weights, biases, activation, X, Y),
                               rtol=1e-14)
    for l in range(len(weights)):
        _assert_fd_close(dW[l], fW[l], f"dW[{l}]")
        _assert_fd_close(db[l], fb[l], f"db[{l}]")


@pytest.mark.parametrize("acts", [
    ["sigmoid", "relu", "identity"],
    ["tanh", "silu", "softplus"],
    ["leaky_relu", "tanh", "sigmoid"],
])
def test_mixed_activations_equal_finite_differences(acts):
    sizes = (3, 4, 3, 2)
    weights, biases, X, Y = _problem(sizes, acts, seed=7, m=5)
    _, dW, db = reference.backprop(weights, biases, acts, X, Y)
    fW, fb = _central_differences(acts, weights, biases, X, Y)
    for l in range(3):
        _assert_fd_close(dW[l], fW[l], f"dW[{l}]")
        _assert_fd_close(db[l], fb[l], f"db[{l}]")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_compiled_backprop_equals_finite_differences(activation):
    weights, biases, X, Y = _problem((4, 5, 3), activation, seed=90)
    _, dW, db = bpfast.backprop(weights, biases, activation, X, Y)
    fW, fb = _central_differences(activation, weights, biases, X, Y)
    for l in range(2):
        _assert_fd_close(dW[l], fW[l], f"dW[{l}]")
        _assert_fd_close(db[l], fb[l], f"db[{l}]")


# --------------------------------------------------------------------------------------
# bpfast.check_gradient
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", SMOOTH)
def test_check_gradient_float64(activation):
    weights, biases, X, Y = _problem((4, 5, 3), activation, seed=40)
    err = bpfast.check_gradient(weights, biases, activation, X, Y)
    assert type(err) is float
    assert 0 <= err < 1e-6


@pytest.mark.parametrize("activation", KINKED)
def test_check_gradient_float64_kinked_away_from_kink(activation):
    weights, biases, X, Y = _problem((4, 5, 3), activation, seed=41)
    assert bpfast.check_gradient(weights, biases, activation, X, Y) < 1e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_check_gradient_float32(activation):
    weights, biases, X, Y = _problem((4, 5, 3), activation, seed=42)
    w32 = [w.astype(np.float32) for w in weights]
    b32 = [b.astype(np.float32) for b in biases]
    err = bpfast.check_gradient(w32, b32, activation, X.astype(np.float32),
                                Y.astype(np.float32))
    assert type(err) is float
    assert 0 <= err < 1e-2


def test_check_gradient_leaves_inputs_untouched(small_net):
    _, weights, biases, X, Y = small_net
    before = snapshot(weights, biases, X, Y)
    bpfast.check_gradient(weights, biases, "tanh", X, Y)
    assert snapshot(weights, biases, X, Y) == before


def test_check_gradient_validates_inputs(small_net):
    _, weights, biases, X, Y = small_net
    with pytest.raises(ValueError, match="Y"):
        bpfast.check_gradient(weights, biases, "tanh", X, Y[:, :2])


# --------------------------------------------------------------------------------------
# bpfast.gradcheck.finite_difference_gradient on a function with a known gradient
# --------------------------------------------------------------------------------------

def test_finite_difference_gradient_of_quadratic():
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 4)), rng.standard_normal((2, 3))]
    biases = [rng.standard_normal(3), rng.standard_normal(2)]
    cw = [rng.uniform(0.5, 2, w.shape) for w in weights]
    cb = [rng.uniform(0.5, 2, b.shape) for b in biases]
    dw = [rng.standard_normal(w.shape) for w in weights]

    def f(ws, bs):
        # sum c w^2 + d w + sum c b^2 + prod-free cross term between layers' biases
        total = sum(np.sum(c * w * w + d * w) for c, w, d in zip(cw, ws, dw))
        total += sum(np.sum(c * b * b) for c, b in zip(cb, bs))
        total += bs[0][0] * bs[1][1]
        return float(total)

    before = snapshot(weights, biases)
    gW, gb = finite_difference_gradient(f, weights, biases, eps=1e-6)
    assert snapshot(weights, biases) == before  # restored exactly
    for g, c, w, d in zip(gW, cw, weights, dw):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, 2 * c * w + d, rtol=1e-7, atol=1e-8)
    want_b = [2 * c * b for c, b in zip(cb, biases)]
    want_b[0][0] += biases[1][1]
    want_b[1][1] += biases[0][0]
    for g, want in zip(gb, want_b):
        np.testing.assert_allclose(g, want, rtol=1e-7, atol=1e-8)


def test_finite_difference_gradient_detects_wrong_gradient():
    """A deliberately wrong analytic gradient is far from the central differences."""
    rng = np.random.default_rng(1)
    weights, biases = [rng.standard_normal((2, 2))], [rng.standard_normal(2)]

    def f(ws, bs):
        return float(np.sum(np.sin(ws[0])) + np.sum(bs[0] ** 3))

    gW, gb = finite_difference_gradient(f, weights, biases)
    right = np.cos(weights[0])
    wrong = right.copy()
    wrong[0, 1] *= 1.01
    rel = lambda g: np.linalg.norm(g - gW[0]) / np.linalg.norm(gW[0])
    assert rel(right) < 1e-8
    assert rel(wrong) > 1e-3
    np.testing.assert_allclose(gb[0], 3 * biases[0] ** 2, rtol=1e-7)
