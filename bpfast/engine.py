"""The engine: the compiled forward pass, back-propagation and trainer behind a checked
NumPy API.

This is the only layer above the compiled core that talks to it: the public API
(``network``, ``training``) and the integrations (``sklearn``, ``distributed``) call the
functions and the :class:`Trainer` here, never ``_kernels`` itself.
"""
import contextlib
import math
import numbers
import threading
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _kernels
from ._typing import Activations, ArrayLike, Gradient, Params
from ._validation import check_inputs
from .activations import activation_codes
from .registry import LOSSES, OPTIMIZERS

__all__ = ["forward", "loss", "backprop", "backprop_arrays", "magnitude_bound", "Step",
           "Trainer", "tuning", "SWITCHES"]


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
        layers.forward_blocks(X, out, W0T)
        return out
    buffers = _forward_workspace(sizes, m, X.dtype)
    # layer l's product and activation share buffer l % 2; the last activation is `out`
    Z = [buffers[l % 2][:m * n].reshape(m, n) for l, n in enumerate(sizes[1:])]
    out = np.empty((m, sizes[-1]), dtype=X.dtype)  # returned: never cached
    layers = _kernels.Layers(weights, biases, activation_codes(names), sizes[0], m, Z,
                             Z[:-1] + [out])
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
        E = layers.backprop_blocks(X, Y, scratch, W0T, dW0T, db_block)
        return float(E), dW, db
    Z, A, scratch = _workspace(sizes, m, dtype)
    layers = _kernels.Layers(weights, biases, activation_codes(names), sizes[0], m,
                             Z, A, dW, db)
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


@dataclass(frozen=True)
class Step:
    """The settings every optimizer step of an epoch uses (see :class:`Trainer`).

    ``momentum`` serves the momentum and Nesterov optimizers, ``beta1``, ``beta2`` and
    ``epsilon`` Adam; ``l2`` is the penalty's coefficient (the gradient gains
    ``l2 / s * W``, ``s`` the batch's rows or weight sum) and ``loss_scale`` multiplies
    the data term of the loss and its gradient.
    """

    learning_rate: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    l2: float = 0.0
    loss_scale: float = 1.0


class Trainer:
    """Training one network with one batch size: the engine's face of the compiled
    trainer, for ``Network.fit`` and the integrations (scikit-learn, Dask).

    Built once from the network's parameter arrays, which it updates in place; it owns
    every buffer of a batch and the optimizer state, so an epoch allocates nothing.

    Parameters
    ----------
    weights, biases : lists of writable, C-contiguous float32 or float64 arrays
        ``W^l`` of shape ``(n^l, n^(l-1))`` and ``b^l`` of shape ``(n^l,)``.
    activations : sequence of str
        One activation name per layer (an alias is accepted).
    batch_size : int
        The most rows of a batch.
    loss : str
        A name of :data:`bpfast.registry.LOSSES`.
    optimizer : str
        A name of :data:`bpfast.registry.OPTIMIZERS`.
    n_inputs : int, optional
        ``n^0``; by default ``weights[0].shape[1]``. A caller that knows the network's
        declared sizes passes them, so that mismatched weights are reported.
    """

    def __init__(self, weights, biases, activations, batch_size, loss="mse",
                 optimizer="sgd", n_inputs=None):
        self._args = self._kernel_args(weights, biases, activations, batch_size, loss,
                                       optimizer, n_inputs)
        self._nesterov = OPTIMIZERS[optimizer].nesterov
        self._core = _kernels.Trainer(*self._args)

    @staticmethod
    def _kernel_args(weights, biases, activations, batch_size, loss, optimizer, n_inputs):
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        opt = OPTIMIZERS[optimizer]
        if n_inputs is None:
            n_inputs = np.shape(weights[0])[1]
        return (weights, biases, activation_codes(activations), n_inputs, batch_size,
                LOSSES[loss].code, opt.code, opt.velocity)

    def reuse(self, weights, biases, activations, batch_size, loss="mse",
              optimizer="sgd", n_inputs=None):
        """Whether this trainer serves ``Trainer(...)`` with these arguments (the very
        same parameter arrays, activations, batch size, loss and optimizer); if so it is
        reset to a new trainer's state (optimizer state zero) and True is returned."""
        args = self._kernel_args(weights, biases, activations, batch_size, loss, optimizer,
                                 n_inputs)
        if not self._core.reusable(*args):
            return False
        self._core.reset()
        return True

    def epoch(self, X, Y, sample_weight, order, step, t=0, *, guard=False,
              data_bound=None, skip_weightless=False):
        """One epoch over ``(X, Y)`` in batches; returns ``(loss_sum, t, bad_batch)``.

        ``X``, ``Y`` (and ``sample_weight``, or None) are C-contiguous arrays of the
        parameters' dtype; ``order`` an intp permutation of the rows, or None for data
        order; ``step`` a :class:`Step`; ``t`` the optimizer steps taken so far (Adam's
        bias correction). ``loss_sum`` adds each batch's loss times its rows;
        ``bad_batch`` is -1 or the index of the batch whose loss was not finite, where
        the epoch stopped before updating. ``guard``: also stop before an update that
        would overflow a parameter (then :attr:`overflowed`); ``data_bound`` the data's
        ``(max |X|, max |Y|, largest weight or 1)`` when known; ``skip_weightless``: pass
        over batches of zero total weight. Signals are handled between batches (a
        KeyboardInterrupt leaves the parameters of the last batch done).
        """
        return self._core.epoch(
            X, Y, sample_weight, order, step.learning_rate, step.momentum, self._nesterov,
            step.beta1, step.beta2, step.epsilon, step.l2, step.loss_scale, t, guard,
            data_bound, skip_weightless=skip_weightless)

    def gradient(self, X, Y, sample_weight=None, l2=0.0, loss_scale=1.0):
        """The loss of all rows of ``(X, Y)`` (at most ``batch_size``) with the L2 term
        ``l2 / (2 s) sum ||W||^2``, and its gradient into :attr:`gradients`; no update."""
        return self._core.gradient(X, Y, sample_weight, l2, loss_scale)

    @property
    def gradients(self):
        """``(dW, db)``: the buffers the last gradient was written to (not copies)."""
        return self._core.gradients

    @property
    def state(self):
        """The optimizer state, in place: the velocities (momentum, Nesterov) or Adam's
        first then second moments, weights' entries before biases'; empty for SGD."""
        return self._core.state

    @property
    def overflowed(self):
        """Whether the last guarded epoch stopped before an update that would overflow."""
        return self._core.overflowed

    @property
    def nbytes(self):
        """Bytes of the trainer's own buffers (the parameters not counted)."""
        return self._core.nbytes

    def parameters_finite(self):
        """Whether every weight and bias is finite."""
        return self._core.parameters_finite()


