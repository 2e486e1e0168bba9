"""Issue 16, items 1 and 7: no silent NaN from a fit, and batches of zero weight.

A forward product that overflows reaches the outputs as inf or NaN (a softmax row of
inf gives NaN), which the cross-entropies' clipped logarithms used to hide from the
loss. The promise: a batch whose outputs, loss or update are not finite raises
DivergenceError, and the network keeps the parameters from just before that batch.
"""
import numpy as np
import pytest

import bpfast
from bpfast import reference
from bpfast.training import DivergenceError

DTYPES = [np.float32, np.float64]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam"]
#: every loss with the output activation it needs
PAIRS = [("mse", "identity"), ("cross_entropy", "softmax"),
         ("binary_cross_entropy", "sigmoid"), ("poisson", "exp")]
N0 = 64  # inputs: the overflowing row holds max/16 in each, so X @ W.T is 4 max = inf


def _network(dtype, activations):
    """A network whose first layer's weights are all 1 (row 1: 0.5), the others
    [[1, 1, ...], [1, 0.5, ...]]: a row of max/16 overflows the first product."""
    sizes = [N0] + [3] * (len(activations) - 1) + [2]
    net = bpfast.Network(sizes, activations=activations, dtype=dtype, seed=0)
    for W in net.weights:
        W[...] = 1
        W[1] = 0.5
    return net


def _data(dtype, bad_row=2):
    """Four finite rows, batches of two: the second batch holds the overflowing row."""
    X = np.full((4, N0), 0.1, dtype=dtype)
    X[bad_row] = np.finfo(dtype).max / 16
    Y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=dtype)
    return X, Y


def _params(net):
    return [p.copy() for p in net.weights + net.biases]


def _assert_kept_first_batch(dtype, activations, fit_args, weights=None):
    """fit over both batches raises DivergenceError at the second, and leaves exactly
    the parameters of a fit over the first batch alone."""
    X, Y = _data(dtype)
    before = _network(dtype, activations)
    sw = None if weights is None else weights[:2]
    before.fit(X[:2], Y[:2], epochs=1, batch_size=2, shuffle=False, sample_weight=sw,
               **fit_args)
    net = _network(dtype, activations)
    with pytest.raises(DivergenceError, match="epoch 1, batch 2"):
        net.fit(X, Y, epochs=1, batch_size=2, shuffle=False, sample_weight=weights,
                **fit_args)
    for got, want in zip(_params(net), _params(before)):
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_softmax_of_an_overflowed_product_raises(dtype, optimizer, weighted, loss):
    """The issue's case: softmax of inf is NaN while the clipped cross-entropy stays
    finite; fit returned with NaN weights."""
    weights = np.array([1.0, 2.0, 1.0, 0.5]) if weighted else None
    _assert_kept_first_batch(dtype, ["softmax"],
                             dict(optimizer=optimizer, loss=loss, learning_rate=0.1),
                             weights)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss,output", PAIRS)
