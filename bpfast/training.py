"""``Network.fit``: the Python side of training (checks, history, stopping, progress).

Each epoch is one call into the compiled ``_kernels.Trainer.epoch``, which runs every
batch (forward, backward, optimizer step) without the GIL and without allocating.
Python is entered once per epoch: for the history, validation, early stopping, the
callback and the progress bar.
"""
import math
import numbers
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import _targets, engine
from ._core import kernels as _kernels
from ._validation import (as_kernel_array, check_data, check_finite, check_positive_int,
                          refuse_masked)
from .activations import activation_codes
from .callbacks import Callback, FitState
from .metrics import check_metrics, evaluate
from .reference import loss_value
from .schedules import checked_rate, resolve

#: Optimizer name -> (kernel optimizer code, keeps a velocity, nesterov)
OPTIMIZERS = {
    "sgd": (0, False, False),
    "momentum": (0, True, False),
    "nesterov": (0, True, True),
    "adam": (1, False, False),
}

#: Loss name -> (kernel loss code, required output activation or None)
LOSSES = {
    "mse": (0, None),
    "cross_entropy": (1, "softmax"),
    "binary_cross_entropy": (2, "sigmoid"),
    "poisson": (3, "exp"),
}


class DivergenceError(FloatingPointError):
    """Training produced a loss that is NaN or infinite."""


@dataclass
class History:
    """What happened during :meth:`Network.fit`, one entry per finished epoch.

    Attributes
    ----------
    loss : list of float
        Mean training loss over the epoch's batches (each batch counted once per row).
    val_loss : list of float
        Loss on ``validation_data`` after each epoch (empty without it).
    metrics : dict of str to list of float
        Every value recorded per epoch by name: ``"loss"``, ``"val_loss"`` (with
        validation data; the same lists as ``loss`` and ``val_loss``), each metric asked
        of ``fit`` and, with validation data, its ``"val_"`` form.
    learning_rate : list of float
        The learning rate each epoch used.
    time : list of float
        Wall time of each epoch in seconds, validation included.
    stopped_early : bool
        Whether early stopping ended training.
    best_epoch : int or None
        0-based epoch of the best monitored loss, with early stopping.
    """

    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    time: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    learning_rate: list = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int = None

    @property
    def epochs(self):
        """Number of finished epochs."""
        return len(self.loss)


def _positive_float(value, name):
    if type(value) is float and 0 < value < math.inf:  # the usual case, without ABCs
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value}")
    return float(value)


def _unit_interval(value, name):
    if type(value) is float and 0 <= value < 1:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value}")
    return float(value)


def _choice(value, options, name):
    if not (isinstance(value, str) and value in options):
        raise ValueError(f"{name}: expected one of {', '.join(options)}, got {value!r}")
    return value


#: A fit keeps its trainer (buffers and optimizer state, see ``_kernels.Trainer``) for
#: the network's next fit when the trainer's own buffers take at most this many bytes:
#: building one costs a few per cent of a small network's epoch, and a mid-sized one's
#: buffers cost as much again in page faults when first written. A large network's
#: buffers are not worth keeping beside its epoch.
TRAINER_CACHE_BYTES = 4 << 20

# network -> the trainer its last fit used (weak keys: nothing outlives the network);
# fits in several threads take and put back under the lock
_TRAINERS = weakref.WeakKeyDictionary()
_TRAINERS_LOCK = threading.Lock()


def _trainer_for(net, batch_size, loss_code, opt_code, velocity):
    """A trainer as new for ``net``: the one its last fit kept, when it serves these
    arguments (:meth:`_kernels.Trainer.reusable`; then reset), else a new one. A kept
    trainer is taken out of the cache while in use, so two fits never share one."""
    codes = activation_codes(net.activations)
    args = (net.weights, net.biases, codes, net.sizes[0], batch_size, loss_code, opt_code,
            velocity)
    try:
        with _TRAINERS_LOCK:
            trainer = _TRAINERS.pop(net, None)
    except TypeError:  # a Network subclass that cannot be a weak dictionary key
        trainer = None
    if trainer is not None and trainer.reusable(*args):
        trainer.reset()
        return trainer
    return _kernels.Trainer(*args)


