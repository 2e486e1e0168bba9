"""Issue 16, item 6: masked arrays are refused, not read past their mask.

The kernels read an array's data and never a mask, so the values under the mask (NaN
here) would be used; every entry point that takes data refuses a masked array with a
TypeError naming the argument.
"""
import numpy as np
import pytest

import bpfast
from bpfast.gradcheck import check_gradient

MASKED = "expected a plain array, got a masked array"


def _masked(a):
    """``a`` with a NaN under a mask: nothing visible is wrong."""
    a = np.array(a, dtype=np.float64)
    a.flat[1] = np.nan
    return np.ma.masked_invalid(a)


@pytest.fixture
def net():
    return bpfast.Network([3, 4, 2], dtype=np.float64, seed=0)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 3)), rng.uniform(size=(5, 2))


def _calls(net):
    """(argument name, call with the masked array in that argument)."""
    X, Y = _data()
    W, b, act = net.weights, net.biases, net.activations
    mX, mY = _masked(X), _masked(Y)
    return [
        ("X", lambda: net.forward(mX)),
        ("X", lambda: bpfast.forward(W, b, act, mX)),
        ("X", lambda: bpfast.loss(W, b, act, mX, Y)),
        ("Y", lambda: bpfast.loss(W, b, act, X, mY)),
        ("X", lambda: bpfast.backprop(W, b, act, mX, Y)),
        ("Y", lambda: bpfast.backprop(W, b, act, X, mY)),
        ("X", lambda: net.gradient(mX, Y)),
        ("weights[0]", lambda: bpfast.forward([_masked(W[0])] + W[1:], b, act, X)),
        ("X", lambda: check_gradient(W, b, act, mX, Y)),
        ("Y", lambda: check_gradient(W, b, act, X, mY)),
        ("X", lambda: net.fit(mX, Y, epochs=1)),
        ("Y", lambda: net.fit(X, mY, epochs=1)),
        ("sample_weight", lambda: net.fit(X, Y, epochs=1, sample_weight=_masked(np.ones(5)))),
        ("validation_data[0]", lambda: net.fit(X, Y, epochs=1, validation_data=(mX, Y))),
        ("validation_data[1]", lambda: net.fit(X, Y, epochs=1, validation_data=(X, mY))),
    ]


@pytest.mark.parametrize("k", range(15))
def test_masked_array_refused(net, k):
    name, call = _calls(net)[k]
    start = [p.copy() for p in net.weights + net.biases]
    with pytest.raises(TypeError, match=rf"^{name.replace('[', '.').replace(']', '.')}: "
                                        rf"{MASKED}"):
        call()
    for got, want in zip(net.weights + net.biases, start):
        np.testing.assert_array_equal(got, want)


def test_masked_array_without_mask_refused_too(net):
    """No mask set is still a masked array: refused the same way, so the behaviour does
    not depend on the data."""
    X, _ = _data()
    with pytest.raises(TypeError, match=f"X: {MASKED}"):
        net.forward(np.ma.MaskedArray(X))


def test_callers_masked_array_untouched(net):
    X, Y = _data()
    mX = _masked(X)
    data, mask = mX.data.copy(), mX.mask.copy()
    with pytest.raises(TypeError):
        net.fit(mX, Y, epochs=1)
    np.testing.assert_array_equal(mX.data, data)
    np.testing.assert_array_equal(mX.mask, mask)


def test_filled_array_accepted(net):
    X, _ = _data()
    np.testing.assert_array_equal(net.forward(_masked(X).filled(0.0)),
                                  net.forward(np.where(np.isnan(_masked(X).data), 0, X)))
