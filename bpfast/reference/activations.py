"""Each activation ``g`` and its derivative ``g'`` in NumPy, overflow-free: the formulas
the compiled kernels' ``_activation_math.pxd`` is held against."""
import numpy as np

__all__ = ["ACTIVATIONS"]


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
