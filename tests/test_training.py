"""Network.fit: equivalence with bpfast.reference.fit, the reference itself, shuffling,
learning, divergence, early stopping, callbacks, progress, validation and bad arguments.

Helpers live in this file on purpose (tests/conftest.py belongs to another suite).
"""
import re
import warnings

import numpy as np
import pytest

import bpfast
from bpfast import reference, training

DTYPES = (np.float64, np.float32)
#: Elementwise relative tolerance of Network.fit against reference.fit, per dtype.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
LOSSES = ("mse", "cross_entropy", "binary_cross_entropy", "poisson")
#: A learning rate per optimizer that keeps 3 epochs of small problems well behaved.
LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 0.01}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def assert_close(got, want, rtol, err_msg=""):
    """assert_allclose with an absolute floor ``rtol * max|want|``."""
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol,
                               atol=rtol * scale, err_msg=err_msg)


def params(net):
    return [p.copy() for p in net.weights + net.biases]


def assert_params_equal(net, saved, err_msg=""):
    got = net.weights + net.biases
    assert len(got) == len(saved)
    for k, (a, b) in enumerate(zip(got, saved)):
        np.testing.assert_array_equal(a, b, err_msg=f"{err_msg} parameter {k}")


def make_net(sizes, activations, dtype=np.float64, seed=0, bias_scale=0.3):
    """A Network with weights N(0, 1/n_in) and nonzero biases (keeps relu off its kink)."""
    net = bpfast.Network(sizes, activations=activations, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for W, b in zip(net.weights, net.biases):
        W[...] = rng.standard_normal(W.shape) / np.sqrt(W.shape[1])
        b[...] = bias_scale * rng.standard_normal(b.shape)
    return net


def make_targets(rng, m, n, loss, output):
    if loss == "cross_entropy":
        if n == 1:
            return np.ones((m, 1))
        # soft labels on some rows, one-hot on the others; every row sums to 1
        Y = rng.dirichlet(np.ones(n), size=m)
        hard = rng.random(m) < 0.5
        Y[hard] = np.eye(n)[rng.integers(0, n, hard.sum())]
        return Y
    if loss == "binary_cross_entropy":
        Y = rng.integers(0, 2, (m, n)).astype(np.float64)
        Y[: m // 3] = rng.uniform(0, 1, (m // 3, n))  # soft targets too
        return Y
    if loss == "poisson":
        return rng.poisson(1.5, (m, n)).astype(np.float64)  # counts, zeros included
    if output in ("sigmoid", "softmax"):
        return rng.uniform(0, 1, (m, n))
    return rng.uniform(-1, 1, (m, n))


def teacher_problem(m=200, sizes=(4, 6, 2), seed=0, teacher_seed=7):
    """Regression targets produced by a random teacher network (inputs drawn with
    ``seed``; the same ``teacher_seed`` gives the same input-output relation)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, sizes[0]))
    teacher = make_net(sizes, ["tanh"] * (len(sizes) - 2) + ["identity"], seed=teacher_seed,
                       bias_scale=0.5)
    return X, teacher.forward(X)


def fit_against_reference(net, X, Y, rtol, **kw):
    """Run net.fit(shuffle=False) and reference.fit from the same start; compare."""
    w0 = [W.copy() for W in net.weights]
    b0 = [b.copy() for b in net.biases]
    ref_kw = {k: v for k, v in kw.items() if k not in ("shuffle", "seed")}
    hist = net.fit(X, Y, shuffle=False, **kw)
    W, B, ref_hist = reference.fit(w0, b0, net.activations, X, Y, **ref_kw)
    for l in range(net.n_layers):
        assert net.weights[l].dtype == net.dtype and net.biases[l].dtype == net.dtype
        assert_close(net.weights[l], W[l], rtol, err_msg=f"weights[{l}]")
        assert_close(net.biases[l], B[l], rtol, err_msg=f"biases[{l}]")
    assert isinstance(hist, bpfast.History)
    assert hist.epochs == kw["epochs"] == len(ref_hist) == len(hist.loss) == len(hist.time)
    assert all(isinstance(v, float) for v in hist.loss)
    assert_close(hist.loss, ref_hist, rtol, err_msg="history.loss")
    assert hist.val_loss == [] and not hist.stopped_early
    return hist


# --------------------------------------------------------------------------------------
# Equivalence with reference.fit: every optimizer x loss x dtype x weights x l2
# --------------------------------------------------------------------------------------

#: (sizes, hidden activations, m, batch_size): batch sizes 1, dividing m, not dividing m,
#: larger than m; 1 to 3 layers.
BATCH_CONFIGS = [
    ((4, 3), (), 9, 1),
    ((4, 6, 3), ("tanh",), 12, 4),
    ((4, 6, 5, 3), ("relu", "silu"), 13, 5),
    ((3, 5, 3), ("softplus",), 7, 20),
]
MSE_OUTPUTS = ("identity", "sigmoid", "softmax", "tanh")
OUTPUT_FOR = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "poisson": "exp"}


def _equivalence_case(optimizer, loss, dtype, weighted, l2):
    idx = DTYPES.index(dtype) * 4 + weighted * 2 + (l2 > 0)
    sizes, hidden, m, batch_size = BATCH_CONFIGS[idx % 4]
    output = OUTPUT_FOR.get(loss, MSE_OUTPUTS[(idx + OPTIMIZERS.index(optimizer)) % 4])
    activations = list(hidden) + [output]
    seed = 10 * idx + OPTIMIZERS.index(optimizer) + 100 * LOSSES.index(loss)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, sizes[0])).astype(dtype)
    Y = make_targets(rng, m, sizes[-1], loss, output).astype(dtype)
    sw = rng.uniform(0.2, 2.0, m).astype(dtype) if weighted else None
    net = make_net(sizes, activations, dtype, seed=seed)
    return net, X, Y, sw, batch_size


@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fit_equals_reference(optimizer, loss, dtype, weighted, l2):
    net, X, Y, sw, batch_size = _equivalence_case(optimizer, loss, dtype, weighted, l2)
    fit_against_reference(
        net, X, Y, RTOL[np.dtype(dtype)], epochs=3, batch_size=batch_size,
        # the exp output of the Poisson loss amplifies steps: a fifth of the rate
        learning_rate=LR[optimizer] * (0.2 if loss == "poisson" else 1),
        optimizer=optimizer, loss=loss, momentum=0.8,
        beta1=0.85, beta2=0.99, epsilon=1e-7, l2=l2, sample_weight=sw,
    )
    assert net.loss_function == loss


@pytest.mark.parametrize("batch_size", [1, 2, 4, 5, 11, 12, 13, 100])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_equals_reference_batch_sizes_and_depths(batch_size, depth, optimizer):
    sizes = (3, 5, 4, 2)[: depth] + (2,)
    activations = ["tanh", "leaky_relu"][: depth - 1] + ["identity"]
    rng = np.random.default_rng(batch_size + 10 * depth)
    m = 12
    X = rng.standard_normal((m, sizes[0]))
    Y = rng.uniform(-1, 1, (m, sizes[-1]))
    net = make_net(sizes, activations, seed=depth)
    fit_against_reference(net, X, Y, 1e-10, epochs=2, batch_size=batch_size,
                          learning_rate=LR[optimizer], optimizer=optimizer,
                          sample_weight=rng.uniform(0.5, 1.5, m))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_fit_equals_reference_with_zero_weights_and_defaults(dtype):
    """Some rows weigh 0 (but no batch is all zeros); default momentum/beta/epsilon."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((10, 3)).astype(dtype)
    Y = rng.uniform(0, 1, (10, 2)).astype(dtype)
    sw = np.array([0, 1, 2, 0, 1, 0, 3, 1, 0, 1], dtype=dtype)
    for opt in OPTIMIZERS:
        net = make_net((3, 4, 2), ["tanh", "sigmoid"], dtype, seed=3)
        fit_against_reference(net, X, Y, RTOL[np.dtype(dtype)], epochs=2, batch_size=3,
                              learning_rate=LR[opt], optimizer=opt, sample_weight=sw,
                              loss="binary_cross_entropy")


def test_fit_converts_lists_and_other_dtypes():
    """Integer / list data are converted to the network's dtype like check_data does."""
    rng = np.random.default_rng(0)
    X = rng.integers(-3, 4, (8, 3))
    Y = rng.integers(0, 2, (8, 2))
    net = make_net((3, 4, 2), ["tanh", "sigmoid"], np.float32, seed=1)
    fit_against_reference(net, X.tolist(), Y.tolist(), 1e-4, epochs=2, batch_size=3,
                          learning_rate=0.1, loss="binary_cross_entropy")


# --------------------------------------------------------------------------------------
# reference.fit against hand-written NumPy steps
# --------------------------------------------------------------------------------------

def _hand_trainer(w0, b0, acts, X, Y, epochs, batch_size, lr, optimizer, momentum=0.9,
                  beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Mini-batch training in data order with gradients from reference.backprop (mse)."""
    params = [W.copy() for W in w0] + [b.copy() for b in b0]
    L = len(w0)
    s1 = [np.zeros_like(p) for p in params]
    s2 = [np.zeros_like(p) for p in params]
    t, history = 0, []
    m = X.shape[0]
    for _ in range(epochs):
        total = 0.0
        for start in range(0, m, batch_size):
            Xb, Yb = X[start:start + batch_size], Y[start:start + batch_size]
            E, dW, db = reference.backprop(params[:L], params[L:], acts, Xb, Yb)
            total += E * Xb.shape[0]
            t += 1
            for k, g in enumerate(dW + db):
                if optimizer == "sgd":
                    params[k] = params[k] - lr * g
                elif optimizer == "momentum":
                    s1[k] = momentum * s1[k] - lr * g
                    params[k] = params[k] + s1[k]
                elif optimizer == "nesterov":
                    s1[k] = momentum * s1[k] - lr * g
                    params[k] = params[k] + momentum * s1[k] - lr * g
                else:
                    s1[k] = beta1 * s1[k] + (1 - beta1) * g
                    s2[k] = beta2 * s2[k] + (1 - beta2) * g * g
                    lr_t = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                    params[k] = params[k] - lr_t * s1[k] / (np.sqrt(s2[k]) + epsilon)
        history.append(total / m)
    return params[:L], params[L:], history


def test_reference_fit_first_sgd_step_by_hand():
    rng = np.random.default_rng(0)
    net = make_net((3, 4, 2), ["tanh", "sigmoid"], seed=2)
    X = rng.standard_normal((10, 3))
    Y = rng.uniform(0, 1, (10, 2))
    lr, k = 0.7, 4
    # the seed's gradient over the first batch's own m = 4 rows
    E, dW, db = reference.backprop(net.weights, net.biases, net.activations, X[:k], Y[:k])
    want_W = [W - lr * g for W, g in zip(net.weights, dW)]
    want_b = [b - lr * g for b, g in zip(net.biases, db)]
    # one step: a single batch of k rows
    W, B, hist = reference.fit(net.weights, net.biases, net.activations, X[:k], Y[:k],
                               epochs=1, batch_size=k, learning_rate=lr)
    for l in range(2):
        assert_close(W[l], want_W[l], 1e-13)
        assert_close(B[l], want_b[l], 1e-13)
    assert hist == pytest.approx([E], rel=1e-13)
    # the gradient is not the one over the full data set's m
    _, dW_all, _ = reference.backprop(net.weights, net.biases, net.activations, X, Y)
    assert not np.allclose(dW_all[0], dW[0])
    # the reference did not modify its inputs
    W0, B0, _ = reference.fit(net.weights, net.biases, net.activations, X, Y, epochs=1,
                              batch_size=k, learning_rate=lr)
    assert W0[0] is not net.weights[0]
    assert not np.array_equal(W0[0], net.weights[0])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("batch_size", [1, 4, 10, 30])
def test_reference_fit_equals_hand_written_trainer(optimizer, batch_size):
    rng = np.random.default_rng(batch_size)
    net = make_net((3, 5, 2), ["silu", "identity"], seed=4)
    X = rng.standard_normal((10, 3))
    Y = rng.uniform(-1, 1, (10, 2))
    kw = dict(momentum=0.7, beta1=0.8, beta2=0.95, epsilon=1e-6)
    W, B, hist = reference.fit(net.weights, net.biases, net.activations, X, Y, epochs=3,
                               batch_size=batch_size, learning_rate=0.05,
                               optimizer=optimizer, **kw)
    hW, hB, hhist = _hand_trainer(net.weights, net.biases, net.activations, X, Y, 3,
                                  batch_size, 0.05, optimizer, **kw)
    for l in range(2):
        assert_close(W[l], hW[l], 1e-12)
        assert_close(B[l], hB[l], 1e-12)
    assert_close(hist, hhist, 1e-12)


# --------------------------------------------------------------------------------------
# reference.loss_gradient: loss values and finite differences
# --------------------------------------------------------------------------------------

def _loss_by_formula(weights, biases, names, X, Y, loss, w, l2):
    A = reference.forward(weights, biases, list(names), X)
    w = np.ones(X.shape[0]) if w is None else w
    s = w.sum()
    if loss == "mse":
        per = 0.5 * np.sum((A - Y) ** 2, axis=1)
    elif loss == "cross_entropy":
        per = -np.sum(Y * np.log(A), axis=1)
    elif loss == "poisson":
        from scipy.special import xlogy
        per = np.sum(xlogy(Y, Y / A) - Y + A, axis=1)
    else:
        per = -np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A), axis=1)
    return float(np.sum(w * per) / s + 0.5 * l2 * sum(np.sum(W * W) for W in weights) / s)


@pytest.mark.parametrize("l2", [0.0, 0.7])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss,names", [
    ("mse", ("tanh", "identity")),
    ("mse", ("sigmoid", "softmax")),
    ("mse", ("softplus", "sigmoid")),
    ("cross_entropy", ("tanh", "softmax")),
    ("cross_entropy", ("softmax",)),
    ("binary_cross_entropy", ("silu", "sigmoid")),
    ("binary_cross_entropy", ("tanh", "leaky_relu", "sigmoid")),
    ("poisson", ("tanh", "exp")),
    ("poisson", ("exp",)),
])
def test_loss_gradient_finite_differences(loss, names, weighted, l2):
    sizes = (3, 4, 5, 3)[: len(names)] + (3,)
    net = make_net(sizes, list(names), seed=len(names))
    weights = [W.copy() for W in net.weights]
    biases = [b.copy() for b in net.biases]
    rng = np.random.default_rng(7)
    m = 6
    X = rng.standard_normal((m, sizes[0]))
    Y = make_targets(rng, m, sizes[-1], loss, names[-1])
    w = rng.uniform(0.2, 3.0, m) if weighted else None

    E, dW, db = reference.loss_gradient(weights, biases, names, X, Y, loss, w, l2)
    assert E == pytest.approx(_loss_by_formula(weights, biases, names, X, Y, loss, w, l2),
                              rel=1e-12)
    h = 1e-6
    for params, grads in ((weights, dW), (biases, db)):
        for p, g in zip(params, grads):
            assert g.shape == p.shape
            num = np.empty_like(p)
            for idx in np.ndindex(p.shape):
                saved = p[idx]
                p[idx] = saved + h
                Ep = reference.loss_gradient(weights, biases, names, X, Y, loss, w, l2)[0]
                p[idx] = saved - h
                Em = reference.loss_gradient(weights, biases, names, X, Y, loss, w, l2)[0]
                p[idx] = saved
                num[idx] = (Ep - Em) / (2 * h)
            assert_close(g, num, 1e-6)


def test_loss_gradient_sample_weights_scale_invariant_and_match_repetition():
    """Integer weights act like repeated rows; scaling all weights changes nothing."""
    names = ("tanh", "softmax")
    net = make_net((3, 4, 3), list(names), seed=1)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 3))
    Y = make_targets(rng, 5, 3, "cross_entropy", "softmax")
    w = np.array([1.0, 2.0, 0.0, 3.0, 1.0])
    E1, dW1, db1 = reference.loss_gradient(net.weights, net.biases, names, X, Y,
                                           "cross_entropy", w, 0.2)
    E2, dW2, db2 = reference.loss_gradient(net.weights, net.biases, names, X, Y,
                                           "cross_entropy", 10 * w, 2.0)
    rep = np.repeat(np.arange(5), w.astype(int))
    E3, dW3, db3 = reference.loss_gradient(net.weights, net.biases, names, X[rep], Y[rep],
                                           "cross_entropy", None, 0.2)
    for Eo, dWo, dbo in ((E2, dW2, db2), (E3, dW3, db3)):
        assert Eo == pytest.approx(E1, rel=1e-12)
        for a, b in zip(dW1 + db1, dWo + dbo):
            assert_close(a, b, 1e-12)


# --------------------------------------------------------------------------------------
# Shuffling
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_shuffle_same_seed_reproducible_different_seeds_differ(optimizer, dtype):
    X, Y = teacher_problem(m=30)
    sw = np.random.default_rng(1).uniform(0.5, 2, 30)
    runs = {}
    for name, seed in (("a", 123), ("b", 123), ("c", 124)):
        net = make_net((4, 5, 2), ["tanh", "identity"], dtype, seed=0)
        hist = net.fit(X, Y, epochs=3, batch_size=4, learning_rate=LR[optimizer],
                       optimizer=optimizer, shuffle=True, seed=seed, sample_weight=sw)
        runs[name] = (params(net), hist.loss)
    for a, b in zip(runs["a"][0], runs["b"][0]):
        assert a.tobytes() == b.tobytes()
    assert runs["a"][1] == runs["b"][1]
    assert any(not np.array_equal(a, c) for a, c in zip(runs["a"][0], runs["c"][0]))
    assert runs["a"][1] != runs["c"][1]


def test_shuffle_differs_from_data_order_and_between_epochs():
    X, Y = teacher_problem(m=30)
    net0 = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    ordered = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    ordered.fit(X, Y, epochs=2, batch_size=4, learning_rate=0.1, shuffle=False)
    shuffled = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    shuffled.fit(X, Y, epochs=2, batch_size=4, learning_rate=0.1, shuffle=True, seed=0)
    assert not np.array_equal(params(ordered)[0], params(shuffled)[0])
    assert not np.array_equal(params(net0)[0], params(shuffled)[0])
    # shuffle=False ignores the seed
    again = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    again.fit(X, Y, epochs=2, batch_size=4, learning_rate=0.1, shuffle=False, seed=99)
    assert_params_equal(again, params(ordered))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_shuffle_full_batch_equals_reference(optimizer, loss):
    """With one batch per epoch the visiting order only changes rounding, so shuffled
    rows (with their sample weights) must still give the reference's result."""
    rng = np.random.default_rng(3)
    m = 11
    X = rng.standard_normal((m, 3))
    Y = make_targets(rng, m, 2, loss, "sigmoid")
    sw = rng.uniform(0.1, 3.0, m)
    net = make_net((3, 4, 2), ["tanh", "sigmoid"], seed=5)
    w0, b0 = [W.copy() for W in net.weights], [b.copy() for b in net.biases]
    hist = net.fit(X, Y, epochs=3, batch_size=m + 5, learning_rate=LR[optimizer],
                   optimizer=optimizer, loss=loss, sample_weight=sw, l2=0.1,
                   shuffle=True, seed=1)
    W, B, ref_hist = reference.fit(w0, b0, net.activations, X, Y, epochs=3,
                                   batch_size=m, learning_rate=LR[optimizer],
                                   optimizer=optimizer, loss=loss, sample_weight=sw, l2=0.1)
    for l in range(2):
        assert_close(net.weights[l], W[l], 1e-9)
        assert_close(net.biases[l], B[l], 1e-9)
    assert_close(hist.loss, ref_hist, 1e-9)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_shuffle_decreases_loss_on_teacher_problem(optimizer, dtype):
    X, Y = teacher_problem(m=200)
    net = make_net((4, 8, 2), ["tanh", "identity"], dtype, seed=11)
    before = net.loss(X, Y)
    lr = {"sgd": 0.2, "momentum": 0.05, "nesterov": 0.05, "adam": 0.01}[optimizer]
    hist = net.fit(X, Y, epochs=15, batch_size=16, learning_rate=lr, optimizer=optimizer,
                   shuffle=True, seed=0)
    after = net.loss(X, Y)
    assert np.isfinite(hist.loss).all()
    assert after < 0.3 * before
    assert hist.loss[-1] < 0.5 * hist.loss[0]


# --------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------

def _blobs(m, seed):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 3.0], [-3.0, -2.0], [3.0, -2.0]])
    labels = rng.integers(0, 3, m)
    X = centers[labels] + 0.6 * rng.standard_normal((m, 2))
    return X, np.eye(3)[labels], labels


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_cross_entropy_classifier_learns_three_classes(dtype):
    X, Y, labels = _blobs(300, seed=0)
    Xt, _, labels_t = _blobs(300, seed=1)
    net = bpfast.Network([2, 16, 3], activations=["tanh", "softmax"], dtype=dtype, seed=0)
    chance = np.mean(net.forward(Xt).argmax(axis=1) == labels_t)
    hist = net.fit(X, Y, epochs=30, batch_size=16, learning_rate=0.01, optimizer="adam",
                   loss="cross_entropy", seed=0)
    assert hist.loss[-1] < 0.1 < hist.loss[0]
    train_acc = np.mean(net.forward(X).argmax(axis=1) == labels)
    test_acc = np.mean(net.forward(Xt).argmax(axis=1) == labels_t)
    assert train_acc >= 0.97 and test_acc >= 0.97, (chance, train_acc, test_acc)
    assert net.loss_function == "cross_entropy"


