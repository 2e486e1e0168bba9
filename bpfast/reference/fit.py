"""The plain-NumPy trainer that ``Network.fit`` is held against."""
import numpy as np

from .._typing import Activations, ArrayLike, Params
from .._validation import check_inputs
from .losses import loss_gradient

__all__ = ["fit"]


def fit(weights: Params, biases: Params, activations: Activations, X: ArrayLike,
        Y: ArrayLike, *, epochs: int, batch_size: int, learning_rate: float,
        optimizer: str = "sgd", loss: str = "mse", momentum: float = 0.9, beta1: float = 0.9,
        beta2: float = 0.999, epsilon: float = 1e-8, l2: float = 0.0,
        sample_weight: ArrayLike | None = None,
        ) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Mini-batch training in data order, one readable NumPy step at a time.

    Batches are ``batch_size`` consecutive rows (the last one smaller). Each step takes
    the gradient ``g`` of that batch's own loss (:func:`loss_gradient`) and updates every
    parameter ``p``:

    - ``sgd``: ``p -= learning_rate * g``
    - ``momentum``: ``v = momentum * v - learning_rate * g``, ``p += v``
    - ``nesterov``: as momentum, then ``p += momentum * v - learning_rate * g``
    - ``adam``: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
      ``p += -lr_t m / (sqrt(v) + epsilon)`` with
      ``lr_t = learning_rate sqrt(1 - b2^t) / (1 - b1^t)`` at step ``t = 1, 2, ...``

    Returns
    -------
    weights, biases : new lists (the inputs are not modified)
    history : list of float
        Per epoch, the mean over samples of the batch losses (each batch's loss counted
        once per row).
    """
    weights, biases, names, X, Y = check_inputs(weights, biases, activations, X, Y)
    weights = [W.copy() for W in weights]
    biases = [b.copy() for b in biases]
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=X.dtype)
    params = weights + biases
    state1 = [np.zeros_like(p) for p in params]
    state2 = [np.zeros_like(p) for p in params]
    n, t, history = X.shape[0], 0, []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            sw = None if sample_weight is None else sample_weight[rows]
            E, dW, db = loss_gradient(weights, biases, names, X[rows], Y[rows], loss, sw, l2)
            t += 1
            for p, g, s1, s2 in zip(params, dW + db, state1, state2):
                if optimizer == "sgd":
                    p -= learning_rate * g
                elif optimizer in ("momentum", "nesterov"):
                    s1[...] = momentum * s1 - learning_rate * g
                    p += momentum * s1 - learning_rate * g if optimizer == "nesterov" else s1
                elif optimizer == "adam":
                    s1[...] = beta1 * s1 + (1 - beta1) * g
                    s2[...] = beta2 * s2 + (1 - beta2) * (g * g)
                    lr_t = learning_rate * np.sqrt(1 - beta2**t) / (1 - beta1**t)
                    p += -lr_t * s1 / (np.sqrt(s2) + epsilon)
                else:
                    raise ValueError(f"optimizer: unknown optimizer {optimizer!r}")
            total += E * (rows.stop - rows.start)
        history.append(total / n)
    return weights, biases, history