def _keep_trainer(net, trainer):
    """Keep ``trainer`` for ``net``'s next fit if it is small (TRAINER_CACHE_BYTES)."""
    if trainer.nbytes <= TRAINER_CACHE_BYTES:
        try:
            with _TRAINERS_LOCK:
                _TRAINERS[net] = trainer
        except TypeError:
            pass


def evaluate_loss(net, X, Y, loss, sample_weight=None, in_blocks=False):
    """The ``loss`` of ``net`` on checked data (no penalty), summed in float64.

    The formulas are :func:`bpfast.reference.loss_value`'s, with probabilities clipped at
    the network dtype's ``eps`` as in training. ``in_blocks`` (X already in the network's
    dtype and the kernels' layout, as :func:`fit` checks its validation data): the
    forward pass in row blocks where the panel kernel takes them, as between epochs
    (see ``engine._forward_checked``).
    """
    return _loss_of_outputs(net, _outputs(net, X, in_blocks), Y, loss, sample_weight)


def _outputs(net, X, in_blocks):
    """``net``'s outputs on ``X`` as a float64 array of its own (the forward pass's
    buffers are reused by the next pass)."""
    if in_blocks:
        return engine._forward_checked(net.weights, net.biases, net.activations, X,
                                       in_blocks=True).astype(np.float64)
    return net.forward(X).astype(np.float64)


def _loss_of_outputs(net, A, Y, loss, sample_weight=None):
    w = np.ones(A.shape[0]) if sample_weight is None else sample_weight.astype(np.float64)
    return loss_value(A.T, Y.astype(np.float64).T, loss, w, w.sum(), np.finfo(net.dtype).eps)