def test_binary_cross_entropy_learns_xor():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 2))
    Y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).astype(float)[:, None]
    net = bpfast.Network([2, 16, 1], activations=["tanh", "sigmoid"], seed=1)
    net.fit(X, Y, epochs=150, batch_size=16, learning_rate=0.02, optimizer="adam",
            loss="binary_cross_entropy", seed=0)
    acc = np.mean((net.forward(X)[:, 0] > 0.5) == (Y[:, 0] > 0.5))
    assert acc >= 0.9


# --------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------

def _finite(net):
    return all(np.isfinite(p).all() for p in net.weights + net.biases)


def _diverging_sgd_fit(dtype, batch_size, lr, epochs=30):
    X, Y = teacher_problem(m=40, sizes=(3, 5, 2))
    net = bpfast.Network([3, 8, 2], activations=["relu", "identity"], dtype=dtype, seed=1)
    with pytest.raises(bpfast.DivergenceError) as info:
        net.fit(X, Y, epochs=epochs, batch_size=batch_size, learning_rate=lr,
                shuffle=False)
    return X, Y, net, str(info.value)


@pytest.mark.parametrize("lr", [1e6, 1e30, 1e200])
@pytest.mark.parametrize("batch_size", [1, 8, 40])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_sgd_divergence_keeps_the_weights_from_before_the_failing_batch(dtype, batch_size,
                                                                        lr):
    """Plain sgd: the error names the epoch and batch, and the network holds exactly the
    parameters of a fit that stopped just before that batch (all finite). Large learning
    rates make the update itself overflow, which the kernel's guard must catch."""
    X, Y, net, msg = _diverging_sgd_fit(dtype, batch_size, lr)
    match = re.search(r"epoch (\d+), batch (\d+)", msg)
    assert match, msg
    epoch, batch = int(match.group(1)), int(match.group(2))  # both 1-based
    assert "learning_rate" in msg and "before that batch" in msg
    assert _finite(net)
    replay = bpfast.Network([3, 8, 2], activations=["relu", "identity"], dtype=dtype, seed=1)
    if epoch > 1:
        replay.fit(X, Y, epochs=epoch - 1, batch_size=batch_size, learning_rate=lr,
                   shuffle=False)
    rows = (batch - 1) * batch_size
    if rows:
        replay.fit(X[:rows], Y[:rows], epochs=1, batch_size=batch_size, learning_rate=lr,
                   shuffle=False)
    assert_params_equal(net, params(replay))


