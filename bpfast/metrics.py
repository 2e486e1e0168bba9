"""Metrics that :meth:`bpfast.Network.fit` records per epoch (``metrics=[...]``).

Each takes the network's outputs ``A`` and the targets ``Y`` (as training sees them:
class labels already one-hot), both ``(m, n^L)``, unweighted, computed in float64:

- ``"accuracy"``: the fraction of rows whose largest output sits where the target's
  largest entry does (one output column: both on the same side of 0.5), which is
  :meth:`~bpfast.Network.predict`'s rule; needs a classification loss;
- ``"mse"``: ``mean((A - Y)^2)`` over all entries;
- ``"mae"``: ``mean(|A - Y|)`` over all entries;
- ``"r2"``: the coefficient of determination of each output column, averaged over the
  columns (scikit-learn's ``r2_score``, ``multioutput="uniform_average"``).
"""
from typing import Dict, Sequence, Tuple

import numpy as np

from .registry import CLASSIFICATION_LOSSES

__all__ = ["METRICS", "accuracy", "mae", "mse", "r2"]


def _labels(M):
    return (M[:, 0] > 0.5).astype(np.intp) if M.shape[1] == 1 else np.argmax(M, axis=1)


def accuracy(A: np.ndarray, Y: np.ndarray) -> float:
    """Fraction of rows classified right (see the module's description)."""
    return float(np.mean(_labels(A) == _labels(Y)))


def mse(A: np.ndarray, Y: np.ndarray) -> float:
    """Mean squared error over all entries."""
    return float(np.mean((A - Y) ** 2))


def mae(A: np.ndarray, Y: np.ndarray) -> float:
    """Mean absolute error over all entries."""
    return float(np.mean(np.abs(A - Y)))


def r2(A: np.ndarray, Y: np.ndarray) -> float:
    """``1 - SS_res / SS_tot`` per column, averaged; a constant column scores 1 when
    predicted exactly, else 0 (as scikit-learn)."""
    ss_res = ((Y - A) ** 2).sum(axis=0)
    ss_tot = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    safe = ss_tot > 0
    score = np.where(ss_res == 0, 1.0, 0.0)
    score[safe] = 1 - ss_res[safe] / ss_tot[safe]
    return float(score.mean())


#: Metric name -> (function, "max" when larger is better else "min").
METRICS = {"accuracy": (accuracy, "max"), "mse": (mse, "min"), "mae": (mae, "min"),
           "r2": (r2, "max")}


def check_metrics(metrics: Sequence[str], loss: str) -> Tuple[str, ...]:
    """The metric names asked for, checked (known, no repeats, accuracy only for a
    classification loss)."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        names = tuple(metrics)
    except TypeError:
        raise TypeError(
            f"metrics: expected a list of names, got {type(metrics).__name__}"
        ) from None
    for name in names:
        if not isinstance(name, str) or name not in METRICS:
            raise ValueError(f"metrics: expected names from {', '.join(METRICS)}, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"metrics: each name at most once, got {list(names)}")
    if "accuracy" in names and loss not in CLASSIFICATION_LOSSES:
        raise ValueError(
            f"metrics: 'accuracy' needs a classification loss ('cross_entropy' or "
            f"'binary_cross_entropy'), got loss={loss!r}"
        )
    return names


def evaluate(A: np.ndarray, Y: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
    """``{name: value}`` of the metrics ``names`` for outputs ``A`` and targets ``Y``."""
    A, Y = A.astype(np.float64, copy=False), Y.astype(np.float64, copy=False)
    return {name: METRICS[name][0](A, Y) for name in names}


def mode_of(name: str) -> str:
    """"max" for a metric (or ``val_`` metric) where larger is better, else "min"."""
    base = name[4:] if name.startswith("val_") else name
    return METRICS[base][1] if base in METRICS else "min"
