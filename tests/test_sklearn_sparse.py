"""Sparse X in bpfast.sklearn's stochastic solvers: densified a chunk of batches at a time.

The reference is the same estimator on the same X dense (whose path densifies nothing),
and scikit-learn's own estimator on the sparse X.
"""
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.sparse as sp  # noqa: E402
from sklearn import neural_network as skn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from bpfast import sklearn as bps  # noqa: E402
from bpfast.integrations import sklearn as bps_impl  # noqa: E402  (its private chunking)

N, D = 67, 9  # 67 rows: the last batch of 8 is partial


def _sparse_data(kind, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)) * (rng.uniform(size=(N, D)) < 0.3)
    score = X @ rng.normal(size=D) + 0.1 * rng.normal(size=N)
    y = (np.digitize(score, [-0.5, 0.5]) if kind == "classifier" else score)
    return X.astype(dtype), y


def _fitted(module, kind, X, y, **params):
    name = "MLPClassifier" if kind == "classifier" else "MLPRegressor"
    est = getattr(module, name)(hidden_layer_sizes=(6, 4), random_state=0, batch_size=8,
                                max_iter=5, learning_rate_init=0.01, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def _assert_same_parameters(got, want, rtol):
    assert [c.dtype for c in got.coefs_] == [c.dtype for c in want.coefs_]
    for g, w in zip(got.coefs_ + got.intercepts_, want.coefs_ + want.intercepts_):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max())
    np.testing.assert_allclose(got.loss_curve_, want.loss_curve_, rtol=rtol)
    assert got.n_iter_ == want.n_iter_ and got.t_ == want.t_


# chunk budgets: one batch per chunk, three batches (a partial last chunk), all rows
CHUNKS = {"one-batch": 1, "three-batches": 3 * 8 * D, "whole": 2**30}


@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "data-order"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_sparse_equals_dense(kind, solver, dtype, shuffle, chunk, monkeypatch):
    monkeypatch.setattr(bps_impl, "_CHUNK_BYTES", CHUNKS[chunk] * np.dtype(dtype).itemsize)
    X, y = _sparse_data(kind, dtype)
    params = dict(solver=solver, shuffle=shuffle, alpha=0.01)
    dense = _fitted(bps, kind, X, y, **params)
    for fmt in (sp.csr_matrix, sp.csc_array):
        got = _fitted(bps, kind, fmt(X), y, **params)
        # the same batches in the same order: equal but for the rounding of loss sums
        _assert_same_parameters(got, dense, rtol=1e-12 if dtype == np.float64 else 1e-6)
    ref = _fitted(skn, kind, sp.csr_matrix(X), y, **params)
    _assert_same_parameters(got, ref, rtol=1e-8 if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_with_sample_weight_and_early_stopping(dtype, monkeypatch):
    monkeypatch.setattr(bps_impl, "_CHUNK_BYTES", 2 * 8 * D * np.dtype(dtype).itemsize)
    X, y = _sparse_data("classifier", dtype, seed=1)
    w = np.random.default_rng(2).uniform(0.2, 2.0, size=N)
    params = dict(solver="adam", early_stopping=True, validation_fraction=0.2,
                  class_weight="balanced")
    dense = _fitted(bps, "classifier", X, y, **params).fit(X, y, sample_weight=w)
    got = _fitted(bps, "classifier", sp.csr_matrix(X), y, **params).fit(
        sp.csr_matrix(X), y, sample_weight=w)
    _assert_same_parameters(got, dense, rtol=1e-12 if dtype == np.float64 else 1e-6)
    np.testing.assert_allclose(got.validation_scores_, dense.validation_scores_)


def test_sparse_partial_fit_and_buffer_left_clean():
    X, y = _sparse_data("regressor", np.float64)
    dense = bps.MLPRegressor(random_state=0, batch_size=8)
    sparse = bps.MLPRegressor(random_state=0, batch_size=8)
    for _ in range(3):
        dense.partial_fit(X, y)
        sparse.partial_fit(sp.csr_matrix(X), y)
    _assert_same_parameters(sparse, dense, rtol=1e-12)
    rows = bps_impl._SparseRows(sp.csr_matrix(X), np.float64, batch_size=8)
    order = np.random.default_rng(0).permutation(N)
    for _ in range(2):  # the buffer is all zeros again after each chunk
        for index, dense_rows in rows.chunks(order):
            np.testing.assert_array_equal(dense_rows, X[index])
    assert not rows.buffer.any()


def test_sparse_x_is_never_densified_whole(tmp_path):
    """A CSR X whose dense form takes 800 MB trains in a fraction of that (the growth of
    a subprocess's peak RSS during fit)."""
    code = """
import resource, warnings
import numpy as np, scipy.sparse as sp
from bpfast.sklearn import MLPRegressor
rng = np.random.default_rng(0)
n, d = 100, 2_000_000
rows, cols = np.repeat(np.arange(n), 4), rng.integers(0, d, size=4 * n)
X = sp.csr_matrix((rng.normal(size=4 * n).astype(np.float32), (rows, cols)), shape=(n, d))
y = rng.normal(size=n).astype(np.float32)
warnings.simplefilter("ignore")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
MLPRegressor(hidden_layer_sizes=(2,), batch_size=4, max_iter=1, solver="sgd",
             random_state=0).fit(X, y)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    from test_sklearn import _absolute_pythonpath_env

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=_absolute_pythonpath_env())
    growth_mib = int(out.stdout.split()[-1])
    assert growth_mib < 400, f"peak RSS grew {growth_mib} MiB in fit (dense X: 763 MiB)"
