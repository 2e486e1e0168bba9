"""bpfast.sklearn's MLPRegressor / MLPClassifier against scikit-learn's own estimators.

The reference is scikit-learn itself: the same parameters, the same random_state (hence
the same initial weights and the same shuffles), and the results are compared attribute
by attribute. Trajectories: coefs_ after k epochs of sgd/adam to ``RTOL`` relative (we
observe ~1e-15), lbfgs to ``LBFGS_RTOL``.
"""
import contextlib
import io
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import joblib  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn import neural_network as skn  # noqa: E402
from sklearn.base import BaseEstimator, clone, is_classifier  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network._multilayer_perceptron import (  # noqa: E402
    BaseMultilayerPerceptron,
)
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from bpfast import sklearn as bps  # noqa: E402

#: float64 trajectory tolerance (relative, with an absolute floor at the array's scale)
RTOL = 1e-8
#: lbfgs: the same gradients to rounding, over tens of line searches
LBFGS_RTOL = 1e-6
#: float32 trajectories (both train in float32)
F32_RTOL = 1e-4

N, D = 67, 4  # 67 rows: the last batch of 16 is partial


def _data(kind, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)).astype(dtype)
    score = X @ np.array([1.0, -2.0, 0.5, 1.5]) + 0.3 * rng.normal(size=N)
    if kind == "regression":
        return X, score.astype(dtype)
    if kind == "multioutput":
        return X, np.c_[score, X[:, 0] * X[:, 1]].astype(dtype)
    if kind == "poisson":
        return X, rng.poisson(np.exp(0.3 * score)).astype(dtype)
    if kind == "binary":
        return X, (score > 0).astype(int)
    if kind == "multiclass":
        return X, np.array(["low", "mid", "high"])[np.digitize(score, [-1.0, 1.0])]
    if kind == "multilabel":
        return X, np.c_[score > 0, X[:, 0] > 0, X[:, 1] + X[:, 2] > 0].astype(int)
    raise ValueError(kind)


def _estimator_name(kind):
    return "MLPClassifier" if kind in ("binary", "multiclass", "multilabel") else "MLPRegressor"


def _run(module, name, action, params):
    """Build ``module.name(**params)``, run ``action`` on it; record warnings, stdout and
    the exception (if any)."""
    est = getattr(module, name)(**params)
    out = io.StringIO()
    error = None
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        try:
            action(est)
        except Exception as exc:  # compared between the two implementations
            error = exc
    # numpy's RuntimeWarnings (overflow...) come per batch from NumPy code only
    caught = [(w.category, str(w.message)) for w in caught
              if not issubclass(w.category, RuntimeWarning)]
    return est, caught, out.getvalue(), error


def _pair(name, action, **params):
    """scikit-learn's and bpfast's estimator after the same ``action``; their warnings,
    printed output and errors must be the same."""
    ref, ref_warnings, ref_out, ref_error = _run(skn, name, action, params)
    got, got_warnings, got_out, got_error = _run(bps, name, action, params)
    assert got_warnings == ref_warnings
    assert got_out == ref_out
    assert type(got_error) is type(ref_error) and str(got_error) == str(ref_error)
    return ref, got


def _fit(X, y, **fit_params):
    return lambda est: est.fit(X, y, **fit_params)


