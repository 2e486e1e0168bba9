"""The data term of each loss in NumPy, on outputs already computed.

Shared by training (the validation loss between epochs, with float64 sums) and by
:mod:`bpfast.reference`, so each loss's formula is written once on the Python side.
"""
import numpy as np

__all__ = ["loss_value"]


def loss_value(AL: np.ndarray, Yc: np.ndarray, loss: str, w: np.ndarray, s: float,
               eps: float) -> float:
    """The data term of a loss, samples as columns: ``AL`` and ``Yc`` are ``(n^L, m)``.

    ``w`` holds the sample weights (length m) and ``s`` their sum; ``eps`` bounds the
    probabilities inside the logarithms to ``[eps, 1 - eps]``. See
    :func:`bpfast.reference.loss_gradient` for the formulas.
    """
    if loss == "mse":
        return float(np.sum(w * (AL - Yc) ** 2) / (2 * s))
    if loss == "poisson":
        with np.errstate(divide="ignore", invalid="ignore"):
            ylogy = np.where(Yc != 0, Yc * np.log(Yc / AL), 0)
        return float(np.sum(w * np.sum(ylogy - Yc + AL, axis=0)) / s)
    P = np.clip(AL, eps, 1 - eps)
    per_sample = -np.sum(np.where(Yc != 0, Yc * np.log(P), 0), axis=0)
    if loss == "binary_cross_entropy":
        per_sample -= np.sum(np.where(Yc != 1, (1 - Yc) * np.log(1 - P), 0), axis=0)
    return float(np.sum(w * per_sample) / s)
