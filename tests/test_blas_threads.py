"""The engine's small calls, and every call on a busy machine, hold the BLAS to one thread
and give its count back after."""
import os
import threading

import numpy as np
import pytest

import bpfast
from bpfast import _blas_threads, engine

pytestmark = pytest.mark.skipif(_blas_threads._blas["set"] is None,
                                reason="the BLAS in use has no thread-count functions")

SMALL = _blas_threads.OPENBLAS_THREADS_FROM
LARGE = _blas_threads.ONE_THREAD_BELOW


def threads():
    return _blas_threads._blas["get"]()


@pytest.fixture
def two_threads():
    before = threads()
    _blas_threads._blas["set"](2)
    yield
    _blas_threads._blas["set"](before)


def test_small_call_runs_on_one_thread_and_restores(two_threads):
    with _blas_threads.for_call(SMALL):
        assert threads() == 1
    assert threads() == 2


def test_calls_outside_the_band_keep_the_count(two_threads, run_queue):
    run_queue(1)  # a quiet machine
    for work in (0, SMALL - 1, LARGE, 10 * LARGE):
        with _blas_threads.for_call(work):
            assert threads() == 2


def test_nested_and_concurrent_holds_restore_once(two_threads):
    inside, release = threading.Event(), threading.Event()

    def other():
        with _blas_threads.for_call(SMALL):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with _blas_threads.for_call(SMALL):
        t.start()
        inside.wait(10)
    assert threads() == 1  # the other thread's call still holds it
    release.set()
    t.join()
    assert threads() == 2


def test_a_user_limit_of_one_stays(two_threads):
    _blas_threads._blas["set"](1)
    with _blas_threads.for_call(SMALL):
        assert threads() == 1
    assert threads() == 1


def test_largest_product():
    assert _blas_threads.largest_product([64, 64, 10], 359) == 359 * 64 * 64
    assert _blas_threads.largest_product([784, 128, 10], 2) == 2 * 784 * 128


def test_engine_asks_by_its_largest_product(monkeypatch, two_threads):
    asked = []
    real = _blas_threads.for_call

    def spy(work):
        asked.append(work)
        return real(work)

    monkeypatch.setattr(_blas_threads, "for_call", spy)
    net = bpfast.Network([64, 64, 10], activations=["relu", "softmax"], seed=0)
    X = np.random.default_rng(0).standard_normal((359, 64))
    A = net.forward(X)
    assert asked == [359 * 64 * 64] and threads() == 2
    np.testing.assert_allclose(A, bpfast.reference.forward(net.weights, net.biases,
                                                           net.activations, X), rtol=1e-12)
    E, dW, db = engine.backprop(net.weights, net.biases, ["relu", "sigmoid"], X,
                                np.zeros((359, 10)))
    assert len(asked) == 2 and threads() == 2


@pytest.fixture
def run_queue(monkeypatch, tmp_path):
    """Point the busy check at a file whose run queue the test writes."""
    path = tmp_path / "loadavg"
    monkeypatch.setattr(_blas_threads, "LOADAVG", str(path))
    monkeypatch.setattr(_blas_threads, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(_blas_threads, "_own_runnable", lambda: 1)  # the asking thread

    def set_running(n):
        path.write_text(f"0.50 0.40 0.30 {n}/123 4567\n")
        _blas_threads._queue["read_at"] = -1e9  # read it again
    yield set_running
    _blas_threads._queue["read_at"] = -1e9


def test_busy_when_other_runnable_threads_fill_the_cpus(run_queue):
    run_queue(3)  # this thread and two others on 2 CPUs
    assert _blas_threads.machine_busy()
    run_queue(2)
    assert not _blas_threads.machine_busy()


def test_own_runnable_threads_are_not_neighbours(run_queue, monkeypatch):
    """This process's BLAS or pool helpers, still spinning after a task, do not make the
    machine look busy."""
    run_queue(3)
    monkeypatch.setattr(_blas_threads, "_own_runnable", lambda: 2)
    assert not _blas_threads.machine_busy()


def test_own_runnable_counts_this_thread_and_spinning_helpers():
    """Read from /proc/self/task: the asking thread at least, and a thread spinning
    beside it while it runs."""
    assert _blas_threads._own_runnable() >= 1
    if not os.path.isdir(_blas_threads.TASKS):
        pytest.skip("no /proc/self/task here")
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        seen = 1
        for _ in range(50):
            seen = max(seen, _blas_threads._own_runnable())
            if seen >= 2:
                break
    finally:
        stop.set()
        spinner.join()
    assert seen >= 2


def test_unreadable_run_queue_is_not_busy(run_queue, monkeypatch, tmp_path):
    monkeypatch.setattr(_blas_threads, "LOADAVG", str(tmp_path / "missing"))
    assert not _blas_threads.machine_busy()


def test_large_call_on_a_busy_machine_runs_on_one_thread(run_queue, two_threads):
    run_queue(5)
    with _blas_threads.for_call(LARGE):
        assert threads() == 1
    assert threads() == 2
    run_queue(1)
    with _blas_threads.for_call(LARGE):
        assert threads() == 2