def _close(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = float(np.nanmax(np.abs(want))) if want.size and np.isfinite(want).any() else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def assert_same_fit(got, ref, rtol=RTOL):
    """Every fitted attribute of ``got`` as ``ref``'s: parameters and curves to ``rtol``,
    counters and labels exactly."""
    assert type(got).__name__ == type(ref).__name__
    assert len(got.coefs_) == len(ref.coefs_) == got.n_layers_ - 1
    for g, r in zip(got.coefs_ + got.intercepts_, ref.coefs_ + ref.intercepts_):
        _close(g, r, rtol)
    for attr in ("n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_",
                 "n_features_in_"):
        assert getattr(got, attr) == getattr(ref, attr), attr
    for attr in ("loss_curve_", "validation_scores_"):
        if getattr(ref, attr, None) is None:
            assert getattr(got, attr, None) is None, attr
        else:
            _close(getattr(got, attr), getattr(ref, attr), rtol)
    for attr in ("loss_", "best_loss_", "best_validation_score_"):
        if getattr(ref, attr, None) is None:
            assert getattr(got, attr, None) is None, attr
        else:
            assert type(getattr(got, attr)) is type(getattr(ref, attr)), attr
            _close(getattr(got, attr), getattr(ref, attr), rtol)
    if hasattr(ref, "classes_"):
        np.testing.assert_array_equal(got.classes_, ref.classes_)
    if hasattr(ref, "_optimizer"):
        assert type(got._optimizer) is type(ref._optimizer)
        _close(got._optimizer.learning_rate, ref._optimizer.learning_rate, rtol)


# ---------------------------------------------------------------------------------------
# scikit-learn's estimator checks
# ---------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([bps.MLPClassifier(), bps.MLPRegressor()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_same_api_as_sklearn():
    for name in ("MLPClassifier", "MLPRegressor"):
        ours, theirs = getattr(bps, name), getattr(skn, name)
        assert issubclass(ours, theirs) and issubclass(ours, BaseEstimator)
        params = ours().get_params()
        if name == "MLPClassifier":  # bpfast's one extra parameter, scikit-learn's default
            assert params.pop("class_weight") is None
        assert params == theirs().get_params()
        est = ours(hidden_layer_sizes=(7, 3), solver="sgd", alpha=0.5)
        assert repr(est) == repr(theirs(hidden_layer_sizes=(7, 3), solver="sgd", alpha=0.5))
        twin = clone(est)
        assert type(twin) is ours and twin.get_params() == est.get_params()
        assert est.set_params(momentum=0.5) is est and est.momentum == 0.5
    assert bps.MLPRegressor().loss == "squared_error"


def _absolute_pythonpath_env():
    import os

    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


def test_import_bpfast_does_not_import_sklearn(tmp_path):
    code = "import sys, bpfast; print(any(m.split('.')[0] == 'sklearn' for m in sys.modules))"
    # cwd away from the repository, so that the installed bpfast is the one imported
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=_absolute_pythonpath_env())
    assert out.stdout.strip() == "False"


