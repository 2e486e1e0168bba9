"""Learning-rate schedules for :meth:`bpfast.Network.fit` (``lr_schedule=``).

A schedule gives the learning rate of each epoch; the rate is fixed within an epoch (the
compiled epoch takes one rate) and changes between epochs. Epochs count from 0, and
``learning_rate`` below is the rate given to ``fit``. ``history.learning_rate`` records
the rate each epoch used.

Examples
--------
>>> import bpfast
>>> from bpfast.schedules import StepDecay
>>> [StepDecay(step_size=2, gamma=0.5).rate(e, 0.1, 6) for e in range(6)]
[0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
"""
import math
import numbers
from typing import Any, Callable, Optional, Union

__all__ = ["Constant", "CosineDecay", "InvScaling", "Schedule", "StepDecay", "resolve"]


def _positive(value: Any, name: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


class Schedule:
    """Base class: subclasses define :meth:`rate`."""

    def rate(self, epoch: int, learning_rate: float, epochs: int) -> float:
        """The rate of 0-based ``epoch`` of a fit of ``epochs`` epochs started at
        ``learning_rate``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """``rate(t) = learning_rate`` for every epoch ``t``."""

    def rate(self, epoch: int, learning_rate: float, epochs: int) -> float:
        return learning_rate


class InvScaling(Schedule):
    """Inverse scaling, scikit-learn's ``"invscaling"`` counted in epochs:
    ``rate(t) = learning_rate / (t + 1) ** power_t``.

    scikit-learn's MLP counts ``t`` in samples seen; here ``t`` is the 0-based epoch.

    Parameters
    ----------
    power_t : float, default 0.5
        The exponent (positive).
    """

    def __init__(self, power_t: float = 0.5) -> None:
        self.power_t = _positive(power_t, "power_t")

    def rate(self, epoch: int, learning_rate: float, epochs: int) -> float:
        return learning_rate / (epoch + 1) ** self.power_t


class StepDecay(Schedule):
    """Step decay: ``rate(t) = learning_rate * gamma ** (t // step_size)``.

    Parameters
    ----------
    step_size : int, default 10
        Epochs between two decays.
    gamma : float, default 0.1
        The factor of each decay, in (0, 1].
    """

    def __init__(self, step_size: int = 10, gamma: float = 0.1) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) \
                or step_size < 1:
            raise ValueError(f"step_size: expected a positive integer, got {step_size!r}")
        gamma = _positive(gamma, "gamma")
        if gamma > 1:
            raise ValueError(f"gamma: expected a number in (0, 1], got {gamma}")
        self.step_size: int = int(step_size)
        self.gamma: float = gamma

    def rate(self, epoch: int, learning_rate: float, epochs: int) -> float:
        return learning_rate * self.gamma ** (epoch // self.step_size)


class CosineDecay(Schedule):
    """Cosine decay from ``learning_rate`` towards ``min_lr`` over ``period`` epochs:
    ``rate(t) = min_lr + (learning_rate - min_lr) * (1 + cos(pi * t / period)) / 2``
    for ``t < period``, and ``rate(period - 1)`` after.

    Parameters
    ----------
    min_lr : float, default 0
        The rate the curve tends to (reached at ``t = period``, one epoch after the
        last of the period, so every epoch's rate stays positive).
    period : int or None, default None
        Epochs of the decay; None means the fit's ``epochs``.
    """

    def __init__(self, min_lr: float = 0.0, period: Optional[int] = None) -> None:
        if isinstance(min_lr, bool) or not isinstance(min_lr, numbers.Real) \
                or not math.isfinite(min_lr) or min_lr < 0:
            raise ValueError(f"min_lr: expected a non-negative number, got {min_lr!r}")
        if period is not None and (isinstance(period, bool)
                                   or not isinstance(period, numbers.Integral) or period < 1):
            raise ValueError(f"period: expected a positive integer or None, got {period!r}")
        self.min_lr: float = float(min_lr)
        self.period: Optional[int] = None if period is None else int(period)

    def rate(self, epoch: int, learning_rate: float, epochs: int) -> float:
        period = epochs if self.period is None else self.period
        t = min(epoch, period - 1)
        cosine = (1 + math.cos(math.pi * t / period)) / 2
        return self.min_lr + (learning_rate - self.min_lr) * cosine


class _Function(Schedule):
    """A callable ``epoch -> rate`` as a schedule."""

    def __init__(self, function: Callable[[int], float]) -> None:
        self.function = function

    def rate(self, epoch: int, learning_rate: float, epochs: int) -> float:
        return self.function(epoch)


#: ``lr_schedule`` names and the schedules they stand for (default parameters).
NAMES = {"constant": Constant, "invscaling": InvScaling, "step": StepDecay,
         "cosine": CosineDecay}


def resolve(lr_schedule: Union[str, Callable[[int], float], Schedule, None]) -> Schedule:
    """The :class:`Schedule` that ``lr_schedule`` (a name, a schedule, a callable
    ``epoch -> rate`` or None for constant) stands for."""
    if lr_schedule is None:
        return Constant()
    if isinstance(lr_schedule, Schedule):
        return lr_schedule
    if isinstance(lr_schedule, str):
        if lr_schedule not in NAMES:
            raise ValueError(
                f"lr_schedule: expected one of {', '.join(NAMES)}, a schedule or a callable "
                f"epoch -> rate, got {lr_schedule!r}"
            )
        return NAMES[lr_schedule]()
    if callable(lr_schedule):
        return _Function(lr_schedule)
    raise TypeError(
        f"lr_schedule: expected a name, a bpfast.schedules.Schedule or a callable "
        f"epoch -> rate, got {type(lr_schedule).__name__}"
    )


def checked_rate(schedule: Schedule, epoch: int, learning_rate: float, epochs: int) -> float:
    """``schedule``'s rate for ``epoch``, which must be a positive finite number."""
    rate = schedule.rate(epoch, learning_rate, epochs)
    if (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
            or not math.isfinite(rate) or rate <= 0):
        raise ValueError(
            f"lr_schedule: gave the rate {rate!r} for epoch {epoch}; expected a positive "
            "finite number"
        )
    return float(rate)
