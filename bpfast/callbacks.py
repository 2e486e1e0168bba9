"""Callbacks for :meth:`bpfast.Network.fit` (``callbacks=[...]``), with Keras's names.

After every epoch, ``fit`` calls each callback's :meth:`Callback.on_epoch_end` in list
order; they read the epoch's values from ``state.history`` (``state.logs(epoch)``:
``loss``, ``val_loss``, the metrics and their ``val_`` forms, ``learning_rate``), may
ask training to stop (``state.stop_training = True``) or scale the learning rate of the
epochs to come (``state.lr_scale``). A monitored name that the fit does not record is an
error before the first epoch. Mode ``"auto"`` means ``"max"`` for accuracy and r2 (and
their ``val_`` forms) and ``"min"`` for everything else.

>>> import numpy as np, bpfast
>>> from bpfast.callbacks import EarlyStopping
>>> net = bpfast.Network([2, 4, 1], activations=["tanh", "identity"], seed=0)
>>> X = np.random.default_rng(0).normal(size=(50, 2))
>>> history = net.fit(X, X.sum(axis=1), epochs=200, validation_split=0.2,
...                   callbacks=[EarlyStopping(monitor="val_loss", patience=3)])
"""
import csv
import math
import os
from typing import IO, Any, Dict, List, Optional, Union

from .metrics import mode_of

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "FitState", "ModelCheckpoint",
           "ReduceLROnPlateau"]


class FitState:
    """What a callback sees of a running fit.

    Attributes
    ----------
    network : bpfast.Network
        The network being trained (its parameters change in place).
    history : bpfast.History
        The history so far.
    recorded : tuple of str
        The names recorded every epoch in ``history.metrics``.
    epochs : int
        The epochs the fit was asked for.
    stop_training : bool
        Set to True to stop after this epoch.
    lr_scale : float
        Factor on the schedule's rate for the epochs to come (1 at the start).
    """

    def __init__(self, network, history, recorded, epochs: int) -> None:
        self.network, self.history, self.recorded, self.epochs = network, history, recorded, epochs
        self.stop_training = False
        self.lr_scale = 1.0

    def logs(self, epoch: int) -> Dict[str, float]:
        """``{name: value}`` of 0-based ``epoch``, the learning rate included."""
        logs = {name: self.history.metrics[name][epoch] for name in self.recorded}
        logs["learning_rate"] = self.history.learning_rate[epoch]
        return logs

    def value(self, name: str) -> float:
        """The latest value of the recorded ``name``."""
        return self.history.metrics[name][-1]


class Callback:
    """Base class; every hook does nothing unless overridden."""

    def on_train_begin(self, state: FitState) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, state: FitState, epoch: int) -> None:
        """Called after 0-based ``epoch`` is recorded in ``state.history``."""

    def on_train_end(self, state: FitState) -> None:
        """Called once when training ends, also when it ends by an exception."""


