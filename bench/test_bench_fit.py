"""pytest-benchmark: one training epoch of ``Network.fit`` against the NumPy reference trainer.

The ``fit`` contract (``optimizer="sgd", shuffle=False``, the seed's error) on random data:
S1 is per-sample SGD on 64-32-10 sigmoid with 1,797 rows (the issue's 30x floor), S32 the
same with batches of 32. Run with::

    pytest bench/test_bench_fit.py --benchmark-json=bench-fit.json
    python bench/ratios.py bench-fit.json
"""
import numpy as np
import pytest

import bpfast
from bpfast import reference

#: name -> (sizes, activation, rows, batch size)
CASES = {
    "S1": ((64, 32, 10), "sigmoid", 1797, 1),
    "S32": ((64, 32, 10), "sigmoid", 1797, 32),
}


def _data(sizes, rows, dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, sizes[0])).astype(dtype)
    Y = rng.uniform(size=(rows, sizes[-1])).astype(dtype)
    return X, Y


def _bpfast_epoch(net, X, Y, batch):
    net.fit(X, Y, epochs=1, batch_size=batch, learning_rate=0.1, shuffle=False)


def _reference_epoch(net, X, Y, batch):
    reference.fit(net.weights, net.biases, net.activations, X, Y, epochs=1,
                  batch_size=batch, learning_rate=0.1)


IMPLEMENTATIONS = {"bpfast": _bpfast_epoch, "reference": _reference_epoch}


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_fit_epoch(benchmark, case, dtype, impl):
    sizes, activation, rows, batch = CASES[case]
    net = bpfast.Network(sizes, activations=activation, dtype=dtype, seed=0)
    X, Y = _data(sizes, rows, np.dtype(dtype))
    benchmark.group = f"{case} {dtype}"
    rounds = 3 if impl == "reference" and batch == 1 else 10
    benchmark.pedantic(IMPLEMENTATIONS[impl], args=(net, X, Y, batch), rounds=rounds,
                       iterations=1, warmup_rounds=1)
    assert all(np.isfinite(w).all() for w in net.weights)
