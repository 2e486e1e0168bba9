"""bpfast.distributed: data-parallel back-propagation and training on a Dask cluster.

One ``LocalCluster`` of two single-threaded worker processes on loopback serves the
module. Every result is held against the single-machine computation on the same rows
gathered into NumPy: :func:`bpfast.backprop`, a loop of it for gradient descent, the same
SciPy L-BFGS call, :meth:`bpfast.Network.fit`.
"""
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip(
    "distributed", reason="bpfast.distributed needs the 'dask' extra: pip install 'bpfast[dask]'"
)
da = pytest.importorskip(
    "dask.array", reason="bpfast.distributed needs the 'dask' extra: pip install 'bpfast[dask]'"
)
import dask  # noqa: E402

import bpfast  # noqa: E402
import bpfast.distributed as bd  # noqa: E402
from bpfast.datasets import load_digits  # noqa: E402

from conftest import make_data, make_params  # noqa: E402

#: Tolerances against the single-machine run: the sums are taken in another order.
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}

SIZES = (6, 9, 5, 3)
ACTS = ["tanh", "relu", "sigmoid"]


def close(got, want, dtype, factor=1.0):
    """Elementwise ``rtol`` of the dtype with an absolute floor tied to the array's scale."""
    want = np.asarray(want)
    rtol = RTOL[np.dtype(dtype)] * factor
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.max(np.abs(want))))


def dask_pair(X, Y, chunks):
    return da.from_array(X, chunks=(chunks, -1)), da.from_array(Y, chunks=(chunks, -1))


@pytest.fixture(scope="module")
def cluster():
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def module_client(cluster):
    # not the default client: the tests without a client run on dask's local scheduler
    with distributed.Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def client(module_client):
    module_client.wait_for_workers(2, timeout=60)  # after the fault test, its restart
    return module_client


def _fresh(dtype=np.float64, seed=0, sizes=SIZES, acts=ACTS):
    return bpfast.Network(sizes, activations=acts, dtype=dtype, seed=seed)


# --------------------------------------------------------------------------------------
# backprop
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunks", [
    25,                    # even
    (10, 37, 3, 50),       # uneven
    (100,),                # a single chunk
    7,                     # many small chunks: a two-level reduction tree
    (0, 40, 0, 60),        # empty chunks are skipped
], ids=["even", "uneven", "single", "many", "empty"])
def test_backprop_equals_single_machine(client, dtype, chunks):
    weights, biases = make_params(SIZES, dtype=dtype, seed=3)
    X, Y = make_data(SIZES, 100, dtype=dtype, seed=4)
    dX, dY = dask_pair(X, Y, chunks)
    E, dW, db = bd.backprop(weights, biases, ACTS, dX, dY, client=client)
    E0, dW0, db0 = bpfast.backprop(weights, biases, ACTS, X, Y)
    assert isinstance(E, float)
    np.testing.assert_allclose(E, E0, rtol=RTOL[np.dtype(dtype)])
    for got, want in zip(dW + db, dW0 + db0):
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape
        close(got, want, dtype)


def test_backprop_on_a_seeded_random_graph(client):
    """Data made on the workers (da.random), never on the client."""
    rng = da.random.default_rng(11)
    dX = rng.normal(size=(1_000, SIZES[0]), chunks=(230, -1))
    dY = rng.uniform(size=(1_000, SIZES[-1]), chunks=(230, -1))
    weights, biases = make_params(SIZES, seed=5)
    E, dW, db = bd.backprop(weights, biases, ACTS, dX, dY, client=client)
    X, Y = dask.compute(dX, dY, scheduler="sync")
    E0, dW0, db0 = bpfast.backprop(weights, biases, ACTS, X, Y)
    np.testing.assert_allclose(E, E0, rtol=1e-12)
    for got, want in zip(dW + db, dW0 + db0):
        close(got, want, np.float64)


