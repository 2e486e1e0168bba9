"""One BLAS thread for the engine's calls that are too small to gain from more.

OpenBLAS splits every product above about 2^18 multiply-adds over its threads. Its
helpers go to sleep between calls that are far apart (a forward pass after an epoch of
small products, or from a ``fit`` callback), and the call then waits until every helper it
woke is running: on a quiet machine that wait costs about what the second core saves for
products of up to a couple of million multiply-adds, and beside a process that keeps the
cores busy it costs a scheduler time slice, many times the product itself
(docs/performance.md, "Thread pools side by side"). So a call whose largest product is
below ``ONE_THREAD_BELOW`` runs with the BLAS held to one thread, as
``threadpoolctl.threadpool_limits(1)`` would do, for the price of two function calls.

A larger call keeps the BLAS's threads unless the machine is busy: when the threads
ready to run, other than this process's own, already fill every CPU this process may use
(the run queue in /proc/loadavg less this process's runnable threads in /proc/self/task,
read at most every ``BUSY_RECHECK_SECONDS``), OpenBLAS's helpers
would spin and wait against those processes instead of working, and the caller would
wait for them; the call then runs on one thread too, at the speed of the core it has.

The limit is the library's, so for the call's duration it also holds NumPy products that
other Python threads start; calls from several threads share one hold (a count under a
lock), and the count from before is restored when the last one ends.
"""
import ctypes
import os
import threading
import time

#: Multiply-adds of a call's largest product from which OpenBLAS threads it at all.
OPENBLAS_THREADS_FROM = 1 << 18
#: Multiply-adds of a call's largest product from which it keeps the BLAS's threads.
ONE_THREAD_BELOW = 1 << 21

_SET_SYMBOLS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                "scipy_openblas_set_num_threads", "openblas_set_num_threads")
_GET_SYMBOLS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                "scipy_openblas_get_num_threads", "openblas_get_num_threads")

#: Seconds a reading of the run queue serves before it is read again.
BUSY_RECHECK_SECONDS = 0.25
LOADAVG = "/proc/loadavg"
TASKS = "/proc/self/task"

_lock = threading.Lock()
_queue = {"read_at": -1e9, "busy": False}
_blas = {"get": None, "set": None}
_hold = {"count": 0, "before": 1}


def _symbol(lib, names):
    for name in names:
        f = getattr(lib, name, None)
        if f is not None:
            return f
    return None


def configure(path):
    """Use the thread-count functions of the OpenBLAS at ``path`` (None: hold nothing)."""
    get = setter = None
    if path is not None:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            lib = None
        if lib is not None:
            get, setter = _symbol(lib, _GET_SYMBOLS), _symbol(lib, _SET_SYMBOLS)
    if get is None or setter is None:
        get = setter = None
    else:
        get.restype, get.argtypes = ctypes.c_int, []
        setter.restype, setter.argtypes = None, [ctypes.c_int]
    with _lock:
        _blas.update(get=get, set=setter)


class _OneThread:
    """The BLAS held to one thread inside the block (see the module's docstring)."""

    __slots__ = ()

    def __enter__(self):
        with _lock:
            if _hold["count"] == 0:
                _hold["before"] = _blas["get"]()
                if _hold["before"] > 1:
                    _blas["set"](1)
            _hold["count"] += 1
        return self

    def __exit__(self, *exc):
        with _lock:
            _hold["count"] -= 1
            if _hold["count"] == 0 and _hold["before"] > 1:
                _blas["set"](_hold["before"])
        return False


class _AsItIs:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_ONE_THREAD, _AS_IT_IS = _OneThread(), _AsItIs()


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_runnable():
    """This process's threads that are running or ready to run (at least the one asking):
    its BLAS's and its thread pool's helpers still spinning after a task are its own
    work, not a neighbour's."""
    own = 0
    try:
        for tid in os.listdir(TASKS):
            try:
                with open(os.path.join(TASKS, tid, "stat"), "rb") as f:
                    # the state follows the parenthesised name, which may hold spaces
                    own += f.read().rsplit(b")", 1)[1].split()[0] == b"R"
            except (OSError, IndexError):
                pass
    except OSError:
        pass
    return max(own, 1)


def machine_busy():
    """Whether other processes' runnable threads fill every CPU this process may use
    (False where the run queue cannot be read)."""
    now = time.monotonic()
    if now - _queue["read_at"] < BUSY_RECHECK_SECONDS:
        return _queue["busy"]
    try:
        with open(LOADAVG, "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        running = 0
    busy = running - _own_runnable() >= _usable_cpus()
    _queue.update(read_at=now, busy=busy)
    return busy


def for_call(largest_product):
    """The block to run a call in whose largest product has ``largest_product``
    multiply-adds: one BLAS thread below ``ONE_THREAD_BELOW`` or on a busy machine (from
    the size where OpenBLAS threads at all), else as it is."""
    if _blas["set"] is None or largest_product < OPENBLAS_THREADS_FROM:
        return _AS_IT_IS
    if largest_product < ONE_THREAD_BELOW or machine_busy():
        return _ONE_THREAD
    return _AS_IT_IS


def largest_product(sizes, rows):
    """Multiply-adds of the largest product of a pass over ``rows`` rows of a network."""
    return rows * max(a * b for a, b in zip(sizes[:-1], sizes[1:]))
