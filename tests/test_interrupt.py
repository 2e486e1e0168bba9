"""Issue 16, item 8: Ctrl-C stops a fit within a fraction of a second, at a batch
boundary, not at the end of the epoch."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import bpfast
from bpfast._core import kernels as _kernels

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix",
                                reason="POSIX signals")

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))

# one epoch of this fit takes several seconds (64 batches of 128 rows through about
# 5 million parameters); the fit would run for many epochs
LONG_FIT = """
import sys
import numpy as np
import bpfast
rng = np.random.default_rng(0)
X = rng.normal(size=(8192, 512)).astype(np.float32)
Y = rng.uniform(size=(8192, 10)).astype(np.float32)
net = bpfast.Network([512, 2048, 2048, 10], dtype=np.float32, seed=0)
print("fitting", flush=True)
net.fit(X, Y, epochs=1000, batch_size=128, learning_rate=0.01, optimizer="OPT")
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _interrupt_after_start(args, cwd, wait=1.0):
    """Start ``args``, SIGINT it ``wait`` seconds after its first line of output;
    returns (seconds from the signal to its exit, return code, stderr)."""
    proc = subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline(), proc.stderr.read()
        time.sleep(wait)
        assert proc.poll() is None, "finished before the signal"
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        took = time.perf_counter() - sent
        return took, proc.returncode, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sigint_stops_a_long_epoch_promptly(tmp_path, optimizer):
    """Within about half a second of the signal (asserted generously: a functional
    test on a shared machine, not a benchmark), with KeyboardInterrupt."""
    took, code, err = _interrupt_after_start(
        [sys.executable, "-c", LONG_FIT.replace("OPT", optimizer)], tmp_path)
    assert "KeyboardInterrupt" in err, err
    assert code != 0
    assert took < 3.0, f"exited {took:.2f} s after SIGINT"


def test_cli_exits_130_on_sigint(tmp_path):
    # not --quiet: the test waits for the demo's first line of output
    took, code, err = _interrupt_after_start(
        [sys.executable, "-m", "bpfast", "demo", "--epochs", "1000000"], tmp_path)
    assert code == 130, err
    assert err.splitlines()[-1] == "bpfast: interrupted", err
    assert "Traceback" not in err
    assert took < 3.0


@pytest.fixture
def check_every_batch():
    old = _kernels.set_signal_check(1, 0.0)
    yield
    _kernels.set_signal_check(*old)


def _params(net):
    return [p.copy() for p in net.weights + net.biases]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_interrupted_fit_keeps_last_batch_and_history(dtype, check_every_batch):
    """In process: the parameters are exactly those after some whole number of batches
    (replayed batch by batch), finite, and the history holds the finished epochs."""
    rng = np.random.default_rng(1)
    n, bs = 2000, 32
    X = rng.normal(size=(n, 64)).astype(dtype)
    Y = np.eye(10, dtype=dtype)[rng.integers(0, 10, n)]
    args = dict(batch_size=bs, learning_rate=0.1, shuffle=False)
    net = bpfast.Network([64, 32, 10], dtype=dtype, seed=0)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            net.fit(X, Y, epochs=100_000, **args)
    finally:
        timer.cancel()
    history = caught.value.history
    epochs = history.epochs
    assert len(history.time) == epochs and history.val_loss == []
    got = _params(net)
    assert all(np.isfinite(p).all() for p in got)

    replay = bpfast.Network([64, 32, 10], dtype=dtype, seed=0)
    if epochs:
        np.testing.assert_array_equal(replay.fit(X, Y, epochs=epochs, **args).loss,
                                      history.loss)
    for start in range(0, n + bs, bs):
        if all(np.array_equal(p, q) for p, q in zip(_params(replay), got)):
            break
        if start < n:
            replay.fit(X[start:start + bs], Y[start:start + bs], epochs=1, **args)
    else:
        pytest.fail("the parameters are not those after any batch of the epoch")


def test_signal_check_setter_checks_its_arguments():
    with pytest.raises(ValueError, match="work: expected a positive number"):
        _kernels.set_signal_check(0, 0.05)
    with pytest.raises(ValueError, match="interval: expected a non-negative number"):
        _kernels.set_signal_check(1, -1.0)
    old = _kernels.set_signal_check(1, 0.0)
    assert _kernels.set_signal_check(*old) == (1, 0.0)


def test_fit_in_another_thread_is_left_running():
    """Python handles signals in the main thread only: a fit in another thread never
    takes the GIL to look, and finishes; the main thread gets the KeyboardInterrupt."""
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(2000, 64)), rng.uniform(size=(2000, 10))
    net = bpfast.Network([64, 32, 10], seed=0)
    done = []
    worker = threading.Thread(
        target=lambda: done.append(net.fit(X, Y, epochs=300, batch_size=32)))
    old = _kernels.set_signal_check(1, 0.0)
    try:
        worker.start()
        time.sleep(0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        worker.join()
    finally:
        _kernels.set_signal_check(*old)
    assert done and done[0].epochs == 300