def test_backprop_runs_on_the_current_client(module_client):
    weights, biases = make_params(SIZES, seed=1)
    X, Y = make_data(SIZES, 60, seed=2)
    dX, dY = dask_pair(X, Y, 20)
    with module_client.as_current(), distributed.get_task_stream(module_client) as ts:
        E, _, _ = bd.backprop(weights, biases, ACTS, dX, dY)
    assert any("chunk_gradient" in str(t["key"]) for t in ts.data)
    np.testing.assert_allclose(E, bpfast.loss(weights, biases, ACTS, X, Y), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backprop_without_a_client_uses_dasks_default_scheduler(dtype):
    from bpfast.integrations.dask import _resolve_client
    assert _resolve_client(None) is None
    weights, biases = make_params(SIZES, dtype=dtype, seed=6)
    X, Y = make_data(SIZES, 90, dtype=dtype, seed=7)
    dX, dY = dask_pair(X, Y, (40, 11, 39))
    with dask.config.set(scheduler="threads"):
        E, dW, db = bd.backprop(weights, biases, ACTS, dX, dY)
    E0, dW0, db0 = bpfast.backprop(weights, biases, ACTS, X, Y)
    np.testing.assert_allclose(E, E0, rtol=RTOL[np.dtype(dtype)])
    for got, want in zip(dW + db, dW0 + db0):
        close(got, want, dtype)


def test_non_finite_data_names_the_row(client):
    weights, biases = make_params(SIZES, seed=1)
    X, Y = make_data(SIZES, 50, seed=2)
    X[33, 2] = np.nan
    with pytest.raises(ValueError, match=r"X: expected finite values, got nan at \[33, 2\]"):
        bd.backprop(weights, biases, ACTS, *dask_pair(X, Y, 10), client=client)


# --------------------------------------------------------------------------------------
# Full-batch training
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradient_descent_equals_single_machine_step_by_step(client, dtype):
    X, Y = make_data(SIZES, 300, dtype=dtype, seed=8)
    net = _fresh(dtype, seed=2)
    weights = [w.copy() for w in net.weights]
    biases = [b.copy() for b in net.biases]
    steps, lr = 8, 0.5
    seen = []

    def callback(n, step, history):
        seen.append((step, [p.copy() for p in n.weights + n.biases]))

    history = bd.fit(net, *dask_pair(X, Y, (70, 70, 100, 60)), client, method="gd",
                     epochs=steps, learning_rate=lr, callback=callback)
    assert isinstance(history, bd.DistributedHistory)
    assert history.method == "gd" and history.evaluations == steps
    assert history.chunks == 4 and len(history.loss) == steps == len(history.time)
    assert history.bytes_per_worker >= sum(p.nbytes for p in weights + biases)
    for step in range(steps):
        E, dW, db = bpfast.backprop(weights, biases, ACTS, X, Y)
        np.testing.assert_allclose(history.loss[step], E, rtol=RTOL[np.dtype(dtype)])
        for p, g in zip(weights + biases, dW + db):
            p -= lr * g
        assert seen[step][0] == step
        for got, want in zip(seen[step][1], weights + biases):
            close(got, want, dtype, factor=10)
    for got, want in zip(net.weights + net.biases, weights + biases):
        assert got.dtype == np.dtype(dtype)
        close(got, want, dtype, factor=10)


def test_gradient_descent_with_l2_matches_the_reference(client):
    X, Y = make_data(SIZES, 120, seed=9)
    net = _fresh(seed=4)
    start = [p.copy() for p in net.weights + net.biases]
    history = bd.fit(net, *dask_pair(X, Y, 50), client, method="gd", epochs=1,
                     learning_rate=0.3, l2=0.05)
    L = len(SIZES) - 1
    E, dW, db = bpfast.reference.loss_gradient(start[:L], start[L:], tuple(ACTS), X, Y,
                                               l2=0.05)
    np.testing.assert_allclose(history.loss[0], E, rtol=1e-12)
    for got, p, g in zip(net.weights + net.biases, start, dW + db):
        close(got, p - 0.3 * g, np.float64, factor=10)


def _pack(weights, biases):
    return np.concatenate([a.ravel() for w, b in zip(weights, biases) for a in (w, b)])


def _unpack(x, net):
    weights, biases, k = [], [], 0
    for w, b in zip(net.weights, net.biases):
        weights.append(x[k:k + w.size].reshape(w.shape))
        k += w.size
        biases.append(x[k:k + b.size])
        k += b.size
    return weights, biases


def test_lbfgs_equals_the_same_scipy_call_on_one_machine(client):
    from scipy.optimize import minimize

    X, Y = make_data(SIZES, 240, seed=10)
    net = _fresh(seed=5)
    x0 = _pack(net.weights, net.biases)

    losses = []

    def fun(x):
        weights, biases = _unpack(x, net)
        E, dW, db = bpfast.backprop(weights, biases, ACTS, X, Y)
        return E, _pack(dW, db)

    def on_iteration(intermediate_result):
        losses.append(intermediate_result.fun)

    want = minimize(fun, x0.copy(), jac=True, method="L-BFGS-B", tol=1e-10,
                    options={"maxiter": 15}, callback=on_iteration)
    history = bd.fit(net, *dask_pair(X, Y, 64), client, method="lbfgs", maxiter=15,
                     tol=1e-10)
    got = history.result
    assert got.nit == want.nit and got.nfev == want.nfev == history.evaluations
    np.testing.assert_allclose(history.loss, losses, rtol=1e-10)
    np.testing.assert_allclose(got.x, want.x, rtol=1e-8, atol=1e-10)
    close(_pack(net.weights, net.biases), want.x, np.float64, factor=1e4)
    assert history.loss[-1] < history.loss[0]


def test_callback_returning_false_stops(client):
    X, Y = make_data(SIZES, 50, seed=1)
    net = _fresh()
    for method, kw in [("gd", {"epochs": 10}), ("lbfgs", {"maxiter": 10}),
                       ("local_sgd", {"rounds": 10})]:
        h = bd.fit(net, *dask_pair(X, Y, 25), client, method=method,
                   callback=lambda n, step, hist: step < 2, **kw)
        assert len(h.loss) == 3, method


# --------------------------------------------------------------------------------------
# Local SGD
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_local_sgd_on_one_chunk_is_network_fit(client, optimizer):
    """One chunk, one worker, one local model: rounds x local epochs are exactly the
    epochs of Network.fit, optimizer state and Adam's step count carried between rounds."""
    X, Y = make_data(SIZES, 90, seed=12)
    kw = dict(batch_size=16, learning_rate=0.01 if optimizer == "adam" else 0.2,
              optimizer=optimizer)
    net, ref = _fresh(seed=7), _fresh(seed=7)
    want = ref.fit(X, Y, epochs=6, shuffle=False, **kw)
    history = bd.fit(net, *dask_pair(X, Y, 90), client, method="local_sgd", rounds=3,
                     local_epochs=2, shuffle=False, **kw)
    assert history.workers == 1 and history.chunks == 1
    np.testing.assert_allclose(history.loss, want.loss[1::2], rtol=1e-9)
    for got, w in zip(net.weights + net.biases, ref.weights + ref.biases):
        close(got, w, np.float64, factor=1e3)


def test_local_sgd_averages_the_local_models_weighted_by_rows():
    """Without a distributed client every chunk trains its own local model."""
    X, Y = make_data(SIZES, 100, seed=13)
    net = _fresh(seed=8)
    rows = (30, 70)
    parts, start = [], 0
    for r in rows:
        local = _fresh(seed=8)
        local.fit(X[start:start + r], Y[start:start + r], epochs=2, batch_size=8,
                  learning_rate=0.1, shuffle=False)
        parts.append(local)
        start += r
    history = bd.fit(net, *dask_pair(X, Y, rows), None, method="local_sgd", rounds=1,
                     local_epochs=2, batch_size=8, learning_rate=0.1, shuffle=False)
    assert history.workers == 2 and history.bytes_per_worker >= 8 * net.n_parameters
    for k, got in enumerate(net.weights + net.biases):
        want = sum(r * (p.weights + p.biases)[k] for r, p in zip(rows, parts)) / sum(rows)
        close(got, want, np.float64, factor=10)


def _digits():
    X8, y = load_digits()
    X = X8 / 16.0
    Y = np.eye(10)[y]
    order = np.random.default_rng(0).permutation(len(X))  # the split of `bpfast demo`
    test, train = order[:359], order[359:]
    return X[train], Y[train], X[test], y[test]


def test_local_sgd_on_the_digits_matches_single_machine_accuracy(client):
    Xtr, Ytr, Xte, yte = _digits()
    settings = dict(batch_size=8, learning_rate=0.1, loss="cross_entropy", seed=0)
    single = bpfast.Network([64, 64, 10], activations=["relu", "softmax"], seed=0)
    single.fit(Xtr, Ytr, epochs=60, **settings)
    net = bpfast.Network([64, 64, 10], activations=["relu", "softmax"], seed=0)
    history = bd.fit(net, *dask_pair(Xtr, Ytr, 360), client, method="local_sgd",
                     rounds=15, local_epochs=4, **settings)
    acc_single = np.mean(single.forward(Xte).argmax(axis=1) == yte)
    acc = np.mean(net.forward(Xte).argmax(axis=1) == yte)
    assert acc_single > 0.96
    assert abs(acc - acc_single) <= 0.01 + 1e-9, (acc, acc_single, history.workers)
    assert history.loss[-1] < history.loss[0] / 5
    assert net.loss_function == "cross_entropy"


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------

def _worker_pids(cluster):
    return {name: w.process.process.pid for name, w in cluster.workers.items()
            if w.process is not None and w.process.process is not None}


@pytest.mark.parametrize("method, settings", [
    ("gd", dict(epochs=20, learning_rate=0.5)),
    ("local_sgd", dict(rounds=10, local_epochs=2, batch_size=50, seed=1)),
])
def test_a_worker_killed_mid_training_is_survived(cluster, client, method, settings):
    # seeded graphs: the chunks of the dead worker can be recomputed from them; half the
    # rows persisted on each worker, so that both runs see the chunks in the same places
    # (local SGD groups them by worker)
    halves = []
    for k, addr in enumerate(sorted(client.scheduler_info()["workers"])):
        rng = da.random.default_rng(21 + k)
        halves.append(client.persist([rng.normal(size=(4_000, 20), chunks=(1_000, -1)),
                                      rng.uniform(size=(4_000, 3), chunks=(1_000, -1))],
                                     workers=[addr], allow_other_workers=True))
    dX = da.concatenate([h[0] for h in halves])
    dY = da.concatenate([h[1] for h in halves])
    sizes, acts = (20, 16, 3), ["tanh", "sigmoid"]
    undisturbed = _fresh(sizes=sizes, acts=acts, seed=3)
    want = bd.fit(undisturbed, dX, dY, client, method=method, **settings)
    assert want.workers == 2

    before = _worker_pids(cluster)
    victim = sorted(before)[0]
    killed = threading.Event()

    def kill_during_the_next_step(net, step, history):
        if step == 4:
            # lands while step 5's tasks are on the workers
            threading.Timer(0.005, os.kill, (before[victim], signal.SIGKILL)).start()
            killed.set()

    net = _fresh(sizes=sizes, acts=acts, seed=3)
    got = bd.fit(net, dX, dY, client, method=method, callback=kill_during_the_next_step,
                 **settings)
    assert killed.is_set()
    assert got.loss == want.loss
    for a, b in zip(net.weights + net.biases, undisturbed.weights + undisturbed.biases):
        np.testing.assert_array_equal(a, b)
    # the worker did die (its nanny starts a new process)
    deadline = time.monotonic() + 30
    while _worker_pids(cluster).get(victim) in (None, before[victim]):
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.1)