def _mode(mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
    return mode_of(monitor) if mode == "auto" else mode


def _non_negative(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
    return value


class _Monitor(Callback):
    """Tracks the best value of a monitored name (mode min or max, with min_delta)."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor: expected a name, got {type(monitor).__name__}")
        self.monitor = monitor
        self.mode = _mode(mode, monitor)
        self.min_delta = abs(_non_negative(min_delta, "min_delta"))
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, state: FitState) -> None:
        if self.monitor not in state.recorded:
            raise ValueError(
                f"monitor: {self.monitor!r} is not recorded by this fit; recorded are "
                f"{', '.join(state.recorded)} (val_ names need validation data, others "
                "need metrics=[...])"
            )
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta`` (then it is best)."""
        if self.mode == "min":
            better = value < self.best - self.min_delta
        else:
            better = value > self.best + self.min_delta
        if better:
            self.best = value
        return better


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row (as Keras: for at least one epoch, so patience 0 and 1 agree).

    On stopping, ``history.stopped_early`` is True and ``history.best_epoch`` the
    0-based best epoch.

    Parameters
    ----------
    monitor : str, default "val_loss"
    mode : {"auto", "min", "max"}, default "auto"
    patience : int, default 0
        Epochs without improvement before stopping.
    min_delta : float, default 0
    restore_best_weights : bool, default False
        When stopping, put back the parameters of the best epoch.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 0,
                 min_delta: float = 0.0, restore_best_weights: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience: expected a non-negative integer, got {patience!r}")
        self.patience = patience
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.best_epoch: Optional[int] = None
        self._best_params: Optional[list] = None

    def on_train_begin(self, state: FitState) -> None:
        super().on_train_begin(state)
        self.wait, self.best_epoch, self._best_params = 0, None, None

    def on_epoch_end(self, state: FitState, epoch: int) -> None:
        net = state.network
        if self.improved(state.value(self.monitor)):
            self.wait, self.best_epoch = 0, epoch
            if self.restore_best_weights:
                self._best_params = [p.copy() for p in net.weights + net.biases]
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.stop_training = True
            state.history.stopped_early = True
            state.history.best_epoch = self.best_epoch
            if self._best_params is not None:
                for p, best in zip(net.weights + net.biases, self._best_params):
                    p[...] = best


class ModelCheckpoint(_Monitor):
    """Save the network after every epoch, or only when ``monitor`` improves.

    Parameters
    ----------
    filepath : str or path
        Where to save (through :meth:`bpfast.Network.save`: written to a temporary file
        and renamed, so a crash never leaves half a model). May hold ``{epoch}``
        (1-based, as Keras) and recorded names, e.g. ``"model-{epoch:03d}.npz"``.
    monitor : str, default "val_loss"
    mode : {"auto", "min", "max"}, default "auto"
    save_best_only : bool, default False
        Save only when ``monitor`` improves on the best so far.
    """

    def __init__(self, filepath: Union[str, "os.PathLike"], monitor: str = "val_loss",
                 mode: str = "auto", save_best_only: bool = False) -> None:
        super().__init__(monitor, mode, 0.0)
        self.filepath = os.fspath(filepath)
        self.save_best_only = bool(save_best_only)
        self.saved: List[str] = []

    def on_train_begin(self, state: FitState) -> None:
        if self.save_best_only:
            super().on_train_begin(state)
        self.saved = []

    def on_epoch_end(self, state: FitState, epoch: int) -> None:
        if self.save_best_only and not self.improved(state.value(self.monitor)):
            return
        path = self.filepath.format(epoch=epoch + 1, **state.logs(epoch))
        state.network.save(path)
        self.saved.append(path)


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch`` (0-based, as Keras), the recorded names in
    sorted order and ``learning_rate``. Each row is flushed as it is written.

    Parameters
    ----------
    filename : str or path
    separator : str, default ","
    append : bool, default False
        Append to an existing file (without a second header) instead of replacing it.
    """

    def __init__(self, filename: Union[str, "os.PathLike"], separator: str = ",",
                 append: bool = False) -> None:
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = bool(append)
        self._file: Optional[IO[str]] = None
        self._writer: Any = None
        self._columns: List[str] = []

    def on_train_begin(self, state: FitState) -> None:
        header = ["epoch"] + sorted(state.recorded) + ["learning_rate"]
        exists = self.append and os.path.exists(self.filename) \
            and os.path.getsize(self.filename) > 0
        mode = "a" if self.append else "w"
        self._file = file = open(self.filename, mode, newline="", encoding="utf-8")
        self._writer = csv.writer(file, delimiter=self.separator)
        self._columns = header
        if not exists:
            self._writer.writerow(header)
            file.flush()

    def on_epoch_end(self, state: FitState, epoch: int) -> None:
        logs = state.logs(epoch)
        self._writer.writerow([epoch] + [repr(logs[name]) for name in self._columns[1:]])
        if self._file is not None:
            self._file.flush()

    def on_train_end(self, state: FitState) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._writer = None, None


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by more
    than ``min_delta`` for ``patience`` epochs, never below ``min_lr``.

    The reduction scales the rates of all later epochs (with an ``lr_schedule``: the
    schedule's rates). After a reduction the count of epochs without improvement starts
    again.

    Parameters
    ----------
    monitor : str, default "val_loss"
    factor : float in (0, 1), default 0.1
    patience : int, default 10
    mode : {"auto", "min", "max"}, default "auto"
    min_delta : float, default 1e-4
    min_lr : float, default 0
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 mode: str = "auto", min_delta: float = 1e-4, min_lr: float = 0.0) -> None:
        super().__init__(monitor, mode, min_delta)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
                or not 0 < factor < 1:
            raise ValueError(f"factor: expected a number in (0, 1), got {factor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience: expected a non-negative integer, got {patience!r}")
        self.factor, self.patience = float(factor), patience
        self.min_lr = float(_non_negative(min_lr, "min_lr"))
        self.wait = 0

    def on_train_begin(self, state: FitState) -> None:
        super().on_train_begin(state)
        self.wait = 0

    def on_epoch_end(self, state: FitState, epoch: int) -> None:
        if self.improved(state.value(self.monitor)):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.wait = 0
            rate = state.history.learning_rate[-1]
            new = max(rate * self.factor, self.min_lr)
            if new < rate:
                state.lr_scale *= new / rate
