"""Forward pass, squared error and back-propagation in the derivation's column notation
(one sample per column), formula for formula as docs/math.md writes them."""
import numpy as np

from .._typing import Activations, ArrayLike, Gradient, Params
from .._validation import check_inputs
from .activations import ACTIVATIONS

__all__ = ["forward", "loss", "backprop"]


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