# --------------------------------------------------------------------------------------
# Bad input: a clear error before any work starts
# --------------------------------------------------------------------------------------

def _never(*args):  # pragma: no cover - computing it is the failure
    raise AssertionError("work started before the inputs were checked")


def _lazy(shape, chunks, dtype=np.float64):
    """A Dask array whose computation fails loudly."""
    blocks, start = [], 0
    for c in chunks:
        blocks.append(da.from_delayed(dask.delayed(_never)(start), (c, shape[1]), dtype=dtype))
        start += c
    return da.concatenate(blocks, axis=0)


def _ok_x():
    return _lazy((40, 6), [20, 20])


def _ok_y():
    return _lazy((40, 3), [20, 20])


#: case -> (make X and Y, error, message)
BAD = {
    "X numpy": (lambda: (np.zeros((40, 6)), _ok_y()),
                TypeError, "X: expected a dask.array.Array"),
    "Y numpy": (lambda: (_ok_x(), np.zeros((40, 3))),
                TypeError, "Y: expected a dask.array.Array"),
    "unaligned": (lambda: (_ok_x(), _lazy((40, 3), [10, 30])),
                  ValueError, "Y: expected row chunks aligned"),
    "X column chunks": (lambda: (_ok_x().rechunk((20, 3)), _ok_y()),
                        ValueError, "X: expected a single chunk along the columns"),
    "Y column chunks": (lambda: (_ok_x(), _ok_y().rechunk((20, 1))),
                        ValueError, "Y: expected a single chunk along the columns"),
    "X float32": (lambda: (_lazy((40, 6), [20, 20], np.float32), _ok_y()),
                  TypeError, "X: expected dtype float64"),
    "Y int": (lambda: (_ok_x(), _lazy((40, 3), [20, 20], np.int64)),
              TypeError, "Y: expected dtype float64"),
    "X columns": (lambda: (_lazy((40, 5), [20, 20]), _ok_y()),
                  ValueError, "X: expected 6 columns"),
    "Y columns": (lambda: (_ok_x(), _lazy((40, 4), [20, 20])),
                  ValueError, "Y: expected 3 columns"),
    "rows": (lambda: (_ok_x(), _lazy((30, 3), [20, 10])),
             ValueError, "Y: expected 40 rows"),
    "X 1-D": (lambda: (da.zeros(40, chunks=20), _ok_y()),
              ValueError, "X: expected a 2-D array"),
    "unknown chunks": (lambda: (_ok_x()[da.zeros(40, chunks=20) == 0], _ok_y()),
                       ValueError, "X: the row chunk sizes are unknown"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_refused_before_any_work(client, case):
    make, error, message = BAD[case]
    X, Y = make()
    weights, biases = make_params(SIZES, seed=0)
    with pytest.raises(error, match=message):
        bd.backprop(weights, biases, ACTS, X, Y, client=client)
    with pytest.raises(error, match=message):
        bd.fit(_fresh(), X, Y, client)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(method="adam"), ValueError, "method: expected one of gd, lbfgs, local_sgd"),
    (dict(method="gd", rounds=3), ValueError, "rounds: applies to method='local_sgd' only"),
    (dict(method="lbfgs", learning_rate=0.1), ValueError, "learning_rate: applies to"),
    (dict(method="local_sgd", maxiter=3), ValueError, "maxiter: applies to method='lbfgs'"),
    (dict(method="gd", loss="cross_entropy"), ValueError, "loss: method='gd' minimises"),
    (dict(method="gd", epochs=0), ValueError, "epochs: expected a positive integer"),
    (dict(method="gd", learning_rate=-1.0), ValueError, "learning_rate: expected a positive"),
    (dict(method="local_sgd", optimizer="rmsprop"), ValueError, "optimizer: expected one of"),
    (dict(method="local_sgd", loss="cross_entropy"), ValueError,
     "loss: 'cross_entropy' needs a softmax"),
    (dict(method="local_sgd", batch_size=0), ValueError, "batch_size: expected a positive"),
    (dict(method="local_sgd", seed=1.5), TypeError, "seed: expected a non-negative integer"),
    (dict(l2=-1.0), ValueError, "l2: expected a finite number >= 0"),
    (dict(callback=3), TypeError, "callback: expected a callable"),
])
def test_bad_settings_are_refused_before_any_work(client, kwargs, error, message):
    X, Y = _ok_x(), _ok_y()
    with pytest.raises(error, match=message):
        bd.fit(_fresh(), X, Y, client, **kwargs)