def test_overflowing_first_layer_every_loss(dtype, optimizer, loss, output):
    """The first layer's product overflows into a relu layer (inf), for every loss with
    its output and every optimizer."""
    _assert_kept_first_batch(dtype, ["relu", output],
                             dict(optimizer=optimizer, loss=loss, learning_rate=0.1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss,output", PAIRS)
@pytest.mark.parametrize("hidden", [["tanh", "relu"], ["sigmoid"], ["relu", "tanh"]])
def test_never_a_parameter_that_is_not_finite(dtype, optimizer, loss, output, hidden):
    """Whatever the overflow gives (a saturated sigmoid is finite, inf - inf in a sum is
    NaN), fit either returns with finite parameters or raises with the parameters from
    before the failing batch."""
    X, Y = _data(dtype)
    net = _network(dtype, hidden + [output])
    net.weights[1][:, 1] = -2  # mixed signs above the first layer: inf - inf is NaN
    before = _network(dtype, hidden + [output])
    before.weights[1][:, 1] = -2
    args = dict(optimizer=optimizer, loss=loss, learning_rate=0.1, batch_size=2,
                shuffle=False)
    before.fit(X[:2], Y[:2], epochs=1, **args)
    try:
        net.fit(X, Y, epochs=1, **args)
    except DivergenceError:
        for got, want in zip(_params(net), _params(before)):
            np.testing.assert_array_equal(got, want)
    for p in _params(net):
        assert np.isfinite(p).all()


def test_hidden_nan_under_a_relu_is_caught():
    """NaN in a tanh layer (inf - inf in its product) that the relu above maps to 0:
    the outputs stay finite, but the weight gradient above it is NaN."""
    for dtype in DTYPES:
        big = np.finfo(dtype).max
        net = bpfast.Network([2, 2, 2, 1], activations=["identity", "tanh", "relu"],
                             dtype=dtype, seed=0)
        net.weights[0][...] = [[1, 0], [0, 1]]
        net.weights[1][...] = [[2, -2], [1, 1]]  # 2 (0.75 max) - 2 (0.75 max): inf - inf
        net.weights[2][...] = [[1, 1]]
        net.biases[2][...] = 1
        X = np.array([[0.1, 0.2], [0.75 * big, 0.75 * big]], dtype=dtype)
        Y = np.ones((2, 1), dtype=dtype)
        start = _params(net)
        for optimizer in OPTIMIZERS:
            try:
                net.fit(X[1:], Y[1:], epochs=1, batch_size=1, optimizer=optimizer,
                        learning_rate=0.1)
            except DivergenceError:
                for got, want in zip(_params(net), start):
                    np.testing.assert_array_equal(got, want)
            for p in _params(net):
                assert np.isfinite(p).all(), optimizer


def test_message_names_the_outputs():
    X, Y = _data(np.float64)
    net = _network(np.float64, ["softmax"])
    with pytest.raises(DivergenceError, match="outputs or its loss became NaN"):
        net.fit(X, Y, epochs=1, batch_size=2, shuffle=False, loss="cross_entropy")


def test_distributed_local_sgd_keeps_the_rounds_parameters():
    """bpfast.distributed's local SGD runs the same compiled epoch: the softmax NaN
    stops it, and the network keeps the parameters from before the round."""
    da = pytest.importorskip("dask.array")
    from bpfast import distributed

    X, Y = _data(np.float64)
    net = _network(np.float64, ["softmax"])
    start = _params(net)
    with pytest.raises(DivergenceError, match="NaN or infinite"):
        distributed.fit(net, da.from_array(X, chunks=(4, -1)),
                        da.from_array(Y, chunks=(4, -1)), None, method="local_sgd",
                        rounds=1, local_epochs=1, batch_size=2, learning_rate=0.1,
                        shuffle=False, loss="cross_entropy")
    for got, want in zip(_params(net), start):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# item 7: batches whose sample weights are all zero
# ---------------------------------------------------------------------------

def _regression(dtype, n=40):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, 5)).astype(dtype)
    Y = rng.uniform(size=(n, 2)).astype(dtype)
    w = rng.uniform(0.5, 2.0, size=n).astype(dtype)
    return X, Y, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss,output", [("mse", "sigmoid"), ("poisson", "exp")])
def test_zero_weight_batch_is_skipped(dtype, optimizer, loss, output):
    """A batch of zero total weight is no step at all: the fit equals one over the data
    without those rows (the reference's and the kernel's), Adam's t included."""
    X, Y, w = _regression(dtype)
    w[8:16] = 0  # the second batch of 8
    keep = np.r_[0:8, 16:40]
    args = dict(epochs=3, batch_size=8, learning_rate=0.05, optimizer=optimizer,
                loss=loss, l2=0.01)
    net = bpfast.Network([5, 4, 2], activations=["tanh", output], dtype=dtype, seed=1)
    start = _params(net)
    history = net.fit(X, Y, shuffle=False, sample_weight=w, **args)

    without = bpfast.Network([5, 4, 2], activations=["tanh", output], dtype=dtype, seed=1)
    history_without = without.fit(X[keep], Y[keep], shuffle=False, sample_weight=w[keep],
                                  **args)
    for got, want in zip(_params(net), _params(without)):
        np.testing.assert_array_equal(got, want)
    # the skipped batch adds 0 to the epoch's loss sum, its rows still counted
    np.testing.assert_allclose(np.array(history.loss) * 40,
                               np.array(history_without.loss) * 32, rtol=1e-12)

    Wr, br, _ = reference.fit(start[:2], start[2:], net.activations, X[keep], Y[keep],
                              sample_weight=w[keep], **args)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for got, want in zip(_params(net), Wr + br):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_weight_batch_shuffled(dtype):
    """With shuffling, a batch can fall on rows of zero weight only: no error, finite."""
    X, Y, w = _regression(dtype, n=64)
    w[::2] = 0
    net = bpfast.Network([5, 4, 2], activations=["tanh", "sigmoid"], dtype=dtype, seed=1)
    history = net.fit(X, Y, epochs=30, batch_size=1, learning_rate=0.05, seed=0,
                      sample_weight=w, optimizer="adam")
    assert np.isfinite(history.loss).all()
    assert all(np.isfinite(p).all() for p in _params(net))


@pytest.mark.parametrize("weights", [np.zeros(40), [0.0] * 40, np.zeros(40, np.float32)])
def test_all_zero_weights_refused(weights):
    X, Y, _ = _regression(np.float64)
    net = bpfast.Network([5, 4, 2], seed=1)
    start = _params(net)
    with pytest.raises(ValueError, match="sample_weight: expected at least one positive"):
        net.fit(X, Y, epochs=1, sample_weight=weights)
    for got, want in zip(_params(net), start):
        np.testing.assert_array_equal(got, want)
