# cython: language_level=3, boundscheck=False, wraparound=False
"""The shuffle scikit-learn's MLP draws each epoch, without its Python overhead.

``sklearn.utils.shuffle(idx, random_state=rs)`` is ``idx[rs.permutation(len(idx))]``,
and ``RandomState.permutation(n)`` shuffles ``arange(n)`` with the Fisher-Yates loop of
numpy's legacy generator: for i = n-1 down to 1, swap entries i and j, where
j = random_interval(i) draws 32-bit (64-bit above 2^32 - 1) words from the bit generator,
masks them to the smallest all-ones mask >= i, and rejects values above i. Running that
loop on ``idx`` itself gives the same array and leaves ``rs`` in the same state, without
allocating. :func:`shuffle_like_random_state` checks itself against numpy once per
process and declines (returns False) if numpy ever draws differently.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from libc.stdint cimport uint64_t
from numpy.random cimport bitgen_t

import numpy as np

cdef object _checked = None  # None: not yet; then True or False


cdef inline uint64_t legacy_interval(bitgen_t* bg, uint64_t top) noexcept nogil:
    """A uniform draw from [0, top], as numpy's random_interval."""
    cdef uint64_t mask = top, value
    if top == 0:
        return 0
    mask |= mask >> 1
    mask |= mask >> 2
    mask |= mask >> 4
    mask |= mask >> 8
    mask |= mask >> 16
    mask |= mask >> 32
    if top <= 0xffffffffUL:
        while True:
            value = bg.next_uint32(bg.state) & mask
            if value <= top:
                return value
    while True:
        value = bg.next_uint64(bg.state) & mask
        if value <= top:
            return value


cdef bint _shuffle(object random_state, Py_ssize_t[::1] x) except -1:
    """x shuffled in place by random_state's bit generator; False if it has none."""
    bit_generator = getattr(random_state, "_bit_generator", None)
    capsule = getattr(bit_generator, "capsule", None)
    lock = getattr(bit_generator, "lock", None)
    if capsule is None or lock is None or not PyCapsule_IsValid(capsule, "BitGenerator"):
        return False
    cdef bitgen_t* bg = <bitgen_t*>PyCapsule_GetPointer(capsule, "BitGenerator")
    cdef Py_ssize_t i, j, tmp, n = x.shape[0]
    with lock:
        with nogil:
            for i in range(n - 1, 0, -1):
                j = <Py_ssize_t>legacy_interval(bg, <uint64_t>i)
                tmp = x[i]
                x[i] = x[j]
                x[j] = tmp
    return True


def _agrees_with_numpy():
    """Whether this loop reproduces RandomState.permutation here (array and state)."""
    ours = np.random.RandomState(12345)
    theirs = np.random.RandomState(12345)
    for n in (0, 1, 2, 3, 31, 257, 1000):
        idx = np.arange(100, 100 + n, dtype=np.intp)
        want = idx[theirs.permutation(n)]
        if not _shuffle(ours, idx) or not np.array_equal(idx, want):
            return False
    return ours.randint(0, 2**31, size=8).tolist() == theirs.randint(0, 2**31, size=8).tolist()


def shuffle_like_random_state(random_state, x):
    """Shuffle ``x`` (a contiguous intp array) in place exactly as
    ``x[:] = x[random_state.permutation(len(x))]`` would, advancing ``random_state``
    the same way. Returns False, with nothing changed, where that cannot be guaranteed
    (not a plain ``numpy.random.RandomState``, or a numpy that draws differently); the
    caller then uses ``permutation``."""
    global _checked
    if type(random_state) is not np.random.RandomState:
        return False
    if _checked is None:
        _checked = _agrees_with_numpy()
    if not _checked:
        return False
    return _shuffle(random_state, x)
