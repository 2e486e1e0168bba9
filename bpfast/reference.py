"""The pure-NumPy baseline: the derivation of docs/math.md, formula for formula.

This module is the test oracle and the slow trainer every benchmark compares against. It
imports nothing from the compiled side. It works in the derivation's notation, one sample
per *column*: ``A^0 = X.T`` (a view of the same memory, see docs/math.md), and for
``l = 1..L``::

    Z^l = W^l A^(l-1) + b^l [1 ... 1]          A^l = g^l(Z^l)
    E   = 1/(2m) sum_c sum_i (A^L_ic - Y_ic)^2

    dA^L     = (A^L - Y) / m
    dZ^l     = dA^l (.) g^l'(Z^l)
    dW^l     = dZ^l (A^(l-1))^T
    db^l     = dZ^l [1 ... 1]^T
    dA^(l-1) = (W^l)^T dZ^l

The public functions take and return the NumPy layout (one sample per row) like the rest of
bpfast, so that the two can be compared directly.
"""
import numpy as np

from ._validation import check_inputs
from ._typing import Activations, ArrayLike, Gradient, Params

__all__ = ["ACTIVATIONS", "forward", "backprop", "loss"]


def _exp_neg_abs(z):
    # e^-|z| never overflows; its harmless underflow to 0 for large |z| is not an error.
    with np.errstate(under="ignore"):
        return np.exp(-np.abs(z))


def _sigmoid(z):
    # 1 / (1 + e^-z) for z >= 0 and e^z / (1 + e^z) for z < 0: never overflows.
    e = _exp_neg_abs(z)
    with np.errstate(under="ignore"):
        return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(z):
    return np.maximum(z, 0) + np.log1p(_exp_neg_abs(z))


def _silu_prime(z, a):
    s = _sigmoid(z)
    return s * (1 + z * (1 - s))


#: name -> (g(z), g'(z, a)) with a = g(z); the same formulas as the compiled kernels.
ACTIVATIONS = {
    "identity": (lambda z: z, lambda z, a: np.ones_like(z)),
    "sigmoid": (_sigmoid, lambda z, a: a * (1 - a)),
    "tanh": (np.tanh, lambda z, a: 1 - a * a),
    "relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(z.dtype)),
    "leaky_relu": (
        lambda z: np.where(z > 0, z, z.dtype.type(0.01) * z),
        lambda z, a: np.where(z > 0, z.dtype.type(1), z.dtype.type(0.01)),
    ),
    "softplus": (_softplus, lambda z, a: _sigmoid(z)),
    "silu": (lambda z: z * _sigmoid(z), _silu_prime),
    # softmax acts on a whole column (one sample); its derivative is a Jacobian, applied
    # in _output_delta rather than elementwise.
    "softmax": (lambda z: _softmax(z), None),
    "exp": (np.exp, lambda z, a: a),
}


def _softmax(z):
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _forward_columns(weights, biases, names, A0):
    """All Z^l and A^l (samples as columns); returns (Zs, As) with As[0] = A^0."""
    Zs, As = [], [A0]
    for W, b, name in zip(weights, biases, names):
        g, _ = ACTIVATIONS[name]
        Z = W @ As[-1] + b[:, None]
        Zs.append(Z)
        As.append(g(Z))
    return Zs, As


def forward(weights: Params, biases: Params, activations: Activations,
            X: ArrayLike) -> np.ndarray:
    """Network output ``A^L`` for the inputs ``X``.

    Parameters
    ----------
    weights : list of ndarray, ``weights[l-1]`` is ``W^l`` of shape ``(n^l, n^(l-1))``
    biases : list of ndarray, ``biases[l-1]`` is ``b^l`` of shape ``(n^l,)``
    activations : str or list of str
        One name for every layer or one per layer.
    X : array_like of shape ``(m, n^0)``
        One sample per row; ``X.T`` is the column form's ``A^0``.

    Returns
    -------
    ndarray of shape ``(m, n^L)``
        ``(A^L).T``, one output per row.
    """
    weights, biases, names, X, _ = check_inputs(weights, biases, activations, X)
    _, As = _forward_columns(weights, biases, names, X.T)
    return np.ascontiguousarray(As[-1].T)


def loss(weights: Params, biases: Params, activations: Activations, X: ArrayLike,
         Y: ArrayLike) -> float:
    """The error ``E = 1/(2m) sum_c sum_i (A^L_ic - Y_ic)^2`` as a float."""
    weights, biases, names, X, Y = check_inputs(weights, biases, activations, X, Y)
    _, As = _forward_columns(weights, biases, names, X.T)
    m = X.shape[0]
    return float(np.sum((As[-1] - Y.T) ** 2) / (2 * m))


