"""The engine's trainer: one network trained with one batch size, by names.

``Network.fit``, the scikit-learn estimators and the Dask workers train through
:class:`Trainer` (exported as ``bpfast.engine.Trainer``); it translates the registry's
names into the compiled core's codes and groups each step's settings in :class:`Step`.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np

from . import _blas_threads
from ._core import kernels as _kernels
from .activations import activation_codes
from .registry import LOSSES, OPTIMIZERS

__all__ = ["EpochOptions", "Step", "Trainer"]


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


class EpochOptions(NamedTuple):
    """How an epoch guards its steps and treats weightless batches (see
    :meth:`Trainer.epoch`, whose keywords these are): what the compiled epoch reads."""

    guard: bool = False
    data_bound: Optional[Tuple[float, float, float]] = None
    skip_weightless: bool = False


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
        self._core = _kernels.Trainer(*self._args)
        # the BLAS threads a batch's products are worth (see _blas_threads)
        sizes = [self._args[3]] + [np.shape(w)[0] for w in weights]
        self._batch_work = _blas_threads.largest_product(sizes, batch_size)

    @staticmethod
    def _kernel_args(weights, biases, activations, batch_size, loss, optimizer, n_inputs):
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if n_inputs is None:
            n_inputs = np.shape(weights[0])[1]
        return (weights, biases, activation_codes(activations), n_inputs, batch_size,
                LOSSES[loss].code, OPTIMIZERS[optimizer])

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
        options = EpochOptions(guard, data_bound, skip_weightless)
        with _blas_threads.for_call(self._batch_work):
            return self._core.epoch(X, Y, sample_weight, order, step, t, options)

    def gradient(self, X, Y, sample_weight=None, l2=0.0, loss_scale=1.0):
        """The loss of all rows of ``(X, Y)`` (at most ``batch_size``) with the L2 term
        ``l2 / (2 s) sum ||W||^2``, and its gradient into :attr:`gradients`; no update."""
        with _blas_threads.for_call(self._batch_work):
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