def test_training_runs_in_the_kernels(monkeypatch):
    """scikit-learn's NumPy back-propagation is never called on the normal paths."""
    def forbidden(*args, **kwargs):
        raise AssertionError("NumPy back-propagation was used")

    monkeypatch.setattr(BaseMultilayerPerceptron, "_backprop", forbidden)
    X, y = _data("multiclass")
    for solver in ("sgd", "adam", "lbfgs"):
        for est in (bps.MLPClassifier(solver=solver, max_iter=3, random_state=0),
                    bps.MLPRegressor(solver=solver, max_iter=3, random_state=0,
                                     early_stopping=solver != "lbfgs")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                est.fit(X, y if is_classifier(est) else X[:, 0])
            assert np.isfinite(est.loss_)


# ---------------------------------------------------------------------------------------
# Trajectories: sgd and adam, epoch by epoch
# ---------------------------------------------------------------------------------------

BASE = dict(hidden_layer_sizes=(5, 3), random_state=0, batch_size=16, max_iter=8,
            learning_rate_init=0.05)

SOLVERS = {
    "nesterov": dict(solver="sgd", momentum=0.9, nesterovs_momentum=True),
    "momentum": dict(solver="sgd", momentum=0.9, nesterovs_momentum=False),
    "plain-sgd": dict(solver="sgd", momentum=0.0),
    "adam": dict(solver="adam", learning_rate_init=0.01),
}

KINDS = ["regression", "poisson", "multioutput", "binary", "multiclass", "multilabel"]


@pytest.mark.parametrize("shuffle", [False, True], ids=["data-order", "shuffled"])
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("kind", KINDS)
def test_trajectory(kind, solver, shuffle):
    X, y = _data(kind)
    params = {**BASE, **SOLVERS[solver], "shuffle": shuffle}
    if kind == "poisson":
        params["loss"] = "poisson"
        params["learning_rate_init"] = 0.01
    ref, got = _pair(_estimator_name(kind), _fit(X, y), **params)
    assert_same_fit(got, ref)
    if kind in ("binary", "multiclass", "multilabel"):
        np.testing.assert_array_equal(got.predict(X), ref.predict(X))
    else:
        _close(got.predict(X), ref.predict(X), RTOL)


OPTIONS = {
    "invscaling": dict(solver="sgd", learning_rate="invscaling", power_t=0.3,
                       learning_rate_init=0.2),
    "adaptive": dict(solver="sgd", learning_rate="adaptive", tol=0.05, n_iter_no_change=1,
                     max_iter=20),
    "stops-early": dict(solver="adam", tol=0.05, n_iter_no_change=2, max_iter=40),
    "alpha": dict(solver="sgd", alpha=0.3),
    "alpha-adam": dict(solver="adam", alpha=0.3, learning_rate_init=0.01),
    "batch-auto": dict(solver="sgd", batch_size="auto"),
    "batch-1": dict(solver="sgd", batch_size=1, max_iter=2, learning_rate_init=0.01),
    "no-hidden": dict(solver="sgd", hidden_layer_sizes=()),
    "identity": dict(solver="sgd", activation="identity", learning_rate_init=0.01),
    "logistic": dict(solver="sgd", activation="logistic"),
    "tanh": dict(solver="adam", activation="tanh"),
    "early-stopping": dict(solver="sgd", early_stopping=True, validation_fraction=0.2,
                           max_iter=15),
    "early-stopping-adaptive": dict(solver="sgd", early_stopping=True, tol=0.01,
                                    learning_rate="adaptive", n_iter_no_change=2,
                                    max_iter=25),
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("kind", ["regression", "multiclass"])
def test_trajectory_options(kind, option):
    X, y = _data(kind)
    ref, got = _pair(_estimator_name(kind), _fit(X, y), **{**BASE, **OPTIONS[option]})
    assert_same_fit(got, ref)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["regression", "poisson", "binary", "multiclass",
                                  "multilabel"])
def test_trajectory_sample_weight(kind, solver):
    X, y = _data(kind)
    w = np.random.default_rng(3).uniform(0.1, 3.0, size=N)
    params = {**BASE, "solver": solver, "alpha": 0.1}
    if kind == "poisson":
        params.update(loss="poisson", learning_rate_init=0.01)
    ref, got = _pair(_estimator_name(kind), _fit(X, y, sample_weight=w), **params)
    assert_same_fit(got, ref)


def test_trajectory_sample_weight_early_stopping():
    X, y = _data("binary")
    w = np.random.default_rng(3).uniform(0.1, 3.0, size=N)
    ref, got = _pair("MLPClassifier", _fit(X, y, sample_weight=w),
                     **{**BASE, "solver": "adam", "early_stopping": True})
    assert_same_fit(got, ref)


def test_verbose_output_is_sklearns():
    X, y = _data("regression")
    # _pair compares stdout: iteration losses, validation scores, learning-rate messages
    _pair("MLPRegressor", _fit(X, y), **{**BASE, **OPTIONS["early-stopping-adaptive"],
                                         "verbose": True})
    assert "Iteration 1, loss" in _run(bps, "MLPRegressor", _fit(X, y),
                                       {**BASE, "verbose": 1})[2]


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_float32(solver):
    X, y = _data("multiclass", dtype=np.float32)
    ref, got = _pair("MLPClassifier", _fit(X, y), **{**BASE, **SOLVERS[
        "nesterov" if solver == "sgd" else "adam"]})
    assert got.coefs_[0].dtype == np.float32 and got.predict_proba(X).dtype == np.float32
    assert_same_fit(got, ref, rtol=F32_RTOL)
    Xr, yr = _data("regression", dtype=np.float32)
    ref, got = _pair("MLPRegressor", _fit(Xr, yr), **{**BASE, "solver": solver,
                                                     "batch_size": "auto"})
    assert type(got.loss_) is np.float32  # as scikit-learn's, with batch_size="auto"
    assert_same_fit(got, ref, rtol=F32_RTOL)


# ---------------------------------------------------------------------------------------
# lbfgs
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kind", KINDS)
def test_lbfgs(kind, weighted):
    X, y = _data(kind)
    fit_params = {}
    if weighted:
        fit_params["sample_weight"] = np.random.default_rng(4).uniform(0.1, 3.0, size=N)
    params = dict(solver="lbfgs", hidden_layer_sizes=(6,), random_state=0, max_iter=40,
                  alpha=0.01, activation="tanh")
    if kind == "poisson":
        params["loss"] = "poisson"
    ref, got = _pair(_estimator_name(kind), _fit(X, y, **fit_params), **params)
    assert_same_fit(got, ref, rtol=LBFGS_RTOL)
    assert not hasattr(got, "loss_curve_")


def test_lbfgs_float32_and_options():
    X, y = _data("regression", dtype=np.float32)
    params = dict(solver="lbfgs", hidden_layer_sizes=(6,), random_state=0, max_iter=200,
                  max_fun=25, tol=1e-3)
    ref, got = _pair("MLPRegressor", _fit(X, y), **params)  # stops on max_fun: warning
    # scikit-learn computes in float32 and unpacks scipy's float64 result
    assert got.coefs_[0].dtype == np.float64 and type(got.loss_) is np.float32
    assert_same_fit(got, ref, rtol=1e-3)


# ---------------------------------------------------------------------------------------
# partial_fit, warm_start, user parameters
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_keeps_optimizer_state(solver):
    X, y = _data("multiclass")
    w = np.random.default_rng(5).uniform(0.5, 2.0, size=N)

    def calls(est):
        for part in np.array_split(np.arange(N), 4):
            est.partial_fit(X[part], y[part], sample_weight=w[part],
                            classes=["high", "low", "mid"])
        est.partial_fit(X, y)

    ref, got = _pair("MLPClassifier", calls, **{**BASE, **SOLVERS[
        "nesterov" if solver == "sgd" else "adam"]})
    assert_same_fit(got, ref)
    Xr, yr = _data("regression")
    ref, got = _pair("MLPRegressor", lambda e: [e.partial_fit(Xr, yr) for _ in range(3)],
                     **{**BASE, "solver": solver})
    assert_same_fit(got, ref)


def test_partial_fit_after_pickling_continues_identically():
    X, y = _data("regression")
    est = bps.MLPRegressor(**BASE).partial_fit(X, y).partial_fit(X, y)
    copy = pickle.loads(pickle.dumps(est))
    for e in (est, copy):
        e.partial_fit(X, y)
    for a, b in zip(est.coefs_ + est.intercepts_, copy.coefs_ + copy.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_warm_start_uses_user_parameters():
    X, y = _data("multilabel")
    rng = np.random.default_rng(6)
    shapes = []

    def refit(est):
        est.set_params(max_iter=1).fit(X, y)
        if not shapes:
            shapes.extend((c.shape, i.shape) for c, i in zip(est.coefs_, est.intercepts_))
            shapes.append([(rng.normal(size=c), rng.normal(size=i)) for c, i in shapes])
        est.coefs_ = [c.copy() for c, _ in shapes[-1]]
        est.intercepts_ = [i.copy() for _, i in shapes[-1]]
        held = est.coefs_[0]
        est.set_params(warm_start=True, max_iter=6).fit(X, y)
        assert est.coefs_[0] is held  # scikit-learn updates the arrays in place

    ref, got = _pair("MLPClassifier", refit, **{**BASE, "solver": "sgd"})
    assert_same_fit(got, ref)
    assert not np.allclose(got.coefs_[0], shapes[-1][0][0])


def test_warm_start_with_changed_loss_falls_back_to_sklearn():
    # identity output with the Poisson loss: not a pair the kernels know; still sklearn's
    X, y = _data("poisson")

    def refit(est):
        est.fit(X, y)
        est.set_params(warm_start=True, loss="poisson").fit(X, y)

    for solver in ("sgd", "lbfgs"):
        ref, got = _pair("MLPRegressor", refit, **{**BASE, "solver": solver,
                                                   "learning_rate_init": 0.001})
        assert_same_fit(got, ref, rtol=LBFGS_RTOL)


# ---------------------------------------------------------------------------------------
# Inputs: sparse, labels, targets
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_input(fmt, solver):
    X, y = _data("multiclass")
    X[np.abs(X) < 0.5] = 0
    Xs = sp.csr_matrix(X) if fmt == "csr" else sp.csc_matrix(X)
    params = {**BASE, "solver": solver, "max_iter": 10}
    ref, got = _pair("MLPClassifier", _fit(Xs, y), **params)
    assert_same_fit(got, ref, rtol=LBFGS_RTOL)
    dense = bps.MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense.fit(X, y)
    for a, b in zip(dense.coefs_, got.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.predict(Xs), ref.predict(Xs))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_labels_and_probabilities():
    for kind in ("binary", "multiclass", "multilabel"):
        X, y = _data(kind)
        ref, got = _pair("MLPClassifier", _fit(X, y), **BASE)
        np.testing.assert_array_equal(got.predict(X), ref.predict(X))
        _close(got.predict_proba(X), ref.predict_proba(X), RTOL)
        _close(got.predict_log_proba(X), ref.predict_log_proba(X), RTOL)
        assert got.score(X, y) == ref.score(X, y)
    assert got.predict(X).shape == y.shape  # multilabel indicator output
    X, y = _data("multiclass")
    assert set(bps.MLPClassifier(**BASE).fit(X, y).predict(X)) <= {"low", "mid", "high"}
    ref, got = _pair("MLPRegressor", _fit(*_data("multioutput")), **BASE)
    assert got.predict(X).shape == (N, 2)
    # a regression score: equal to rounding (the trajectories match to ~1e-14, not bitwise)
    assert got.score(X, _data("multioutput")[1]) == pytest.approx(
        ref.score(X, _data("multioutput")[1]), rel=RTOL)


def test_pickle_and_joblib_round_trips(tmp_path):
    X, y = _data("multiclass")
    for est in (bps.MLPClassifier(**BASE), bps.MLPRegressor(**{**BASE, "solver": "lbfgs"})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y if is_classifier(est) else X[:, 0])
        want = est.predict(X)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).predict(X), want)
        path = tmp_path / "model.joblib"
        joblib.dump(est, path)
        loaded = joblib.load(path)
        assert type(loaded) is type(est)
        np.testing.assert_array_equal(loaded.predict(X), want)
        assert all(c.flags.c_contiguous for c in loaded.coefs_)


