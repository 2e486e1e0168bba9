"""Check back-propagation against central finite differences."""
from collections.abc import Callable

import numpy as np

from .engine import _forward_checked, _squared_error, backprop
from ._validation import check_inputs
from ._typing import Activations, ArrayLike, Params

__all__ = ["check_gradient", "finite_difference_gradient"]


def finite_difference_gradient(
    loss: Callable[[list[np.ndarray], list[np.ndarray]], float],
    weights: list[np.ndarray], biases: list[np.ndarray], eps: float = 1e-6,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Central differences ``(E(p + eps) - E(p - eps)) / (2 eps)`` for every parameter.

    Parameters
    ----------
    loss : callable
        ``loss(weights, biases) -> float``.
    weights, biases : lists of float64 ndarray
        Perturbed in place one entry at a time and restored exactly.
    eps : float

    Returns
    -------
    dW, db : lists of ndarray shaped like ``weights`` and ``biases``
    """
    grads = []
    for params in (weights, biases):
        out = []
        for p in params:
            g = np.empty_like(p)
            flat, gflat = p.reshape(-1), g.reshape(-1)
            for k in range(flat.size):
                saved = flat[k]
                flat[k] = saved + eps
                up = loss(weights, biases)
                flat[k] = saved - eps
                down = loss(weights, biases)
                flat[k] = saved
                gflat[k] = (up - down) / (2 * eps)
            out.append(g)
        grads.append(out)
    return grads[0], grads[1]


def check_gradient(weights: Params, biases: Params, activations: Activations, X: ArrayLike,
                   Y: ArrayLike, eps: float = 1e-6) -> float:
    """Largest relative difference between :func:`bpfast.backprop` and finite differences.

    The analytic gradient is computed in the parameters' dtype; the central differences
    ``(E(p + eps) - E(p - eps)) / (2 eps)`` always in float64, on copies (the caller's
    arrays are untouched). For each weight matrix and bias vector the relative difference
    is ``||g - fd|| / max(||g||, ||fd||)`` (Euclidean norms; 0 when both vanish); the
    largest over all of them is returned. Expect about 1e-7 or less for a correct float64
    setup and about 1e-3 or less for float32. Central differences are inexact where a
    relu-like unit sits within ``eps`` of its kink.

    Costs two forward passes per parameter: meant for small networks and data.

    Returns
    -------
    float
    """
    weights, biases, names, X, Y = check_inputs(weights, biases, activations, X, Y)
    _, dW, db = backprop(weights, biases, names, X, Y)
    w64 = [w.astype(np.float64) for w in weights]
    b64 = [b.astype(np.float64) for b in biases]
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    fW, fb = finite_difference_gradient(
        lambda w, b: _squared_error(_forward_checked(w, b, names, X64), Y64), w64, b64, eps
    )
    worst = 0.0
    for g, fd in zip(dW + db, fW + fb):
        g = g.astype(np.float64)
        denom = max(np.linalg.norm(g), np.linalg.norm(fd))
        if denom > 0:
            worst = max(worst, float(np.linalg.norm(g - fd) / denom))
    return worst
