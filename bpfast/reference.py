"""The pure-NumPy baseline: the seed's derivation, formula for formula.

This module is the test oracle and the slow trainer every benchmark compares against. It
imports nothing from the compiled side. It works in the seed's own notation, one sample per
*column*: ``A^0 = X.T`` (a view of the same memory, see DESIGN.md section 2), and for
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

__all__ = ["ACTIVATIONS", "forward", "backprop", "loss"]


def _sigmoid(z):
    # 1 / (1 + e^-z) for z >= 0 and e^z / (1 + e^z) for z < 0: never overflows.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


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
}


def _forward_columns(weights, biases, names, A0):
    """All Z^l and A^l (samples as columns); returns (Zs, As) with As[0] = A^0."""
    Zs, As = [], [A0]
    for W, b, name in zip(weights, biases, names):
        g, _ = ACTIVATIONS[name]
        Z = W @ As[-1] + b[:, None]
        Zs.append(Z)
        As.append(g(Z))
    return Zs, As


def forward(weights, biases, activations, X):
    """Network output ``A^L`` for the inputs ``X``.

    Parameters
    ----------
    weights : list of ndarray, ``weights[l-1]`` is ``W^l`` of shape ``(n^l, n^(l-1))``
    biases : list of ndarray, ``biases[l-1]`` is ``b^l`` of shape ``(n^l,)``
    activations : str or list of str
        One name for every layer or one per layer.
    X : array_like of shape ``(m, n^0)``
        One sample per row; ``X.T`` is the seed's ``A^0``.

    Returns
    -------
    ndarray of shape ``(m, n^L)``
        ``(A^L).T``, one output per row.
    """
    weights, biases, names, X, _ = check_inputs(weights, biases, activations, X)
    _, As = _forward_columns(weights, biases, names, X.T)
    return np.ascontiguousarray(As[-1].T)


def loss(weights, biases, activations, X, Y):
    """The seed's error ``E = 1/(2m) sum_c sum_i (A^L_ic - Y_ic)^2`` as a float."""
    weights, biases, names, X, Y = check_inputs(weights, biases, activations, X, Y)
    _, As = _forward_columns(weights, biases, names, X.T)
    m = X.shape[0]
    return float(np.sum((As[-1] - Y.T) ** 2) / (2 * m))


def backprop(weights, biases, activations, X, Y):
    """The error ``E`` and its gradient by back-propagation.

    Parameters
    ----------
    weights, biases, activations, X
        As for :func:`forward`.
    Y : array_like of shape ``(m, n^L)``
        Targets, one per row; ``Y.T`` is the seed's ``Y``.

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
    L = len(weights)
    dW, db = [None] * L, [None] * L
    for l in range(L, 0, -1):  # the seed's layer index, 1-based
        _, g_prime = ACTIVATIONS[names[l - 1]]
        dZ = dA * g_prime(Zs[l - 1], As[l])
        dW[l - 1] = dZ @ As[l - 1].T
        db[l - 1] = dZ.sum(axis=1)
        if l >= 2:
            dA = weights[l - 1].T @ dZ
    return E, dW, db