def fit(net, X, Y, *, epochs, batch_size, learning_rate, optimizer="sgd", loss="mse",
        shuffle=True, seed=None, momentum=0.9, beta1=0.9, beta2=0.999, epsilon=1e-8,
        l2=0.0, sample_weight=None, validation_data=None, early_stopping=False,
        patience=10, tol=1e-4, restore_best=True, callback=None, progress=False,
        metrics=(), callbacks=(), validation_split=None, lr_schedule=None, class_weight=None):
    """Train ``net`` in place; see :meth:`bpfast.Network.fit` for the parameters."""
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    learning_rate = _positive_float(learning_rate, "learning_rate")
    _choice(optimizer, OPTIMIZERS, "optimizer")
    _choice(loss, LOSSES, "loss")
    momentum = _unit_interval(momentum, "momentum")
    beta1 = _unit_interval(beta1, "beta1")
    beta2 = _unit_interval(beta2, "beta2")
    epsilon = _positive_float(epsilon, "epsilon")
    if isinstance(l2, (bool, np.bool_)) or not isinstance(l2, numbers.Real) or not l2 >= 0:
        raise ValueError(f"l2: expected a non-negative number, got {l2!r}")
    patience = check_positive_int(patience, "patience")
    if not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
    loss_code, needs = LOSSES[loss]
    if needs is not None and net.activations[-1] != needs:
        raise ValueError(
            f"loss: {loss!r} needs a {needs} output layer, but the network's last activation "
            f"is {net.activations[-1]!r}; build it with activations=[..., {needs!r}]"
        )
    metric_names = check_metrics(metrics, loss)
    callbacks = _check_callbacks(callbacks)
    schedule = resolve(lr_schedule)
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("validation_split: give validation_split or validation_data, "
                             "not both")
        validation_split = _fraction(validation_split)
    if class_weight is not None and not _targets.is_label_vector(Y, loss):
        raise ValueError(
            "class_weight: needs class labels in Y (1-D, with loss='cross_entropy' or "
            "'binary_cross_entropy')"
        )
    Y, classes, labels = _encode_targets(net, Y, loss)

    # finiteness comes from the same compiled pass as the overflow guard's bounds
    # (max |X|, max |Y|: inf when a value is not finite), one read of the data, not two
    X = check_data(X, "X", net.sizes[0], net.dtype, "n^0 = sizes[0]", finite=False)
    x_top = _kernels.magnitude_bound(X)
    if not x_top < math.inf:
        check_finite(X, "X")
    Y = check_data(Y, "Y", net.sizes[-1], net.dtype, "n^L = sizes[-1]", finite=False)
    y_top = _kernels.magnitude_bound(Y)
    if not y_top < math.inf:
        check_finite(Y, "Y")
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected {X.shape[0]} rows, one per row of X, got {Y.shape[0]}")
    if sample_weight is not None:
        sample_weight = as_kernel_array(refuse_masked(sample_weight, "sample_weight"),
                                        net.dtype)
        if sample_weight.shape != (X.shape[0],):
            raise ValueError(
                f"sample_weight: expected shape ({X.shape[0]},), got {sample_weight.shape}"
            )
        if not np.isfinite(sample_weight).all() or (sample_weight < 0).any():
            raise ValueError("sample_weight: expected finite, non-negative weights")
    if validation_split is not None:
        X, Y, sample_weight, labels, validation_data = _split(
            X, Y, sample_weight, labels, validation_split)
    if class_weight is not None:
        factors = _targets.class_weight_factors(class_weight, labels, classes)
        if sample_weight is not None:
            factors = factors * sample_weight
        sample_weight = as_kernel_array(factors, net.dtype)
    if sample_weight is not None and not sample_weight.any():
        what = "sample_weight" if class_weight is None else "sample_weight x class_weight"
        raise ValueError(f"{what}: expected at least one positive weight, got all zeros "
                         "(nothing to train on)")
    if validation_data is not None:
        try:
            Xv, Yv = validation_data
        except (TypeError, ValueError):
            raise TypeError("validation_data: expected a pair (X_val, Y_val)") from None
        Yv = _validation_targets(net, Yv, classes, loss)
        Xv = check_data(Xv, "validation_data[0]", net.sizes[0], net.dtype, "n^0")
        Yv = check_data(Yv, "validation_data[1]", net.sizes[-1], net.dtype, "n^L")
        if Xv.shape[0] != Yv.shape[0]:
            raise ValueError("validation_data: X_val and Y_val have different row counts")

    opt_code, velocity, nesterov = OPTIMIZERS[optimizer]
    # the kernel itself never leaves a parameter that is not finite (its overflow
    # guard), so no copy of the parameters is kept to roll back to
    trainer = _trainer_for(net, min(batch_size, X.shape[0]), loss_code, opt_code, velocity)
    # the guard's bounds on the data, once for all epochs (the data do not change)
    w_top = 1.0 if sample_weight is None else _kernels.magnitude_bound(sample_weight)
    data_bound = (x_top, y_top, w_top)
    rng = np.random.default_rng(seed) if shuffle else None
    history = History()
    state = _start(net, history, metric_names, validation_data is not None, epochs)
    initial_rate = learning_rate
    bar = _progress_bar(epochs) if progress else None
    best, best_params, waited, t = math.inf, None, 0, 0
    try:
        for callback_ in callbacks:
            callback_.on_train_begin(state)
        net.classes_ = classes
        for epoch in range(epochs):
            started = time.perf_counter()
            learning_rate = checked_rate(schedule, epoch, initial_rate, epochs) * state.lr_scale
            order = rng.permutation(X.shape[0]).astype(np.intp) if shuffle else None
            loss_sum, t, bad = trainer.epoch(
                X, Y, sample_weight, order, learning_rate, momentum, nesterov,
                beta1, beta2, epsilon, float(l2), 1.0, t, True, data_bound,
                skip_weightless=True,
            )
            if bad >= 0:
                what = ("its update would overflow the parameters" if trainer.overflowed
                        else "its outputs or its loss became NaN or infinite")
                raise DivergenceError(
                    f"training diverged at epoch {epoch + 1}, batch {bad + 1}: {what}; "
                    f"the network keeps its weights from before that batch. "
                    f"Try a smaller learning_rate (now {learning_rate})."
                )
            history.loss.append(loss_sum / X.shape[0])
            history.learning_rate.append(learning_rate)
            if metric_names:
                _record(history, "", evaluate(_outputs(net, X, True), Y, metric_names))
            if validation_data is not None:
                A = _outputs(net, Xv, True)
                history.val_loss.append(_loss_of_outputs(net, A, Yv, loss))
                _record(history, "val_", evaluate(A, Yv, metric_names))
            history.time.append(time.perf_counter() - started)
            if bar is not None:
                bar.set_postfix(_postfix(history, X.shape[0]), refresh=False)
                bar.update(1)
            if callback is not None and callback(net, epoch, history) is False:
                break
            if early_stopping:
                monitored = history.val_loss[-1] if validation_data is not None else history.loss[-1]
                if monitored < best - tol:
                    best, waited, history.best_epoch = monitored, 0, epoch
                    if restore_best:
                        best_params = [p.copy() for p in net.weights + net.biases]
                else:
                    waited += 1
                    if waited >= patience:
                        history.stopped_early = True
                        break
            for callback_ in callbacks:
                callback_.on_epoch_end(state, epoch)
            if state.stop_training:
                break
    except KeyboardInterrupt as err:
        # Ctrl-C: the epoch stopped at a batch boundary (see Trainer.epoch), the
        # parameters those of the last batch done; the finished epochs go with the error
        err.history = history
        raise
    finally:
        if bar is not None:
            bar.close()
        _keep_trainer(net, trainer)
        for callback_ in callbacks:
            callback_.on_train_end(state)
    if history.stopped_early and best_params is not None:
        for p, s in zip(net.weights + net.biases, best_params):
            p[...] = s
    net.loss_function = loss
    return history