# ---------------------------------------------------------------------------------------
# Warnings and errors are scikit-learn's
# ---------------------------------------------------------------------------------------

def test_warnings_are_sklearns():
    X, y = _data("regression")
    # batch_size clipped (UserWarning), then ConvergenceWarning at max_iter
    ref, got = _pair("MLPRegressor", _fit(X, y), **{**BASE, "batch_size": 1000})
    assert_same_fit(got, ref)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        bps.MLPRegressor(**BASE).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        bps.MLPRegressor(solver="lbfgs", max_iter=2).fit(X, y)


@pytest.mark.parametrize("params, match", [
    (dict(solver="newton"), "solver"),
    (dict(activation="softmax"), "activation"),
    (dict(hidden_layer_sizes=0), "hidden_layer_sizes"),
    (dict(learning_rate_init=0.0), "learning_rate_init"),
    (dict(momentum=1.5), "momentum"),
    (dict(batch_size=0), "batch_size"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(beta_1=1.0), "beta_1"),
    (dict(max_fun=0), "max_fun"),
])
def test_invalid_parameters(params, match):
    X, y = _data("regression")
    for module in (skn, bps):
        with pytest.raises(InvalidParameterError, match=match):
            module.MLPRegressor(**params).fit(X, y)
    with pytest.raises(InvalidParameterError, match="loss"):
        bps.MLPRegressor(loss="log_loss").fit(X, y)