@pytest.mark.parametrize("batches", [1, 3])
def test_sgd_divergence_by_overflow_is_named(batches):
    """float32, inputs near 1e15: the outputs (1e15) and the loss (1e30, summed in
    double) are finite, but the gradient is near 1e30 and learning_rate 1e10 would put
    the weights past float32's 3.4e38. The guard refuses that update."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.standard_normal((5 * (batches - 1), 3)),
                   1e15 * rng.standard_normal((5, 3))])
    Y = np.zeros((X.shape[0], 2))
    net = bpfast.Network([3, 2], activations="identity", dtype=np.float32, seed=1)
    with pytest.raises(bpfast.DivergenceError) as info:
        net.fit(X, Y, epochs=1, batch_size=5, learning_rate=1e10, shuffle=False)
    msg = str(info.value)
    assert f"epoch 1, batch {batches}" in msg and "overflow" in msg, msg
    replay = bpfast.Network([3, 2], activations="identity", dtype=np.float32, seed=1)
    if batches > 1:
        replay.fit(X[:-5], Y[:-5], epochs=1, batch_size=5, learning_rate=1e10,
                   shuffle=False)
    assert_params_equal(net, params(replay))
    assert _finite(net)


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
@pytest.mark.parametrize("lr", [1e6, 1e30])
@pytest.mark.parametrize("batch_size", [1, 8, 40])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_divergence_with_state_keeps_the_weights_from_before_the_failing_batch(
        dtype, batch_size, lr, optimizer):
    """Momentum, Nesterov and Adam, as plain sgd: the error names the epoch and batch,
    and the network holds exactly the parameters of one fit (the optimizer state carried
    along) that stopped just before that batch, all finite; no per-epoch copy is kept."""
    X, Y = teacher_problem(m=40, sizes=(3, 5, 2))
    net = bpfast.Network([3, 8, 2], activations=["relu", "identity"], dtype=dtype, seed=1)
    if optimizer == "adam":  # Adam's steps are at most about lr: make it overflow
        X = X * dtype(1e3)
        if dtype == np.float64:
            lr = lr ** 10
    with pytest.raises(bpfast.DivergenceError) as info:
        net.fit(X, Y, epochs=30, batch_size=batch_size, learning_rate=lr, shuffle=False,
                optimizer=optimizer)
    assert isinstance(info.value, FloatingPointError)
    msg = str(info.value)
    match = re.search(r"epoch (\d+), batch (\d+)", msg)
    assert match, msg
    epoch, batch = int(match.group(1)), int(match.group(2))  # both 1-based
    assert "learning_rate" in msg and "before that batch" in msg
    assert _finite(net)
    replay = bpfast.Network([3, 8, 2], activations=["relu", "identity"], dtype=dtype, seed=1)
    rows = (batch - 1) * batch_size
    done = [X] * (epoch - 1) + [X[:rows]], [Y] * (epoch - 1) + [Y[:rows]]
    if (epoch - 1) * len(X) + rows:  # one fit, so the optimizer state carries over
        replay.fit(np.vstack(done[0]), np.vstack(done[1]), epochs=1, batch_size=batch_size,
                   learning_rate=lr, shuffle=False, optimizer=optimizer)
    assert_params_equal(net, params(replay))


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
def test_divergence_by_state_overflow_is_named(optimizer):
    """float32, inputs near 1e15 in the second batch: the loss (summed in double) is
    finite, but the gradient near 1e30 overflows momentum's velocity at learning_rate
    1e10, or Adam's second moment (its square) at any rate. The guard refuses that
    step, and the network keeps the weights from after the first batch."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.standard_normal((5, 3)), 1e15 * rng.standard_normal((5, 3))])
    Y = np.zeros((10, 2))
    net = bpfast.Network([3, 2], activations="identity", dtype=np.float32, seed=1)
    with pytest.raises(bpfast.DivergenceError) as info:
        net.fit(X, Y, epochs=1, batch_size=5, learning_rate=1e10 if optimizer != "adam"
                else 1e-3, shuffle=False, optimizer=optimizer)
    msg = str(info.value)
    assert "epoch 1, batch 2" in msg and "overflow" in msg, msg
    replay = bpfast.Network([3, 2], activations="identity", dtype=np.float32, seed=1)
    replay.fit(X[:5], Y[:5], epochs=1, batch_size=5, learning_rate=1e10
               if optimizer != "adam" else 1e-3, shuffle=False, optimizer=optimizer)
    assert_params_equal(net, params(replay))
    assert _finite(net)


