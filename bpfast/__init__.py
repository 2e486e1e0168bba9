"""bpfast: fast, exact back-propagation for fully connected networks.

The forward pass and back-propagation run in typed Cython kernels over NumPy
buffers; :mod:`bpfast.reference` holds the same math in plain NumPy.

>>> import numpy as np, bpfast
>>> net = bpfast.Network([4, 8, 2], activations="tanh", seed=0)
>>> X, Y = np.ones((5, 4)), np.zeros((5, 2))
>>> E, dW, db = net.gradient(X, Y)
"""
try:
    from ._core import kernels as _kernels  # noqa: F401  (compiled; there is no pure-Python fallback)
except ImportError as err:  # pragma: no cover - only in an unbuilt source tree
    import os as _os

    raise ImportError(
        f"bpfast's compiled kernels are missing from {_os.path.dirname(__file__)} ({err}). "
        "Install the package with `pip install .` and import it from outside the source "
        "tree, or build in place with `python setup.py build_ext --inplace`."
    ) from err

from ._blas_backend import blas_info, configure as _configure_blas
from ._core.kernels import cpu_features

_configure_blas()

from . import callbacks, metrics, reference, schedules
from . import onnx as _onnx  # noqa: F401  (registers the drop-ins once skl2onnx is imported)
from .activations import ACTIVATIONS
from .engine import backprop, forward, loss
from .gradcheck import check_gradient
from .io import ModelFileError, load
from .network import Network
from .training import DivergenceError, History

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "DivergenceError",
    "History",
    "ModelFileError",
    "Network",
    "load",
    "backprop",
    "blas_info",
    "callbacks",
    "check_gradient",
    "cpu_features",
    "forward",
    "loss",
    "metrics",
    "reference",
    "schedules",
    "__version__",
]