def test_errors_are_sklearns():
    X, y = _data("multiclass")
    cases = [
        ("MLPClassifier", dict(solver="lbfgs"), lambda e: e.partial_fit(X, y)),
        ("MLPClassifier", dict(early_stopping=True),
         lambda e: e.partial_fit(X, y, classes=np.unique(y))),
        ("MLPClassifier", dict(early_stopping=True, validation_fraction=0.01),
         _fit(X, y)),
        ("MLPClassifier", dict(warm_start=True),
         lambda e: e.fit(X, y).fit(X, np.where(y == "low", "other", y))),
        ("MLPClassifier", {},
         lambda e: e.partial_fit(X, y, classes=["low", "mid", "high"]).partial_fit(
             X, np.where(y == "low", "other", y))),
        ("MLPRegressor", {}, _fit(X, y)),  # non-numeric targets
        ("MLPRegressor", {}, _fit(np.c_[X[:, :3], np.full(N, np.nan)], X[:, 0])),
        ("MLPRegressor", {}, _fit(X[:0], X[:0, 0])),
        ("MLPRegressor", {}, _fit(X, X[:-1, 0])),
        ("MLPRegressor", {}, lambda e: e.fit(X, X[:, 0]).predict(X[:, :3])),
    ]
    for name, params, action in cases:
        _pair(name, action, **{**BASE, **params})  # the same exception type and message
        assert _run(skn, name, action, {**BASE, **params})[3] is not None


def test_divergence_is_handled_like_sklearn():
    X, y = _data("regression")
    y = 100 * y
    # the loss overflows: every later batch runs in NumPy; fit raises sklearn's error
    params = {**BASE, "solver": "sgd", "activation": "identity", "learning_rate_init": 0.1,
              "max_iter": 6}
    ref, got = _pair("MLPRegressor", _fit(X, y), **params)
    assert "non-finite parameter weights" in str(_run(bps, "MLPRegressor", _fit(X, y),
                                                      params)[3])
    # with early stopping, the best (finite) weights come back, the same as sklearn's
    ref, got = _pair("MLPRegressor", _fit(X, y), **{**params, "early_stopping": True})
    assert np.isnan(got.loss_curve_[-1])
    assert_same_fit(got, ref)