@pytest.mark.parametrize("epochs", [20, 3])
def test_divergence_float32_overflowing_update_leaves_finite_weights(epochs):
    """float32: the last update of an epoch can overflow the parameters to inf while the
    batch loss (accumulated in double) is still finite. The weights after a
    DivergenceError must be finite."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    Y = rng.standard_normal((40, 2))
    lr = 1e6 if epochs == 20 else 1e20
    net = bpfast.Network([3, 2], activations="identity", dtype=np.float32, seed=1)
    with pytest.raises(bpfast.DivergenceError, match=r"epoch \d+"):
        net.fit(X, Y, epochs=epochs, batch_size=40, learning_rate=lr, shuffle=False)
    assert _finite(net), [p for p in net.weights + net.biases]


def test_divergence_detected_when_final_update_overflows():
    """float32, lr=1e20, 2 epochs of one full batch: the second (last) update overflows
    the weights to inf; fit must not return a network with non-finite parameters."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    Y = rng.standard_normal((40, 2))
    net = bpfast.Network([3, 2], activations="identity", dtype=np.float32, seed=1)
    try:
        net.fit(X, Y, epochs=2, batch_size=40, learning_rate=1e20, shuffle=False)
    except bpfast.DivergenceError:
        pass
    else:
        pytest.fail(f"no DivergenceError; weights finite: {_finite(net)}")
    assert _finite(net)


