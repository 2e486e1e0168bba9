"""Which BLAS the kernels' large matrix products call.

bpfast's kernels reach BLAS without a link step. Two libraries are always at hand:

- ``numpy``: the OpenBLAS inside NumPy's wheel (``numpy.libs`` / ``numpy/.dylibs``),
  found by file name and called through its ``dgemm``/``sgemm`` symbol. Preferred: it is
  the library NumPy's own ``@`` uses (the GEMM rate users compare against), it is often a
  newer OpenBLAS than SciPy's, and sharing NumPy's thread pool avoids two pools of
  spinning threads competing for the same cores.
- ``scipy``: ``scipy.linalg.cython_blas``, reached through the function pointers it
  exports, and imported only when chosen: the fallback when NumPy's library cannot be
  found (a NumPy built against a system BLAS, for instance). Importing SciPy's linear
  algebra costs about 27 MB of resident memory, which ``import bpfast`` thus avoids.

Set ``BPFAST_BLAS=scipy`` (or ``numpy``) before importing bpfast to choose;
:func:`bpfast.blas_info` tells which is in use. Thread counts follow the library's usual
controls (``OPENBLAS_NUM_THREADS``, ``threadpoolctl.threadpool_limits``).
"""
import ctypes
import glob
import os

import numpy as np

from . import _blas_threads
from ._core import kernels as _kernels

#: Symbol names to try, with whether they take 64-bit integers (ILP64).
_SYMBOLS = [
    ("scipy_{}gemm_64_", True),   # NumPy >= 2 wheels: scipy-openblas64, prefixed
    ("{}gemm_64_", True),
    ("scipy_{}gemm_", False),
    ("{}gemm_", False),
]

_state = {"backend": "none", "library": None}


def _numpy_blas_candidates():
    root = os.path.dirname(np.__file__)
    patterns = [
        os.path.join(root, os.pardir, "numpy.libs", "*openblas*"),
        os.path.join(root, ".dylibs", "*openblas*"),
    ]
    found = []
    for pattern in patterns:
        found.extend(sorted(glob.glob(pattern)))
    return [os.path.normpath(p) for p in found]


def _find_numpy_gemm():
    """(dgemm address, sgemm address, ilp64, path) of NumPy's OpenBLAS, or None."""
    for path in _numpy_blas_candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, ilp64 in _SYMBOLS:
            try:
                d = getattr(lib, pattern.format("d"))
                s = getattr(lib, pattern.format("s"))
            except AttributeError:
                continue
            daddr = ctypes.cast(d, ctypes.c_void_p).value
            saddr = ctypes.cast(s, ctypes.c_void_p).value
            if daddr and saddr:
                return daddr, saddr, ilp64, path
    return None


#: Names of OpenBLAS's thread-count getter, by how its library prefixes symbols.
_THREAD_SYMBOLS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                   "scipy_openblas_get_num_threads", "openblas_get_num_threads")


def _thread_getter(path):
    """Address of ``int get_num_threads(void)`` in the library at ``path``, or 0.

    The panel kernel (``_core/src/panel_gemm.inc``) takes its thread count from it on every product,
    so ``OPENBLAS_NUM_THREADS`` and ``threadpoolctl.threadpool_limits`` bound bpfast's own
    threads as they bound OpenBLAS's.
    """
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return 0
    for name in _THREAD_SYMBOLS:
        try:
            return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
        except AttributeError:
            continue
    return 0


def _scipy_gemm():
    """(dgemm address, sgemm address) of ``scipy.linalg.cython_blas``, or None."""
    try:
        from scipy.linalg import cython_blas
    except ImportError:
        return None
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype = ctypes.c_char_p
    name.argtypes = [ctypes.py_object]
    capi = cython_blas.__pyx_capi__
    return tuple(get(capi[f], name(capi[f])) for f in ("dgemm", "sgemm"))


def _probe(backend):
    """A tiny product through ``backend`` must equal NumPy's."""
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        A = rng.standard_normal((7, 5)).astype(dtype)
        B = rng.standard_normal((6, 5)).astype(dtype)
        got = _kernels.gemm_probe(A, B)  # A @ B.T through the kernels' GEMM
        if not np.allclose(got, A @ B.T, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"{backend} BLAS gave a wrong product")


def use(backend):
    """Route the kernels' large products through ``"numpy"`` or ``"scipy"`` BLAS.

    Returns the backend now in use: ``"numpy"`` falls back to ``"scipy"`` when NumPy's
    library cannot be found or fails a probe product, and ``"none"`` (every product in
    plain loops: correct, slow for large layers) is left only if SciPy is missing too.
    """
    if backend not in ("numpy", "scipy"):
        raise ValueError(f"backend: expected 'numpy' or 'scipy', got {backend!r}")
    if backend == "numpy":
        found = _find_numpy_gemm()
        if found is not None:
            daddr, saddr, ilp64, path = found
            if _try(daddr, saddr, ilp64, "numpy"):
                _kernels.set_blas_threads_function(_thread_getter(path))
                _blas_threads.configure(path)
                _state.update(backend="numpy", library=path)
                return "numpy"
    _kernels.set_blas_threads_function(0)
    _blas_threads.configure(None)
    found = _scipy_gemm()
    if found is not None and _try(*found, False, "scipy"):
        _state.update(backend="scipy", library="scipy.linalg.cython_blas")
        return "scipy"
    _kernels.set_blas(0, 0, False)
    _state.update(backend="none", library=None)
    return "none"


def _try(daddr, saddr, ilp64, backend):
    """Route products through these functions if they pass the probe; else unset."""
    _kernels.set_blas(daddr, saddr, ilp64)
    try:
        _probe(backend)
    except Exception:
        _kernels.set_blas(0, 0, False)
        return False
    return True


def blas_info():
    """``{"backend": "numpy", "scipy" or "none", "library": path, module or None}``."""
    return dict(_state)


def configure():
    """Choose the backend at import: ``BPFAST_BLAS`` if set, else NumPy's library."""
    choice = os.environ.get("BPFAST_BLAS", "numpy").strip().lower() or "numpy"
    if choice not in ("numpy", "scipy"):
        choice = "numpy"
    return use(choice)
