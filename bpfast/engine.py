"""The engine: the compiled forward pass, back-propagation and trainer behind a checked
NumPy API.

This is the only layer above the compiled core that talks to it: the public API
(``network``, ``training``) and the integrations (``sklearn``, ``distributed``) call the
functions here, the :class:`Trainer` (``_engine_trainer.py``) and :func:`tuning`
(``_tuning.py``), never ``_kernels`` itself.
"""
import threading

import numpy as np

from . import _blas_threads
from ._core import kernels as _kernels
from ._core.shuffle import shuffle_like_random_state
from ._engine_trainer import EpochOptions, Step, Trainer
from ._tuning import SWITCHES, tuning
from ._typing import Activations, ArrayLike, Gradient, Params
from ._validation import check_inputs
from .activations import activation_codes

__all__ = ["forward", "loss", "backprop", "backprop_arrays", "magnitude_bound", "Step",
           "EpochOptions", "Trainer", "tuning", "SWITCHES", "shuffle_like_random_state"]


#: Workspaces up to this many bytes are kept for the next call of the same shape.
_CACHE_LIMIT_BYTES = 256 * 2**20
_cache = threading.local()


def _checked(weights, biases, activations, X, Y=None):
    """:func:`check_inputs` with the data's finiteness taken by the compiled magnitude
    bound (one pass over bit patterns, no boolean array)."""
    return check_inputs(weights, biases, activations, X, Y, bound=_kernels.magnitude_bound)


def _cached(slot, sizes, m, dtype, make):
    """``make()``'s arrays (a tuple of lists and arrays), reused while the same thread asks
    ``slot`` for the same sizes, batch and dtype; only the last of each slot is kept, and
    only when it is at most ``_CACHE_LIMIT_BYTES``."""
    key = (tuple(sizes), m, np.dtype(dtype).str)
    held = getattr(_cache, slot, None)
    if held is not None and held[0] == key:
        return held[1]
    buffers = make()
    arrays = [a for part in buffers for a in (part if isinstance(part, list) else [part])]
    nbytes = sum(a.nbytes for a in arrays)
    setattr(_cache, slot, (key, buffers) if nbytes <= _CACHE_LIMIT_BYTES else None)
    return buffers


def _workspace(sizes, m, dtype):
    """Internal Z, A and scratch buffers for a batch of m rows, reused between calls.

    Fresh multi-megabyte buffers on every call cost page faults and cold caches (about a
    fifth of a float64 784-1024-1024-10 backprop at m = 256). The last workspace of each
    thread is kept when it is at most ``_CACHE_LIMIT_BYTES``; none of these arrays is ever
    returned to the caller.
    """
    def make():
        widest_hidden = max(sizes[1:-1], default=1)
        return ([np.empty((m, n), dtype=dtype) for n in sizes[1:]],
                [np.empty((m, n), dtype=dtype) for n in sizes[1:]],
                np.empty(m * widest_hidden, dtype=dtype))

    return _cached("workspace", sizes, m, dtype, make)


def _block_workspace(sizes, block, dtype):
    """Buffers of a backprop taken ``block`` rows at a time (see
    ``_kernels.backprop_block_rows``): Z, A and scratch for one block, the first layer's
    weights and gradient transposed, and every layer's bias gradient for one block. All
    start on a cache line (the panel kernel's threads split their columns); kept per
    thread like :func:`_workspace`."""
    def make():
        empty = _kernels.aligned_empty
        widest_hidden = max(sizes[1:-1], default=1)
        return ([empty((block, n), dtype) for n in sizes[1:]],
                [empty((block, n), dtype) for n in sizes[1:]],
                empty(block * widest_hidden, dtype),
                empty((sizes[0], sizes[1]), dtype), empty((sizes[0], sizes[1]), dtype),
                empty(sum(sizes[1:]), dtype))
    return _cached("blocks", sizes, block, dtype, make)