def test_divergence_error_is_exported():
    assert issubclass(bpfast.DivergenceError, FloatingPointError)


# --------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------

def _recorder(store):
    def callback(net, epoch, history):
        store.append(params(net))
    return callback


def _expected_best(monitored, tol, patience):
    """The documented rule: best epoch and stopping epoch (0-based) or None."""
    best, best_epoch, waited = np.inf, None, 0
    for e, v in enumerate(monitored):
        if v < best - tol:
            best, best_epoch, waited = v, e, 0
        else:
            waited += 1
            if waited >= patience:
                return best_epoch, e
    return best_epoch, None


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_huge_tol(restore_best):
    X, Y = teacher_problem(m=60)
    Xv, Yv = teacher_problem(m=20, seed=0)
    net = make_net((4, 6, 2), ["tanh", "identity"], seed=2)
    snaps = []
    hist = net.fit(X, Y, epochs=20, batch_size=8, learning_rate=0.1, shuffle=False,
                   validation_data=(Xv, Yv), early_stopping=True, patience=2, tol=1e9,
                   restore_best=restore_best, callback=_recorder(snaps))
    assert hist.stopped_early is True
    assert hist.epochs == 3 < 20
    assert len(hist.val_loss) == len(hist.loss) == len(hist.time) == len(snaps) == 3
    assert hist.best_epoch == 0
    assert_params_equal(net, snaps[0] if restore_best else snaps[-1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_early_stopping_tiny_learning_rate(dtype):
    X, Y = teacher_problem(m=60)
    Xv, Yv = teacher_problem(m=20, seed=5)
    net = make_net((4, 6, 2), ["tanh", "identity"], dtype, seed=2)
    snaps = []
    hist = net.fit(X, Y, epochs=50, batch_size=8, learning_rate=1e-7, shuffle=False,
                   validation_data=(Xv, Yv), early_stopping=True, patience=2,
                   callback=_recorder(snaps))
    assert hist.stopped_early and hist.epochs < 50
    best, stop = _expected_best(hist.val_loss, 1e-4, 2)
    assert hist.best_epoch == best == 0
    assert stop == hist.epochs - 1
    assert_params_equal(net, snaps[best])


def test_early_stopping_restores_best_epoch_in_the_middle():
    """Improvements shrink below tol after a few epochs: the best epoch is not the first
    and not the last, and its parameters (captured by a callback) are put back."""
    X, Y = teacher_problem(m=80)
    Xv, Yv = teacher_problem(m=40, seed=3)  # same teacher, new inputs
    net = make_net((4, 6, 2), ["tanh", "identity"], seed=2)
    snaps = []
    hist = net.fit(X, Y, epochs=200, batch_size=8, learning_rate=0.05, shuffle=True,
                   seed=0, validation_data=(Xv, Yv), early_stopping=True, patience=3,
                   tol=1e-2, callback=_recorder(snaps))
    assert hist.stopped_early and hist.epochs < 200
    assert hist.val_loss[-1] < 0.5 * hist.val_loss[0]  # it did learn before stopping
    best, stop = _expected_best(hist.val_loss, 1e-2, 3)
    assert hist.best_epoch == best
    assert stop == hist.epochs - 1
    assert 0 < best < hist.epochs - 1
    assert_params_equal(net, snaps[best])
    # the restored network has the best validation loss
    assert net.loss(Xv, Yv) == pytest.approx(hist.val_loss[best], rel=1e-12)


def test_early_stopping_without_validation_monitors_training_loss():
    X, Y = teacher_problem(m=60)
    net = make_net((4, 6, 2), ["tanh", "identity"], seed=2)
    snaps = []
    hist = net.fit(X, Y, epochs=20, batch_size=8, learning_rate=0.1, shuffle=False,
                   early_stopping=True, patience=3, tol=1e9, callback=_recorder(snaps))
    assert hist.stopped_early and hist.epochs == 4
    assert hist.val_loss == []
    assert hist.best_epoch == 0
    assert_params_equal(net, snaps[0])


def test_no_early_stopping_runs_all_epochs():
    X, Y = teacher_problem(m=30)
    Xv, Yv = teacher_problem(m=10, seed=4)
    net = make_net((4, 6, 2), ["tanh", "identity"], seed=2)
    hist = net.fit(X, Y, epochs=6, batch_size=8, learning_rate=1e-7,
                   validation_data=(Xv, Yv), tol=1e9, patience=1)
    assert hist.epochs == 6 and not hist.stopped_early


# --------------------------------------------------------------------------------------
# Callback, progress, validation loss, in-place training
# --------------------------------------------------------------------------------------

def test_callback_called_once_per_epoch_in_order():
    X, Y = teacher_problem(m=30)
    net = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    calls = []

    def cb(n, epoch, history):
        assert n is net
        assert isinstance(history, bpfast.History)
        calls.append((epoch, history.epochs, history.loss[-1]))

    hist = net.fit(X, Y, epochs=5, batch_size=7, learning_rate=0.1, callback=cb, seed=0)
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4]
    assert [c[1] for c in calls] == [1, 2, 3, 4, 5]
    assert [c[2] for c in calls] == hist.loss


@pytest.mark.parametrize("ret", [None, True, 1, "stop"])
def test_callback_only_false_stops(ret):
    X, Y = teacher_problem(m=20)
    net = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    hist = net.fit(X, Y, epochs=4, batch_size=7, learning_rate=0.1,
                   callback=lambda n, e, h: ret)
    assert hist.epochs == 4


def test_callback_returning_false_stops_training():
    X, Y = teacher_problem(m=30)
    net = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    calls, snaps = [], []

    def cb(n, epoch, history):
        calls.append(epoch)
        snaps.append(params(n))
        return False if epoch == 2 else None

    hist = net.fit(X, Y, epochs=10, batch_size=7, learning_rate=0.1, callback=cb)
    assert calls == [0, 1, 2]
    assert hist.epochs == 3 and len(hist.time) == 3
    assert not hist.stopped_early
    assert_params_equal(net, snaps[-1])


def test_progress_bar_on_stderr(capsys):
    X, Y = teacher_problem(m=30)
    Xv, Yv = teacher_problem(m=10, seed=4)
    net = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    net.fit(X, Y, epochs=3, batch_size=8, learning_rate=0.1, progress=True,
            validation_data=(Xv, Yv))
    out, err = capsys.readouterr()
    assert "loss" in err and "samples/s" in err and "val_loss" in err
    assert "3/3" in err
    assert out == ""


def test_no_progress_output_by_default(capsys):
    X, Y = teacher_problem(m=30)
    net = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    net.fit(X, Y, epochs=2, batch_size=8, learning_rate=0.1)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_progress_bar_closed_on_divergence(capsys):
    X, Y = teacher_problem(m=40, sizes=(3, 5, 2))
    net = bpfast.Network([3, 8, 2], activations=["relu", "identity"], seed=1)
    with pytest.raises(bpfast.DivergenceError):
        net.fit(X, Y, epochs=30, batch_size=8, learning_rate=1e6, progress=True)
    assert "bpfast fit" in capsys.readouterr().err


def _direct_loss(net, X, Y, loss):
    A = reference.forward(net.weights, net.biases, list(net.activations), X)
    A = A.astype(np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if loss == "mse":
        return float(np.sum((A - Y) ** 2) / (2 * X.shape[0]))
    if loss == "cross_entropy":
        return float(-np.sum(Y * np.log(A)) / X.shape[0])
    return float(-np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)) / X.shape[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("loss,output", [("mse", "identity"), ("cross_entropy", "softmax"),
                                         ("binary_cross_entropy", "sigmoid")])
def test_validation_loss_values(loss, output, dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 3))
    Y = make_targets(rng, 24, 3, loss, output)
    Xv = rng.standard_normal((9, 3))
    Yv = make_targets(rng, 9, 3, loss, output)
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    net = make_net((3, 5, 3), ["tanh", output], dtype, seed=1)
    one_at_a_time = make_net((3, 5, 3), ["tanh", output], dtype, seed=1)
    direct = []
    hist = net.fit(X, Y, epochs=4, batch_size=5, learning_rate=0.2, loss=loss,
                   shuffle=False, validation_data=(Xv, Yv), sample_weight=np.ones(24),
                   callback=lambda n, e, h: direct.append(_direct_loss(n, Xv, Yv, loss)))
    assert len(hist.val_loss) == 4 and all(isinstance(v, float) for v in hist.val_loss)
    assert_close(hist.val_loss, direct, rtol)
    # training one epoch at a time (sgd has no state) gives the same parameters and losses
    for e in range(4):
        h1 = one_at_a_time.fit(X, Y, epochs=1, batch_size=5, learning_rate=0.2, loss=loss,
                               shuffle=False, validation_data=[Xv.tolist(), Yv])
        assert_close(h1.val_loss, [_direct_loss(one_at_a_time, Xv, Yv, loss)], rtol)
        assert_close(h1.val_loss, [hist.val_loss[e]], rtol)
        assert_close(h1.loss, [hist.loss[e]], rtol)
    for a, b in zip(net.weights + net.biases, one_at_a_time.weights + one_at_a_time.biases):
        assert_close(a, b, RTOL[np.dtype(dtype)])


def test_validation_loss_excludes_l2_penalty_and_is_empty_without_data():
    X, Y = teacher_problem(m=30)
    Xv, Yv = teacher_problem(m=10, seed=4)
    net = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    hist = net.fit(X, Y, epochs=2, batch_size=30, learning_rate=0.1, l2=5.0, shuffle=False,
                   validation_data=(Xv, Yv))
    assert hist.val_loss[-1] == pytest.approx(_direct_loss(net, Xv, Yv, "mse"), rel=1e-10)
    hist = net.fit(X, Y, epochs=2, batch_size=30, learning_rate=0.1)
    assert hist.val_loss == []


def test_fit_trains_in_place_and_history_fields():
    X, Y = teacher_problem(m=30)
    net = make_net((4, 5, 2), ["tanh", "identity"], seed=0)
    arrays = net.weights + net.biases
    before = params(net)
    hist = net.fit(X, Y, epochs=3, batch_size=8, learning_rate=0.1)
    assert all(a is b for a, b in zip(arrays, net.weights + net.biases))
    assert all(not np.array_equal(a, b) for a, b in zip(arrays, before))
    assert hist.epochs == 3 and len(hist.time) == 3
    assert all(isinstance(t, float) and t >= 0 for t in hist.time)
    assert hist.stopped_early is False and hist.best_epoch is None


# --------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------

def _bad_cases():
    m = 10
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, 3))
    Y = rng.uniform(0, 1, (m, 2))
    Xnan = X.copy()
    Xnan[3, 1] = np.nan
    Yinf = Y.copy()
    Yinf[0, 0] = np.inf
    sw_nan = np.ones(m)
    sw_nan[4] = np.nan
    sw_neg = np.ones(m)
    sw_neg[2] = -0.5
    cases = [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -1}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"epochs": "3"}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -2}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"learning_rate": "0.1"}, "learning_rate"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"optimizer": None}, "optimizer"),
        ({"loss": "hinge"}, "loss"),
        ({"loss": "cross_entropy"}, "loss"),  # sigmoid output, not softmax
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"beta1": -0.1}, "beta1"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": 1.5}, "beta2"),
        ({"epsilon": 0}, "epsilon"),
        ({"l2": -1}, "l2"),
        ({"l2": float("nan")}, "l2"),
        ({"sample_weight": np.ones(m + 1)}, "sample_weight"),
        ({"sample_weight": np.ones((m, 1))}, "sample_weight"),
        ({"sample_weight": sw_neg}, "sample_weight"),
        ({"sample_weight": sw_nan}, "sample_weight"),
        ({"X": X[:-1]}, "Y"),
        ({"X": X[:, :2]}, "X"),
        ({"Y": Y[:, :1]}, "Y"),
        ({"X": X[0]}, "X"),
        ({"X": Xnan}, "X"),
        ({"Y": Yinf}, "Y"),
        ({"validation_data": (X,)}, "validation_data"),
        ({"validation_data": (X, Y, Y)}, "validation_data"),
        ({"validation_data": X}, "validation_data"),
        ({"validation_data": 5}, "validation_data"),
        ({"validation_data": (X[:, :2], Y)}, "validation_data"),
        ({"validation_data": (X, Y[:5])}, "validation_data"),
        ({"validation_data": (Xnan, Y)}, "validation_data"),
        ({"callback": 5}, "callback"),
        ({"callback": "print"}, "callback"),
        ({"patience": 0}, "patience"),
        ({"tol": -1}, "tol"),
    ]
    return X, Y, cases