def test_bad_net_and_client():
    X, Y = _ok_x(), _ok_y()
    with pytest.raises(TypeError, match="net: expected a bpfast.Network"):
        bd.fit([np.zeros((3, 6))], X, Y)
    with pytest.raises(TypeError, match="client: expected a distributed.Client"):
        bd.fit(_fresh(), X, Y, "tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="weights\\[1\\]: expected 9 columns"):
        bd.backprop([np.zeros((9, 6)), np.zeros((5, 8))], [np.zeros(9), np.zeros(5)],
                    "tanh", X, Y)


def test_gradient_descent_divergence_keeps_the_last_finite_parameters(client):
    X, Y = make_data((4, 3), 40, seed=1)
    net = bpfast.Network((4, 3), activations="identity", seed=0)
    with pytest.raises(bpfast.DivergenceError, match="gradient descent"):
        bd.fit(net, *dask_pair(X, Y, 20), client, method="gd", epochs=500,
               learning_rate=1e6)
    assert all(np.isfinite(p).all() for p in net.weights + net.biases)


# --------------------------------------------------------------------------------------
# Packaging
# --------------------------------------------------------------------------------------

def test_import_bpfast_does_not_import_dask(tmp_path):
    parent = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))
    code = ("import sys, bpfast; bad = [m for m in ('dask', 'distributed') if m in sys.modules];"
            " assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=parent)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
