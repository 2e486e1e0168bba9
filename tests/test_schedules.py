"""Learning-rate schedules: each gives the promised rate per epoch (history.learning_rate)
and training uses it (equal to one-epoch fits at that rate)."""
import math

import numpy as np
import pytest

import bpfast
from bpfast.schedules import Constant, CosineDecay, InvScaling, StepDecay

DTYPES = (np.float64, np.float32)


def problem(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(48, 3))
    return X, np.tanh(X @ rng.normal(size=(3, 2)))


def net(dtype=np.float64):
    return bpfast.Network([3, 5, 2], activations=["tanh", "identity"], dtype=dtype, seed=0)


def rates(lr_schedule, epochs, learning_rate=0.2):
    X, Y = problem()
    return net().fit(X, Y, epochs=epochs, learning_rate=learning_rate,
                     lr_schedule=lr_schedule).learning_rate


def test_default_and_constant():
    assert rates(None, 4) == [0.2] * 4
    assert rates("constant", 4) == [0.2] * 4
    assert rates(Constant(), 4) == [0.2] * 4


def test_invscaling_per_epoch():
    want = [0.2 / (t + 1) ** 0.5 for t in range(6)]
    np.testing.assert_allclose(rates("invscaling", 6), want, rtol=1e-15)
    want = [0.2 / (t + 1) ** 0.25 for t in range(6)]
    np.testing.assert_allclose(rates(InvScaling(power_t=0.25), 6), want, rtol=1e-15)


def test_step():
    want = [0.2] * 10 + [0.02] * 10 + [0.002] * 3
    np.testing.assert_allclose(rates("step", 23), want, rtol=1e-15)
    want = [0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05]
    np.testing.assert_allclose(rates(StepDecay(step_size=3, gamma=0.5), 7), want, rtol=1e-15)


def test_cosine():
    T = 8
    want = [0.2 * (1 + math.cos(math.pi * t / T)) / 2 for t in range(T)]
    np.testing.assert_allclose(rates("cosine", T), want, rtol=1e-15)
    got = rates(CosineDecay(min_lr=0.01, period=4), 6)
    want = [0.01 + 0.19 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (0, 1, 2, 3, 3, 3)]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert all(r > 0 for r in rates("cosine", 3))


def test_callable():
    assert rates(lambda epoch: 0.1 / (1 + epoch), 3) == [0.1, 0.05, 0.1 / 3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_scheduled_rate_is_the_rate_used(dtype):
    """A scheduled fit equals one-epoch fits at each epoch's rate (plain SGD keeps no
    state between fits; shuffle=False keeps the order)."""
    X, Y = problem(1)
    a, b = net(dtype), net(dtype)
    sched = StepDecay(step_size=2, gamma=0.5)
    h = a.fit(X, Y, epochs=5, learning_rate=0.3, shuffle=False, lr_schedule=sched)
    for t in range(5):
        b.fit(X, Y, epochs=1, learning_rate=0.3 * 0.5 ** (t // 2), shuffle=False)
    for p, q in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_array_equal(p, q)
    assert h.learning_rate == [0.3, 0.3, 0.15, 0.15, 0.075]


def test_bad_schedules():
    X, Y = problem()
    n = net()
    with pytest.raises(ValueError, match="lr_schedule: expected one of constant, invscaling"):
        n.fit(X, Y, lr_schedule="adaptive")
    with pytest.raises(TypeError, match="lr_schedule: expected a name"):
        n.fit(X, Y, lr_schedule=0.1)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "0.1", None):
        with pytest.raises(ValueError, match="lr_schedule: gave the rate .* for epoch 1"):
            n.fit(X, Y, epochs=3, lr_schedule=lambda e, bad=bad: 0.1 if e == 0 else bad)
    with pytest.raises(ValueError, match="power_t"):
        InvScaling(power_t=0)
    with pytest.raises(ValueError, match="step_size"):
        StepDecay(step_size=0)
    with pytest.raises(ValueError, match="gamma"):
        StepDecay(gamma=1.5)
    with pytest.raises(ValueError, match="min_lr"):
        CosineDecay(min_lr=-1)
    with pytest.raises(ValueError, match="period"):
        CosineDecay(period=0)