def test_batch_of_zero_weight_and_negative_weights():
    X, y = _data("regression")
    w = np.ones(N)
    w[:16] = 0  # the whole first batch: scikit-learn divides 0 by 0
    _pair("MLPRegressor", _fit(X, y, sample_weight=w), **{**BASE, "shuffle": False})
    w = np.random.default_rng(7).uniform(-0.3, 1.0, size=N)
    for solver in ("sgd", "lbfgs"):
        ref, got = _pair("MLPRegressor", _fit(X, y, sample_weight=w),
                         **{**BASE, "solver": solver, "learning_rate_init": 0.001})
        assert_same_fit(got, ref, rtol=LBFGS_RTOL)
    # a negative total weight: lbfgs runs in scikit-learn's code, with its results
    ref, got = _pair("MLPRegressor", _fit(X, y, sample_weight=-np.ones(N)),
                     **{**BASE, "solver": "lbfgs", "max_iter": 3})
    assert_same_fit(got, ref)


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 64, 1797, 70_001])
def test_compiled_shuffle_draws_like_random_state(seed, n):
    """The epoch shuffle run in compiled code gives idx[rs.permutation(n)] and leaves the
    generator in the same state (the next draws agree)."""
    from bpfast._core.shuffle import shuffle_like_random_state

    ours, theirs = np.random.RandomState(seed), np.random.RandomState(seed)
    idx = np.random.RandomState(seed + 7).permutation(n).astype(np.intp)
    want = idx[theirs.permutation(n)]
    assert shuffle_like_random_state(ours, idx)
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(ours.randint(0, 2**31, size=5),
                                  theirs.randint(0, 2**31, size=5))


def test_compiled_shuffle_declines_other_generators():
    """Anything but a plain RandomState keeps numpy's own permutation, untouched here."""
    from bpfast._core.shuffle import shuffle_like_random_state

    class Subclass(np.random.RandomState):
        pass

    idx = np.arange(10, dtype=np.intp)
    for rs in (Subclass(0), np.random.default_rng(0), None):
        assert shuffle_like_random_state(rs, idx) is False
        np.testing.assert_array_equal(idx, np.arange(10))


# ---------------------------------------------------------------------------------------
# A new shape with warm_start or partial_fit: scikit-learn's outcome
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("new_shape", [(5, 3), (), (7,)], ids=["deeper", "no-hidden", "wider"])
@pytest.mark.parametrize("kind", ["binary", "regression"])
def test_warm_start_after_new_hidden_layer_sizes(kind, new_shape, solver):
    """scikit-learn raises when the depth changes (and, for lbfgs, the width); the
    drop-in raises the same exception with the same message, or trains the same way."""
    X, y = _data(kind)

    def refit(est):
        est.fit(X, y)
        est.set_params(warm_start=True, hidden_layer_sizes=new_shape).fit(X, y)

    params = {**BASE, "hidden_layer_sizes": (5,), "solver": solver, "max_iter": 3}
    ref, got = _pair(_estimator_name(kind), refit, **params)  # same exception and message
    ref_error = _run(skn, _estimator_name(kind), refit, params)[3]
    if len(new_shape) != 1 or solver == "lbfgs":
        assert ref_error is not None
    else:  # the same depth: scikit-learn trains the stored network on; so does bpfast
        assert ref_error is None
        assert_same_fit(got, ref, rtol=LBFGS_RTOL)


def test_partial_fit_after_new_hidden_layer_sizes():
    X, y = _data("regression")

    def calls(est):
        est.partial_fit(X, y)
        est.set_params(hidden_layer_sizes=(4, 2)).partial_fit(X, y)

    _pair("MLPRegressor", calls, **{**BASE, "hidden_layer_sizes": (5,)})
    assert _run(skn, "MLPRegressor", calls, {**BASE, "hidden_layer_sizes": (5,)})[3]


# ---------------------------------------------------------------------------------------
# Import without scikit-learn
# ---------------------------------------------------------------------------------------