def forward(weights: Params, biases: Params, activations: Activations,
            X: ArrayLike) -> np.ndarray:
    """Network output ``A^L`` for the inputs ``X``, computed by the compiled kernels.

    Per layer ``Z = A_prev @ W.T + b`` and ``A = g(Z)``: the column form
    ``Z^l = W^l A^(l-1) + b^l [1 ... 1]`` on the same memory (see docs/math.md).

    Parameters
    ----------
    weights : list of ndarray
        ``weights[l-1]`` is ``W^l`` of shape ``(n^l, n^(l-1))``.
    biases : list of ndarray
        ``biases[l-1]`` is ``b^l`` of shape ``(n^l,)``.
    activations : str or list of str
        One of ``bpfast.ACTIVATIONS`` for every layer, or one name per layer.
    X : array_like of shape ``(m, n^0)``
        One sample per row. Converted to the parameters' dtype.

    Returns
    -------
    ndarray of shape ``(m, n^L)``, in the parameters' dtype (float32 or float64).
    """
    weights, biases, names, X, _ = _checked(weights, biases, activations, X)
    return _forward_checked(weights, biases, names, X)


def _forward_workspace(sizes, m, dtype):
    """Two m x (widest layer) buffers that the layers of a forward pass alternate between.

    Inference needs only the layer being computed and the one before it, and each layer's
    activation can overwrite its own product (Z and A share memory): two buffers instead
    of two per layer. For 784-1024-1024-10 at m = 8192 in float64 that is 134 MB instead
    of 337 MB, which also fits the cache limit below and so saves the page faults of fresh
    buffers on every call. Kept per thread like
    :func:`_workspace`.
    """
    widest = max(sizes[1:])
    return _cached("forward", sizes, m, dtype,
                   lambda: (np.empty(m * widest, dtype=dtype),
                            np.empty(m * widest, dtype=dtype)))


def _forward_checked(weights, biases, names, X, in_blocks=False):
    """:func:`forward` on inputs that :func:`check_inputs` has already returned.

    ``in_blocks``: where a backprop would take its rows in blocks through the panel
    kernel (``_kernels.backprop_block_rows``), so does this pass. ``Network.fit`` asks for
    it for its validation loss between epochs: OpenBLAS's threads keep spinning for a
    while after each product, and the epoch that followed found its second core taken.
    A lone call is left to OpenBLAS: after an idle pause the blocks were not reliably
    faster there (docs/performance.md)."""
    sizes = [X.shape[1]] + [w.shape[0] for w in weights]
    m = X.shape[0]
    block = _kernels.backprop_block_rows(sizes, m, X.dtype.itemsize) if in_blocks else 0
    if block:  # row blocks through the panel kernel, as backprop
        Z, A, _, W0T, _, _ = _block_workspace(sizes, block, X.dtype)
        out = np.empty((m, sizes[-1]), dtype=X.dtype)  # returned: never cached
        layers = _kernels.Layers(weights, biases, activation_codes(names), sizes[0], block,
                                 Z, A)
        with _blas_threads.for_call(_blas_threads.largest_product(sizes, block)):
            layers.forward_blocks(X, out, W0T)
        return out
    buffers = _forward_workspace(sizes, m, X.dtype)
    # layer l's product and activation share buffer l % 2; the last activation is `out`
    Z = [buffers[l % 2][:m * n].reshape(m, n) for l, n in enumerate(sizes[1:])]
    out = np.empty((m, sizes[-1]), dtype=X.dtype)  # returned: never cached
    layers = _kernels.Layers(weights, biases, activation_codes(names), sizes[0], m, Z,
                             Z[:-1] + [out])
    with _blas_threads.for_call(_blas_threads.largest_product(sizes, m)):
        layers.forward(X)
    return out


def loss(weights: Params, biases: Params, activations: Activations, X: ArrayLike,
         Y: ArrayLike) -> float:
    """The error ``E = 1/(2m) sum_c sum_i (A^L_ic - Y_ic)^2`` as a float.

    The forward pass runs in the parameters' dtype; the sum is accumulated in float64.
    """
    weights, biases, names, X, Y = _checked(weights, biases, activations, X, Y)
    return _squared_error(_forward_checked(weights, biases, names, X), Y)


