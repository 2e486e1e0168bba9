"""pytest-benchmark: compiled ``bpfast.backprop`` against ``bpfast.reference.backprop``.

Run with::

    pytest bench/test_bench_backprop.py --benchmark-group-by=param:case

and read the ratios with ``python bench/ratios.py`` after adding
``--benchmark-json=bench-backprop.json``.
"""
import numpy as np
import pytest

import bpfast
from bpfast import reference

#: name -> (sizes, activation, m)
CASES = {
    "small-64-32-10-m32": ((64, 32, 10), "sigmoid", 32),
    "large-784-1024-1024-10-m256": ((784, 1024, 1024, 10), "relu", 256),
}
IMPLEMENTATIONS = {"bpfast": bpfast.backprop, "reference": reference.backprop}


def _problem(sizes, activation, m, dtype):
    net = bpfast.Network(sizes, activations=activation, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(m, sizes[0])).astype(dtype)
    Y = rng.uniform(size=(m, sizes[-1])).astype(dtype)
    return net, X, Y


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_backprop(benchmark, case, dtype, impl):
    sizes, activation, m = CASES[case]
    net, X, Y = _problem(sizes, activation, m, np.dtype(dtype))
    benchmark.group = f"{case} {dtype}"
    E, dW, db = benchmark(IMPLEMENTATIONS[impl], net.weights, net.biases, activation, X, Y)
    assert np.isfinite(E) and dW[0].dtype == np.dtype(dtype)