def test_import_without_sklearn_names_the_extra(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['sklearn'] = None  # as if scikit-learn were not installed\n"
        "try:\n"
        "    import bpfast.sklearn\n"
        "except ImportError as err:\n"
        "    print(type(err).__name__, '|', err, '|', type(err.__cause__).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=_absolute_pythonpath_env())
    name, message, cause = [part.strip() for part in out.stdout.split("|")]
    assert name == "ImportError"
    assert "pip install 'bpfast[sklearn]'" in message
    assert cause == "ModuleNotFoundError"


def test_import_with_too_old_sklearn_names_the_floor(tmp_path):
    code = (
        "import sklearn\n"
        "sklearn.__version__ = '1.6.1'\n"
        "try:\n"
        "    import bpfast.sklearn\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env=_absolute_pythonpath_env())
    assert "scikit-learn >= 1.7, found 1.6.1" in out.stdout
    assert "bpfast[sklearn]" in out.stdout


# ---------------------------------------------------------------------------------------
# class_weight: the corresponding sample_weight
# ---------------------------------------------------------------------------------------

def _balanced_weights(y):
    """n_samples / (n_classes * count of the sample's class), written out."""
    labels, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return len(y) / (len(labels) * counts[inverse])


CLASS_WEIGHT_SOLVERS = {
    "sgd": dict(solver="sgd", momentum=0.9),
    "adam": dict(solver="adam", learning_rate_init=0.01),
    "lbfgs": dict(solver="lbfgs", max_iter=30),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("user_weights", [False, True], ids=["alone", "times-sample_weight"])
@pytest.mark.parametrize("class_weight", ["balanced", "dict"])
@pytest.mark.parametrize("solver", list(CLASS_WEIGHT_SOLVERS))
@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_class_weight_equals_sample_weight(kind, solver, class_weight, user_weights, dtype):
    """bpfast's class_weight against scikit-learn's MLPClassifier given the sample weights
    that class_weight stands for."""
    X, y = _data(kind, dtype=dtype)
    y = y[: N - 20] if kind == "binary" else y  # unequal class counts
    X = X[: len(y)]
    if class_weight == "dict":
        class_weight = {0: 3.0, 1: 0.5} if kind == "binary" else {"low": 4.0, "high": 0.25}
        want = np.array([class_weight.get(label, 1.0) for label in y])
    else:
        want = _balanced_weights(y)
    fit_params = {}
    if user_weights:
        fit_params["sample_weight"] = np.random.default_rng(8).uniform(0.1, 3.0, len(y))
        want = want * fit_params["sample_weight"]
    params = {**BASE, **CLASS_WEIGHT_SOLVERS[solver]}
    got, _, _, got_error = _run(bps, "MLPClassifier", _fit(X, y, **fit_params),
                                {**params, "class_weight": class_weight})
    twin, _, _, twin_error = _run(bps, "MLPClassifier", _fit(X, y, sample_weight=want),
                                  params)
    assert got_error is None and twin_error is None
    assert_same_fit(got, twin, rtol=1e-12 if dtype == np.float64 else 1e-6)
    if not (solver == "lbfgs" and dtype == np.float32):  # see test_lbfgs_float32_and_options
        ref = _run(skn, "MLPClassifier", _fit(X, y, sample_weight=want), params)[0]
        rtol = F32_RTOL if dtype == np.float32 else LBFGS_RTOL if solver == "lbfgs" else RTOL
        assert_same_fit(got, ref, rtol=rtol)
    unweighted = bps.MLPClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        unweighted.fit(X, y, **fit_params)
    assert not np.allclose(unweighted.coefs_[0], got.coefs_[0])


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_class_weight_with_partial_fit(solver):
    X, y = _data("multiclass")
    class_weight = {"low": 4.0, "mid": 1.5}
    params = {**BASE, **CLASS_WEIGHT_SOLVERS[solver]}
    classes = ["high", "low", "mid"]

    def calls(weighted):
        def run(est):
            for part in np.array_split(np.arange(N), 3):
                if weighted:
                    est.partial_fit(X[part], y[part], classes=classes)
                else:
                    w = np.array([class_weight.get(label, 1.0) for label in y[part]])
                    est.partial_fit(X[part], y[part], sample_weight=w, classes=classes)
        return run

    ref = _run(skn, "MLPClassifier", calls(False), params)[0]
    got = _run(bps, "MLPClassifier", calls(True), {**params, "class_weight": class_weight})[0]
    assert_same_fit(got, ref)
    # "balanced" from one batch would weigh by that batch's counts: refused, as SGDClassifier
    with pytest.raises(ValueError, match="class_weight 'balanced' is not supported for "
                                         "partial_fit"):
        bps.MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=classes)


def test_class_weight_none_is_sklearns_and_in_params():
    est = bps.MLPClassifier(class_weight={0: 2.0})
    assert est.get_params()["class_weight"] == {0: 2.0}
    assert clone(est).class_weight == {0: 2.0}
    assert est.set_params(class_weight="balanced") is est and est.class_weight == "balanced"
    assert repr(bps.MLPClassifier(class_weight="balanced")) == (
        "MLPClassifier(class_weight='balanced')")
    assert "class_weight" not in bps.MLPRegressor().get_params()
    X, y = _data("binary")
    ref = _run(skn, "MLPClassifier", _fit(X, y), BASE)[0]
    got = _run(bps, "MLPClassifier", _fit(X, y), {**BASE, "class_weight": None})[0]
    assert_same_fit(got, ref)


@pytest.mark.parametrize("bad", ["balance", 3, [1.0, 2.0]])
def test_class_weight_invalid(bad):
    X, y = _data("binary")
    with pytest.raises(InvalidParameterError, match="'class_weight' parameter of "
                                                    "MLPClassifier must be"):
        bps.MLPClassifier(class_weight=bad).fit(X, y)


# ---------------------------------------------------------------------------------------
# Parallel search: each fit keeps to its worker's share of the cores
# ---------------------------------------------------------------------------------------

def _blas_threads():
    from threadpoolctl import threadpool_info

    return sorted({pool["num_threads"] for pool in threadpool_info()
                   if pool["user_api"] == "blas"})


def _threads_search(n_jobs, backend):
    """GridSearchCV over a subclass recording the pools' thread counts during fit; its
    cv_results_ hold the accuracy and the counts (the recording runs in the workers)."""
    from joblib import parallel_config
    from sklearn.model_selection import GridSearchCV

    from bpfast._core import kernels as _kernels

    class Recording(bps.MLPClassifier):  # a local class: pickled by value to workers
        def _fit_stochastic(self, *args):
            self.threads_seen_ = (max(_blas_threads()), _kernels.panel_gemm_threads())
            return super()._fit_stochastic(*args)

    scoring = {"accuracy": "accuracy",
               "blas": lambda est, X, y: float(est.threads_seen_[0]),
               "kernel": lambda est, X, y: float(est.threads_seen_[1])}
    X, y = _data("multiclass")
    search = GridSearchCV(Recording(**{**BASE, "solver": "adam"}),
                          {"alpha": [1e-4, 1e-2], "hidden_layer_sizes": [(5,), (8, 3)]},
                          cv=3, n_jobs=n_jobs, scoring=scoring, refit=False)
    with warnings.catch_warnings(), parallel_config(backend=backend):
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    return search.cv_results_


def test_grid_search_workers_limit_their_threads():
    """In joblib's worker processes each fit keeps the BLAS and bpfast's kernel pool to
    the worker's share of the cores; the results are the serial search's."""
    before = _blas_threads()
    serial = _threads_search(1, "loky")
    # one job: the fits run in the caller's process with its own thread counts
    assert set(serial["mean_test_blas"]) == {float(max(before))}
    parallel = _threads_search(2, "loky")
    share = max(1, joblib.cpu_count() // 2)
    assert set(parallel["mean_test_blas"]) == {float(share)}
    assert set(parallel["mean_test_kernel"]) <= {float(share)}
    for key in ("mean_test_accuracy", "split0_test_accuracy", "split2_test_accuracy"):
        np.testing.assert_array_equal(parallel[key], serial[key])
    assert _blas_threads() == before


def test_fit_limits_threads_only_in_joblib_worker_processes(monkeypatch):
    """The limit is the one joblib gave the worker, and lasts only for the fit."""
    from joblib.externals.loky import process_executor
    from joblib.parallel import ThreadingBackend, parallel_config

    X, y = _data("multiclass")
    seen = []

    class Recording(bps.MLPClassifier):
        def _fit_stochastic(self, *args):
            seen.append(max(_blas_threads()))
            return super()._fit_stochastic(*args)

    before = max(_blas_threads())
    est = Recording(**BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)  # the caller's own process: untouched
        # as in a loky worker of Parallel(n_jobs=k): nested backend, environment set
        monkeypatch.setattr(process_executor, "_CURRENT_DEPTH", 1)
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
        with parallel_config(backend=ThreadingBackend(nesting_level=1)):
            est.fit(X, y)
    assert seen == [before, 1]
    assert max(_blas_threads()) == before