def _squared_error(A, Y):
    """``sum (A - Y)^2 / (2m)`` for outputs ``A`` and targets ``Y`` of shape (m, n^L)."""
    r = A.astype(np.float64) - Y
    return float(np.sum(r * r) / (2 * A.shape[0]))


def backprop(weights: Params, biases: Params, activations: Activations, X: ArrayLike,
             Y: ArrayLike) -> Gradient:
    """The error ``E`` and its gradient, by compiled back-propagation.

    ``E = 1/(2m) sum_c sum_i (A^L_ic - Y_ic)^2``; working backwards from
    ``dA^L = (A^L - Y)/m``: ``dZ^l = dA^l (.) g'(Z^l)``, ``dW^l = dZ^l (A^(l-1))^T``,
    ``db^l = dZ^l [1 ... 1]^T`` and ``dA^(l-1) = (W^l)^T dZ^l``.

    Parameters
    ----------
    weights, biases, activations, X
        As for :func:`forward`.
    Y : array_like of shape ``(m, n^L)``
        Targets, one per row.

    Returns
    -------
    E : float
    dW : list of ndarray
        ``dW[l-1] = dE/dW^l``, shaped like ``weights[l-1]``.
    db : list of ndarray
        ``db[l-1] = dE/db^l``, shaped like ``biases[l-1]``.
    """
    weights, biases, names, X, Y = _checked(weights, biases, activations, X, Y)
    m = X.shape[0]
    dtype = X.dtype
    sizes = [X.shape[1]] + [w.shape[0] for w in weights]
    dW = [np.empty_like(w) for w in weights]
    db = [np.empty_like(b) for b in biases]
    block = _kernels.backprop_block_rows(sizes, m, dtype.itemsize)
    if block:
        Z, A, scratch, W0T, dW0T, db_block = _block_workspace(sizes, block, dtype)
        layers = _kernels.Layers(weights, biases, activation_codes(names), sizes[0],
                                 block, Z, A, dW, db)
        with _blas_threads.for_call(_blas_threads.largest_product(sizes, block)):
            E = layers.backprop_blocks(X, Y, scratch, W0T, dW0T, db_block)
        return float(E), dW, db
    Z, A, scratch = _workspace(sizes, m, dtype)
    layers = _kernels.Layers(weights, biases, activation_codes(names), sizes[0], m,
                             Z, A, dW, db)
    with _blas_threads.for_call(_blas_threads.largest_product(sizes, m)):
        E = layers.backprop(X, Y, scratch)
    return float(E), dW, db


def backprop_arrays(weights, biases, activations, X, Y):
    """:func:`backprop` in one pass over all rows, on arrays already checked.

    For callers that check their data once and then take many gradients (the Dask
    workers, one call per chunk): ``weights``, ``biases``, ``X`` and ``Y`` must be
    C-contiguous, aligned arrays of one dtype (the compiled core raises otherwise);
    ``activations`` one name per layer. Returns ``(E, dW, db)`` as :func:`backprop`.
    """
    m = X.shape[0]
    sizes = [X.shape[1]] + [w.shape[0] for w in weights]
    Z, A, scratch = _workspace(sizes, m, X.dtype)
    dW = [np.empty_like(w) for w in weights]
    db = [np.empty_like(b) for b in biases]
    layers = _kernels.Layers(list(weights), list(biases), activation_codes(activations),
                             sizes[0], m, Z, A, dW, db)
    return float(layers.backprop(X, Y, scratch)), dW, db


def magnitude_bound(X):
    """``max |X|`` of a C-contiguous float array in one compiled pass over its bits;
    infinite when a value is not finite (so a finiteness check needs no second pass)."""
    return _kernels.magnitude_bound(X)