_X, _Y, _BAD = _bad_cases()


@pytest.mark.parametrize("override,name", _BAD,
                         ids=[f"{n}-{i}" for i, (_, n) in enumerate(_BAD)])
def test_bad_arguments_raise_clear_errors(override, name):
    net = make_net((3, 4, 2), ["tanh", "sigmoid"], seed=0)
    before = params(net)
    kw = dict(X=_X, Y=_Y, epochs=2, batch_size=4, learning_rate=0.1)
    kw.update(override)
    X, Y = kw.pop("X"), kw.pop("Y")
    with pytest.raises((TypeError, ValueError)) as info:
        net.fit(X, Y, **kw)
    assert not isinstance(info.value, bpfast.DivergenceError)
    assert re.search(rf"\b{re.escape(name)}", str(info.value)), str(info.value)
    assert_params_equal(net, before)  # nothing trained


@pytest.mark.parametrize("loss,acts", [
    ("cross_entropy", ["tanh", "sigmoid"]),
    ("cross_entropy", ["tanh", "identity"]),
    ("binary_cross_entropy", ["tanh", "softmax"]),
    ("binary_cross_entropy", ["tanh", "identity"]),
])
def test_loss_needs_matching_output_activation(loss, acts):
    net = make_net((3, 4, 2), acts, seed=0)
    with pytest.raises(ValueError, match="loss") as info:
        net.fit(_X, _Y, epochs=1, batch_size=4, learning_rate=0.1, loss=loss)
    assert OUTPUT_FOR[loss] in str(info.value)