# --------------------------------------------------------------------------------------
# Tuning: the compiled core's route switches, scoped
# --------------------------------------------------------------------------------------

def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _count(value, name, least=0):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < least:
        raise ValueError(f"{name}: expected an integer of at least {least}, got {value}")
    return int(value)


def _positive_count(value, name):
    return _count(value, name, least=1)


def _seconds(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number of seconds, got {value!r}")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name}: expected a finite, non-negative number, got {value}")
    return float(value)


class _Switch(NamedTuple):
    setter: str  # the compiled core's setter, which returns the old value(s)
    field: int  # this switch's position among the setter's arguments
    check: Callable[[Any, str], Any]  # validates a value (the error names the switch)
    doc: str


#: Every switch of :func:`tuning`: name -> how it is set, and what it does.
SWITCHES = {
    "small_gemm_limit": _Switch(
        "set_small_gemm_limit", 0, _count,
        "products with m * n * k up to this run as plain loops, not through the BLAS "
        "(0: the BLAS everywhere)"),
    "panel_gemm": _Switch(
        "set_panel_gemm", 0, _flag,
        "mid-sized products may take the panel kernel on bpfast's thread pool"),
    "panel_threads": _Switch(
        "set_panel_gemm", 1, _count,
        "threads of the panel kernel (0: the BLAS's own count)"),
    "first_transpose_limit": _Switch(
        "set_first_transpose_limit", 0, _count,
        "trainers built within keep the first layer transposed when "
        "batch_size * n^0 * n^1 is at most this"),
    "fused_update_limit": _Switch(
        "set_fused_update_limit", 0, _count,
        "layers with batch * n^l * n^(l-1) up to this take the fused gradient-and-update "
        "kernel in momentum and Adam steps (0: never; always 0 without AVX-512)"),
    "gradient_block": _Switch(
        "set_gradient_block", 0, _positive_count,
        "momentum and Adam steps take large layers' gradients this many entries at a time"),
    "direct_rows": _Switch(
        "set_direct_rows", 0, _flag,
        "a small transposed first layer reads a shuffled batch's rows where they are"),
    "avx512_vector_math": _Switch(
        "set_avx512_vector_math", 0, _flag,
        "exp, tanh, sigmoid, silu and the pointwise passes may take their AVX-512 versions"),
    "vector_products": _Switch(
        "set_vector_products", 0, _flag,
        "one-row products may take the AVX-512 vector kernels rather than the BLAS"),
    "signal_work": _Switch(
        "set_signal_check", 0, _positive_count,
        "training reads the clock after this many multiply-adds"),
    "signal_interval": _Switch(
        "set_signal_check", 1, _seconds,
        "and then handles signals when this many seconds have passed"),
}

#: Setters of several values, and arguments they always accept: set, they return the
#: values in force, which fill the fields a :func:`tuning` call leaves out.
_PROBES = {"set_panel_gemm": (False, 0), "set_signal_check": (1, 0.0)}


@contextlib.contextmanager
def tuning(**switches):
    """Within the ``with`` block, the compiled core's routes as ``switches`` say; the
    previous settings come back on leaving it, also when it raises.

    For tests and benchmarks, which hold each route against the others: the switches are
    process-global (every thread sees them, and a trainer reads some when it is built),
    so use it where nothing else trains at the same time. The names are those of
    :data:`SWITCHES`; an unknown name or a bad value raises before anything changes.

    >>> with tuning(panel_gemm=False, small_gemm_limit=0):  # every product to the BLAS
    ...     pass
    """
    wanted = {}
    for name, value in switches.items():
        switch = SWITCHES.get(name)
        if switch is None:
            raise TypeError(f"tuning: unknown switch {name!r}; the switches are "
                            f"{', '.join(SWITCHES)}")
        wanted.setdefault(switch.setter, {})[switch.field] = switch.check(value, name)
    undo = []
    try:
        for setter_name, fields in wanted.items():
            setter = getattr(_kernels, setter_name)
            if setter_name in _PROBES:
                old = setter(*_PROBES[setter_name])
                undo.append((setter, old))
                setter(*(fields.get(k, v) for k, v in enumerate(old)))
            else:
                undo.append((setter, (setter(fields[0]),)))
        yield
    finally:
        for setter, old in reversed(undo):
            setter(*old)