def _check_callbacks(callbacks):
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise TypeError(
            f"callbacks: expected a list of bpfast.callbacks.Callback, got "
            f"{type(callbacks).__name__}"
        ) from None
    for i, c in enumerate(callbacks):
        if not isinstance(c, Callback):
            raise TypeError(
                f"callbacks[{i}]: expected a bpfast.callbacks.Callback, got {type(c).__name__}"
                " (a plain function goes to callback=)"
            )
    return callbacks


def _fraction(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"validation_split: expected a number in (0, 1), got {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"validation_split: expected a number in (0, 1), got {value}")
    return float(value)


def _encode_targets(net, Y, loss):
    """``(Y, classes, labels)``: targets as training reads them, and for class labels
    the sorted classes and each row's class index (else None, None)."""
    n_out = net.sizes[-1]
    if not _targets.is_label_vector(Y, loss):
        return _targets.as_column(Y, n_out, "Y"), None, None
    classes = _targets.fit_classes(Y, n_out, loss, "Y")
    labels = _targets.class_indices(Y, classes, "Y")
    return _targets.encode(labels, n_out, net.dtype), classes, labels


def _validation_targets(net, Yv, classes, loss):
    name = "validation_data[1]"
    if classes is not None and np.ndim(Yv) == 1:
        return _targets.encode(_targets.class_indices(Yv, classes, name), net.sizes[-1],
                               net.dtype)
    return _targets.as_column(Yv, net.sizes[-1], name)


def _split(X, Y, sample_weight, labels, fraction):
    """The first rows for training, the last ``fraction`` of them for validation (as
    Keras: ``floor(m * (1 - fraction))`` training rows)."""
    m = X.shape[0]
    n = int(math.floor(m * (1.0 - fraction)))
    if not 0 < n < m:
        raise ValueError(
            f"validation_split: {fraction} of {m} rows leaves {n} for training and "
            f"{m - n} for validation; both need at least one"
        )
    sample_weight = None if sample_weight is None else sample_weight[:n]
    labels = None if labels is None else labels[:n]
    return X[:n], Y[:n], sample_weight, labels, (X[n:], Y[n:])


def _start(net, history, metric_names, validating, epochs):
    """The callbacks' view of the fit, with ``history.metrics`` holding every recorded
    name (the loss lists themselves under "loss" and "val_loss")."""
    history.metrics["loss"] = history.loss
    if validating:
        history.metrics["val_loss"] = history.val_loss
    for prefix in ("", "val_") if validating else ("",):
        for name in metric_names:
            history.metrics[prefix + name] = []
    return FitState(net, history, tuple(history.metrics), epochs)


def _record(history, prefix, values):
    for name, value in values.items():
        history.metrics[prefix + name].append(value)


def _postfix(history, n):
    post = {"loss": f"{history.loss[-1]:.4g}"}
    if history.val_loss:
        post["val_loss"] = f"{history.val_loss[-1]:.4g}"
    post["samples/s"] = f"{n / max(history.time[-1], 1e-9):.3g}"
    return post


def _progress_bar(epochs):
    from tqdm.auto import tqdm

    return tqdm(total=epochs, unit="epoch", desc="bpfast fit")