def backprop(weights: Params, biases: Params, activations: Activations, X: ArrayLike,
             Y: ArrayLike) -> Gradient:
    """The error ``E`` and its gradient by back-propagation.

    Parameters
    ----------
    weights, biases, activations, X
        As for :func:`forward`.
    Y : array_like of shape ``(m, n^L)``
        Targets, one per row; ``Y.T`` is the column form's ``Y``.

    Returns
    -------
    E : float
    dW : list of ndarray, ``dW[l-1] = dE/dW^l`` of shape ``(n^l, n^(l-1))``
    db : list of ndarray, ``db[l-1] = dE/db^l`` of shape ``(n^l,)``
    """
    weights, biases, names, X, Y = check_inputs(weights, biases, activations, X, Y)
    m = X.shape[0]
    Zs, As = _forward_columns(weights, biases, names, X.T)
    AL, Yc = As[-1], Y.T
    E = float(np.sum((AL - Yc) ** 2) / (2 * m))
    dA = (AL - Yc) / m
    dW, db = _backward(weights, names, Zs, As, _apply_derivative(names[-1], dA, Zs[-1], AL))
    return E, dW, db


def _apply_derivative(name, dA, Z, A):
    """dZ = dA (.) g'(Z); for softmax the Jacobian product A (.) (dA - sum_i dA_i A_i)."""
    if name == "softmax":
        return A * (dA - np.sum(dA * A, axis=0, keepdims=True))
    return dA * ACTIVATIONS[name][1](Z, A)


def _backward(weights, names, Zs, As, dZ_last):
    """dW^l = dZ^l (A^(l-1))^T, db^l = dZ^l 1, dA^(l-1) = (W^l)^T dZ^l, down from dZ^L."""
    L = len(weights)
    dW, db = [None] * L, [None] * L
    dZ = dZ_last
    for l in range(L, 0, -1):  # the derivation's layer index, 1-based
        dW[l - 1] = dZ @ As[l - 1].T
        db[l - 1] = dZ.sum(axis=1)
        if l >= 2:
            dA = weights[l - 1].T @ dZ
            dZ = _apply_derivative(names[l - 2], dA, Zs[l - 2], As[l - 1])
    return dW, db


# ---------------------------------------------------------------------------
# Training: the plain-NumPy trainer that Network.fit is held against
# ---------------------------------------------------------------------------

def loss_value(AL: np.ndarray, Yc: np.ndarray, loss: str, w: np.ndarray, s: float,
               eps: float) -> float:
    """The data term of a loss, samples as columns: ``AL`` and ``Yc`` are ``(n^L, m)``.

    ``w`` holds the sample weights (length m) and ``s`` their sum; ``eps`` bounds the
    probabilities inside the logarithms to ``[eps, 1 - eps]``. See :func:`loss_gradient`.
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


def loss_gradient(weights: list[np.ndarray], biases: list[np.ndarray], names: list[str],
                  X: np.ndarray, Y: np.ndarray, loss: str = "mse",
                  sample_weight: np.ndarray | None = None, l2: float = 0.0) -> Gradient:
    """Loss and gradient of one batch, in column notation (samples as columns).

    With weights ``w_c`` (all 1 when ``sample_weight`` is None) and ``s = sum_c w_c``:

    - ``mse``: ``E = 1/(2s) sum_c w_c sum_i (A^L_ic - Y_ic)^2`` (the squared error E when
      unweighted), ``dA^L = w (A^L - Y) / s``, then ``dZ^L = dA^L (.) g'(Z^L)``;
    - ``cross_entropy`` (softmax output): ``E = -1/s sum_c w_c sum_i Y_ic log A^L_ic``;
    - ``binary_cross_entropy`` (sigmoid output):
      ``E = -1/s sum_c w_c sum_i [Y log A^L + (1 - Y) log(1 - A^L)]_ic``;

    - ``poisson`` (exp output): ``E = 1/s sum_c w_c sum_i [Y log(Y / A^L) - Y + A^L]_ic``
      (half the Poisson deviance, ``0 log 0 = 0``);

    for the last three the output delta is ``dZ^L = w (A^L - Y) / s``. For the two
    cross-entropies ``A^L`` is clipped to ``P`` in ``[eps, 1 - eps]`` inside the logarithms
    (``log P`` and ``log(1 - P)``), as scikit-learn does. The L2 penalty adds
    ``l2/(2s) sum_l ||W^l||^2`` to E and ``l2/s W^l`` to ``dW^l`` (biases are not penalised).

    Parameters are already checked arrays; ``names`` canonical activation names.
    """
    m = X.shape[0]
    Zs, As = _forward_columns(weights, biases, names, X.T)
    AL, Yc = As[-1], Y.T
    w = np.ones(m, dtype=X.dtype) if sample_weight is None else sample_weight
    s = X.dtype.type(w.sum()) if sample_weight is not None else m
    E = loss_value(AL, Yc, loss, w, s, np.finfo(X.dtype).eps)
    if loss == "mse":
        dZ = _apply_derivative(names[-1], w * (AL - Yc) / s, Zs[-1], AL)
    else:
        dZ = w * (AL - Yc) / s
    dW, db = _backward(weights, names, Zs, As, dZ)
    if l2:
        E += float(0.5 * l2 * sum(np.sum(W * W) for W in weights) / s)
        dW = [g + (l2 / s) * W for g, W in zip(dW, weights)]
    return E, dW, db


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