def test_mse_accepts_any_output_including_softmax():
    for out in ("softmax", "sigmoid", "relu", "identity"):
        net = make_net((3, 4, 2), ["tanh", out], seed=0)
        net.fit(_X, _Y, epochs=1, batch_size=4, learning_rate=0.1, loss="mse")


# --------------------------------------------------------------------------------------
# The caller's data is never modified
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_fit_does_not_modify_inputs(dtype, shuffle):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((13, 3)).astype(dtype)
    Y = rng.uniform(0, 1, (13, 2)).astype(dtype)
    sw = rng.uniform(0.5, 1.5, 13).astype(dtype)
    Xv = rng.standard_normal((4, 3)).astype(dtype)
    Yv = rng.uniform(0, 1, (4, 2)).astype(dtype)
    copies = [a.copy() for a in (X, Y, sw, Xv, Yv)]
    for opt in OPTIMIZERS:
        net = make_net((3, 4, 2), ["relu", "sigmoid"], dtype, seed=0)
        net.fit(X, Y, epochs=2, batch_size=4, learning_rate=0.1, optimizer=opt,
                loss="binary_cross_entropy", l2=0.1, sample_weight=sw, shuffle=shuffle,
                seed=0, validation_data=(Xv, Yv))
    for a, c in zip((X, Y, sw, Xv, Yv), copies):
        assert a.dtype == c.dtype and a.tobytes() == c.tobytes()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_repeated_fits_equal_fits_with_new_trainers(optimizer, monkeypatch):
    """A network's next fit reuses the trainer its last fit kept (reset: optimizer state
    zero), and trains exactly as with a new one, also when the batch size, the optimizer
    or the parameter arrays change between fits."""
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((37, 5)), rng.uniform(0, 1, (37, 3))
    runs = [dict(batch_size=8), dict(batch_size=8), dict(batch_size=5),
            dict(batch_size=5, optimizer="sgd" if optimizer != "sgd" else "adam"),
            dict(batch_size=5)]

    def train(keep):
        monkeypatch.setattr(training, "TRAINER_CACHE_BYTES", (1 << 20) if keep else -1)
        net = make_net((5, 6, 3), ["tanh", "sigmoid"], seed=1)
        built, real = [], bpfast._kernels.Trainer

        class Counting(real):
            def __init__(self, *args):
                built.append(1)
                super().__init__(*args)

        monkeypatch.setattr(bpfast._kernels, "Trainer", Counting)
        for k, run in enumerate(runs):
            if k == 4:  # new parameter arrays: the kept trainer no longer serves
                net.weights[0] = net.weights[0].copy()
            net.fit(X, Y, epochs=2, learning_rate=LR[optimizer],
                    **{"optimizer": optimizer, "shuffle": False, **run})
        monkeypatch.setattr(bpfast._kernels, "Trainer", real)
        return params(net), len(built)

    kept, built_kept = train(True)
    fresh, built_fresh = train(False)
    assert built_fresh == len(runs)
    assert built_kept == 4  # the second fit reused the first one's trainer
    for a, b in zip(kept, fresh):
        np.testing.assert_array_equal(a, b)


