"""The compiled engine against the pure-NumPy reference, over many random architectures."""
import numpy as np
import pytest

import bpfast
from bpfast import reference

from conftest import (ACTIVATIONS, DTYPES, assert_close, e_rtol_for, make_data,
                      make_params)


def _log_uniform_int(rng, lo, hi):
    return int(np.clip(np.round(np.exp(rng.uniform(np.log(lo), np.log(hi)))), lo, hi))


def _random_configs(n=84, seed=20240611):
    """Deterministic random configurations ``(sizes, activations, m, dtype)``.

    Even indices use one activation name for the whole network, cycling through every
    activation and both dtypes; odd indices use a random per-layer list.
    """
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n):
        L = int(rng.integers(1, 6))
        sizes = tuple(_log_uniform_int(rng, 1, 300) for _ in range(L + 1))
        m = _log_uniform_int(rng, 1, 1000)
        if i % 2 == 0:
            k = i // 2
            acts = ACTIVATIONS[k % len(ACTIVATIONS)]
            dtype = DTYPES[(k // len(ACTIVATIONS)) % 2]
        else:
            acts = [ACTIVATIONS[j] for j in rng.integers(0, len(ACTIVATIONS), L)]
            dtype = DTYPES[(i // 2) % 2]
        configs.append((sizes, acts, m, dtype))
    return configs


def _edge_configs():
    configs = []
    for dtype in DTYPES:
        configs += [
            ((1, 1, 1, 1), "tanh", 5, dtype),                      # width 1 everywhere
            ((1, 1, 1, 1, 1, 1), ["sigmoid", "relu", "silu", "softplus", "identity"], 3, dtype),
            ((1, 1), "identity", 1, dtype),                        # smallest network
            ((7, 5, 3), "sigmoid", 1, dtype),                      # m = 1
            ((9, 4), "softplus", 13, dtype),                       # single layer
            ((9, 4), ["leaky_relu"], 1, dtype),                    # single layer, m = 1
            ((20, 300, 10), "relu", 50, dtype),                    # a 300-wide layer
            ((300, 300, 300), ["tanh", "silu"], 20, dtype),        # 300 in and out
            ((10, 32, 8, 2), "silu", 1000, dtype),                 # m = 1000
            ((50, 300, 100, 1), ["relu", "tanh", "identity"], 1000, dtype),
            ((3, 1, 4), "leaky_relu", 17, dtype),                  # width-1 bottleneck
        ]
    return configs


CONFIGS = _random_configs() + _edge_configs()


def _config_id(config):
    sizes, acts, m, dtype = config
    a = acts if isinstance(acts, str) else "+".join(x[:4] for x in acts)
    return f"{'-'.join(map(str, sizes))}_{a}_m{m}_{np.dtype(dtype).name}"


def test_configs_cover_every_activation_and_dtype():
    seen = set()
    for sizes, acts, m, dtype in CONFIGS:
        names = [acts] if isinstance(acts, str) else acts
        seen |= {(n, np.dtype(dtype)) for n in names}
    assert seen == {(a, np.dtype(d)) for a in ACTIVATIONS for d in DTYPES}
    assert min(len(c[0]) - 1 for c in CONFIGS) == 1
    assert max(len(c[0]) - 1 for c in CONFIGS) == 5
    assert max(max(c[0]) for c in CONFIGS) == 300
    assert {1, 1000} <= {c[2] for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_compiled_matches_reference(config):
    sizes, acts, m, dtype = config
    seed = sum(map(ord, _config_id(config)))  # per config, stable across runs
    weights, biases = make_params(sizes, dtype=dtype, seed=seed)
    X, Y = make_data(sizes, m, dtype=dtype, seed=seed + 1)
    dt = np.dtype(dtype)

    # forward
    A = bpfast.forward(weights, biases, acts, X)
    A_ref = reference.forward(weights, biases, acts, X)
    assert A.shape == (m, sizes[-1])
    assert A.dtype == dt
    assert A_ref.dtype == dt
    assert_close(A, A_ref, dt, err_msg="forward")

    # backprop
    E, dW, db = bpfast.backprop(weights, biases, acts, X, Y)
    E_ref, dW_ref, db_ref = reference.backprop(weights, biases, acts, X, Y)
    assert type(E) is float
    assert type(E_ref) is float
    np.testing.assert_allclose(E, E_ref, rtol=e_rtol_for(dt))
    assert isinstance(dW, list) and isinstance(db, list)
    assert len(dW) == len(weights) and len(db) == len(biases)
    for l in range(len(weights)):
        assert dW[l].shape == weights[l].shape
        assert db[l].shape == biases[l].shape
        assert dW[l].dtype == dt
        assert db[l].dtype == dt
        assert_close(dW[l], dW_ref[l], dt, err_msg=f"dW[{l}]")
        assert_close(db[l], db_ref[l], dt, err_msg=f"db[{l}]")

    # loss: both sides agree with each other and with backprop's E
    Lc = bpfast.loss(weights, biases, acts, X, Y)
    Lr = reference.loss(weights, biases, acts, X, Y)
    assert type(Lc) is float and type(Lr) is float
    np.testing.assert_allclose(Lc, Lr, rtol=e_rtol_for(dt))
    np.testing.assert_allclose(Lc, E, rtol=e_rtol_for(dt))
    np.testing.assert_allclose(Lr, E_ref, rtol=e_rtol_for(dt))


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_definition(dtype):
    """E = 1/(2m) sum (A^L - Y)^2, checked directly in float64."""
    sizes = (5, 8, 3)
    weights, biases = make_params(sizes, dtype=dtype, seed=11)
    X, Y = make_data(sizes, 40, dtype=dtype, seed=12)
    A = bpfast.forward(weights, biases, "tanh", X).astype(np.float64)
    want = float(np.sum((A - Y.astype(np.float64)) ** 2) / (2 * 40))
    E, _, _ = bpfast.backprop(weights, biases, "tanh", X, Y)
    np.testing.assert_allclose(E, want, rtol=e_rtol_for(dtype))
    np.testing.assert_allclose(bpfast.loss(weights, biases, "tanh", X, Y), want,
                               rtol=e_rtol_for(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_formula_by_hand(dtype):
    """Z = X W^T + b, A = g(Z), layer by layer, written out in NumPy here."""
    sizes = (6, 5, 4)
    weights, biases = make_params(sizes, dtype=dtype, seed=21)
    X, _ = make_data(sizes, 9, dtype=dtype, seed=22)
    a = X.astype(np.float64)
    a = np.tanh(a @ weights[0].T.astype(np.float64) + biases[0])
    a = np.maximum(a @ weights[1].T.astype(np.float64) + biases[1], 0)
    got = bpfast.forward(weights, biases, ["tanh", "relu"], X)
    assert_close(got, a, dtype)


def test_repeated_calls_identical():
    sizes = (8, 16, 4)
    weights, biases = make_params(sizes, seed=5)
    X, Y = make_data(sizes, 33, seed=6)
    first = bpfast.backprop(weights, biases, "silu", X, Y)
    for _ in range(3):
        again = bpfast.backprop(weights, biases, "silu", X, Y)
        assert again[0] == first[0]
        for a, b in zip(first[1] + first[2], again[1] + again[2]):
            np.testing.assert_array_equal(a, b)
