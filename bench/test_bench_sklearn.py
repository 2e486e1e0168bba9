"""pytest-benchmark: ``bpfast.sklearn`` against scikit-learn's own MLP estimators.

The same estimator, parameters and data for both implementations, in the same run:

* ``classifier-digits``: MLPClassifier on scikit-learn's bundled 8x8 digits (1,797 rows,
  64 features scaled to [0, 1], 10 classes), hidden_layer_sizes=(64,), solver="sgd",
  batch_size=32, 50 epochs (tol=0 and n_iter_no_change=max_iter, so every epoch runs).
* ``regressor-digits``: MLPRegressor, the same network and solver on the same inputs,
  predicting the digit's value (1 output, squared error).
* ``classifier-digits-adam``: the classifier with solver="adam".

Each fit is a fresh, fully seeded estimator (``random_state=0``), so both implementations
train from the same initial weights through the same shuffles. Run with::

    pytest bench/test_bench_sklearn.py --benchmark-json=bench-sklearn.json
    python bench/ratios.py bench-sklearn.json sklearn
"""
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import neural_network as skn  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from bpfast import sklearn as bps  # noqa: E402

EPOCHS = 50
COMMON = dict(hidden_layer_sizes=(64,), batch_size=32, max_iter=EPOCHS, tol=0.0,
              n_iter_no_change=EPOCHS, random_state=0)

#: name -> (estimator class name, target, parameters)
CASES = {
    "classifier-digits": ("MLPClassifier", "label", dict(solver="sgd")),
    "regressor-digits": ("MLPRegressor", "value",
                         dict(solver="sgd", learning_rate_init=0.0005)),
    "classifier-digits-adam": ("MLPClassifier", "label", dict(solver="adam")),
}
IMPLEMENTATIONS = {"bpfast": bps, "sklearn": skn}


def _digits(target):
    X, y = load_digits(return_X_y=True)
    return X / 16.0, (y if target == "label" else y.astype(np.float64))


def _fit(module, name, params, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return getattr(module, name)(**COMMON, **params).fit(X, y)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_fit(benchmark, case, impl):
    name, target, params = CASES[case]
    X, y = _digits(target)
    benchmark.group = case
    rounds = 5 if impl == "sklearn" else 15
    est = benchmark.pedantic(_fit, args=(IMPLEMENTATIONS[impl], name, params, X, y),
                             rounds=rounds, iterations=1, warmup_rounds=1)
    assert est.n_iter_ == EPOCHS and np.isfinite(est.loss_)
    assert est.score(X, y) > (0.9 if name == "MLPClassifier" else 0.5)