def test_repeated_fits_in_threads_equal_fits_in_turn():
    """Networks fitted again and again in several threads at once (each keeping its
    trainer between fits) end exactly as fitted one after the other."""
    import threading

    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((40, 6)), rng.uniform(0, 1, (40, 3))

    def train(net, optimizer):
        for _ in range(15):
            net.fit(X, Y, epochs=1, batch_size=8, learning_rate=LR[optimizer],
                    optimizer=optimizer, shuffle=False)

    optimizers = [OPTIMIZERS[k % len(OPTIMIZERS)] for k in range(6)]
    alone = [make_net((6, 7, 3), ["tanh", "sigmoid"], seed=k) for k in range(6)]
    for net, opt in zip(alone, optimizers):
        train(net, opt)
    together = [make_net((6, 7, 3), ["tanh", "sigmoid"], seed=k) for k in range(6)]
    threads = [threading.Thread(target=train, args=(net, opt))
               for net, opt in zip(together, optimizers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(together, alone):
        assert_params_equal(a, params(b))


def test_repeated_fit_after_the_parameters_data_moved():
    """A parameter array whose data moved between fits (resize without the reference
    check keeps the object and its shape) gets a new trainer, which trains it like any."""
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((10, 3)), rng.uniform(0, 1, (10, 2))
    net = make_net((3, 4, 2), ["tanh", "sigmoid"])
    net.fit(X, Y, epochs=1, batch_size=4, learning_rate=0.1, shuffle=False)
    W0 = net.weights[0]
    values = W0.copy()
    W0.resize((64, 64), refcheck=False)
    W0.resize((4, 3), refcheck=False)
    W0[...] = values
    twin = make_net((3, 4, 2), ["tanh", "sigmoid"])
    for p, q in zip(twin.weights + twin.biases, params(net)):
        p[...] = q
    net.fit(X, Y, epochs=2, batch_size=4, learning_rate=0.1, shuffle=False)
    twin.fit(X, Y, epochs=2, batch_size=4, learning_rate=0.1, shuffle=False)
    assert_params_equal(net, params(twin))


def test_repeated_fit_checks_the_parameters_again():
    """A kept trainer is not used once the parameters are read-only: the fit raises as
    a first one would, and leaves them unchanged."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((10, 3)), rng.uniform(0, 1, (10, 2))
    net = make_net((3, 4, 2), ["tanh", "sigmoid"])
    net.fit(X, Y, epochs=1, batch_size=4, learning_rate=0.1)
    net.weights[1].flags.writeable = False
    before = params(net)
    with pytest.raises(ValueError, match="writable"):
        net.fit(X, Y, epochs=1, batch_size=4, learning_rate=0.1)
    assert_params_equal(net, before)


def test_fit_accepts_read_only_and_non_contiguous_inputs():
    rng = np.random.default_rng(0)
    X = np.asfortranarray(rng.standard_normal((12, 3)))
    Y = rng.uniform(-1, 1, (12, 4))[:, ::2]
    sw = rng.uniform(0.5, 1.5, 24)[::2]
    for a in (X, Y, sw):
        a.flags.writeable = False
    net = make_net((3, 4, 2), ["tanh", "identity"], seed=0)
    ref = make_net((3, 4, 2), ["tanh", "identity"], seed=0)
    net.fit(X, Y, epochs=2, batch_size=5, learning_rate=0.1, sample_weight=sw,
            shuffle=False)
    ref.fit(np.ascontiguousarray(X), np.ascontiguousarray(Y), epochs=2, batch_size=5,
            learning_rate=0.1, sample_weight=np.ascontiguousarray(sw), shuffle=False)
    assert_params_equal(net, params(ref))


# --------------------------------------------------------------------------------------
# Trainer.gradient: the compiled full-batch loss and gradient (for L-BFGS and friends)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("l2", [0.0, 0.4])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("loss", LOSSES)
def test_trainer_gradient_equals_reference(loss, dtype, weighted, l2):
    from bpfast._core import kernels as _kernels
    from bpfast.activations import activation_codes
    from bpfast.training import LOSSES as LOSS_CODES

    output = OUTPUT_FOR.get(loss, "sigmoid")
    names = ("tanh", output)
    sizes = (5, 7, 3)
    rng = np.random.default_rng(LOSSES.index(loss))
    m = 23
    X = rng.standard_normal((m, sizes[0])).astype(dtype)
    Y = make_targets(rng, m, sizes[-1], loss, output).astype(dtype)
    sw = rng.uniform(0.2, 2.0, m).astype(dtype) if weighted else None
    net = make_net(sizes, list(names), dtype, seed=3)
    before = [p.copy() for p in net.weights + net.biases]
    trainer = _kernels.Trainer(net.weights, net.biases, activation_codes(names), sizes[0], m,
                               LOSS_CODES[loss][0], training.OPTIMIZERS["sgd"])
    E = trainer.gradient(X, Y, sw, l2)
    dW, db = trainer.gradients
    E_ref, dW_ref, db_ref = reference.loss_gradient(
        net.weights, net.biases, names, X, Y, loss, sw, l2)
    rtol = RTOL[np.dtype(dtype)]
    assert E == pytest.approx(E_ref, rel=rtol)
    for g, r in zip(dW + db, dW_ref + db_ref):
        assert g.dtype == np.dtype(dtype)
        assert_close(g, r, rtol)
    assert_params_equal(net, before, "gradient must not update")
    with pytest.raises(ValueError, match="X"):
        trainer.gradient(np.zeros((m + 1, sizes[0]), dtype), np.zeros((m + 1, 3), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("m", [1, 3, 130, 3001])
def test_cross_entropy_loss_of_saturated_outputs(loss, m, dtype):
    """The unweighted cross-entropy losses multiply the one-hot factors p (and 1 - p)
    in running products, renormalised as they go: thousands of rows whose outputs are
    saturated (p clipped at eps, factors of 2e-16) give the reference's loss, also with
    soft labels among them and value counts that are not whole vectors."""
    from bpfast._core import kernels as _kernels
    from bpfast.activations import activation_codes
    from bpfast.training import LOSSES as LOSS_CODES

    output = OUTPUT_FOR[loss]
    names = ("tanh", output)
    sizes = (4, 6, 7 if loss == "cross_entropy" else 3)
    rng = np.random.default_rng(m)
    X = (30 * rng.standard_normal((m, sizes[0]))).astype(dtype)
    Y = make_targets(rng, m, sizes[-1], loss, output).astype(dtype)
    net = make_net(sizes, list(names), dtype, seed=4)
    net.weights[1][...] *= 40  # saturated outputs: most factors clipped at eps
    trainer = _kernels.Trainer(net.weights, net.biases, activation_codes(names), sizes[0],
                               m, LOSS_CODES[loss][0], training.OPTIMIZERS["sgd"])
    E = trainer.gradient(X, Y)
    E_ref, _, _ = reference.loss_gradient(net.weights, net.biases, names, X, Y, loss)
    assert np.isfinite(E) and E > 1
    assert E == pytest.approx(E_ref, rel=RTOL[np.dtype(dtype)])


@pytest.mark.parametrize("seed", range(12))
def test_sgd_guard_never_leaves_non_finite_weights(seed):
    """Random float32 networks, input scales and learning rates near overflow: whether fit
    ends normally or with DivergenceError, every parameter is finite, and after an error
    the network equals a fit stopped just before the failing batch."""
    rng = np.random.default_rng(seed)
    acts_pool = ["relu", "identity", "leaky_relu", "tanh", "sigmoid", "softplus", "exp"]
    depth = int(rng.integers(1, 4))
    sizes = [int(rng.integers(2, 9)) for _ in range(depth + 1)]
    acts = [str(rng.choice(acts_pool)) for _ in range(depth)]
    X = rng.standard_normal((24, sizes[0])) * 10.0 ** rng.integers(0, 12)
    Y = rng.standard_normal((24, sizes[-1])) * 10.0 ** rng.integers(0, 6)
    lr = float(10.0 ** rng.integers(-2, 12))
    kw = dict(batch_size=int(rng.integers(1, 9)), learning_rate=lr, shuffle=False)
    net = bpfast.Network(sizes, activations=acts, dtype=np.float32, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            net.fit(X, Y, epochs=3, **kw)
        except bpfast.DivergenceError as e:
            match = re.search(r"epoch (\d+), batch (\d+)", str(e))
            epoch, batch = int(match.group(1)), int(match.group(2))
            replay = bpfast.Network(sizes, activations=acts, dtype=np.float32, seed=seed)
            if epoch > 1:
                replay.fit(X, Y, epochs=epoch - 1, **kw)
            rows = (batch - 1) * kw["batch_size"]
            if rows:
                replay.fit(X[:rows], Y[:rows], epochs=1, **kw)
            assert_params_equal(net, params(replay))
    assert _finite(net), (sizes, acts, lr)
