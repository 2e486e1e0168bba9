# cython: language_level=3
"""Each activation g and its derivative g' as inline nogil functions over float/double.

Codes follow ``bpfast.registry.ACTIVATIONS``. The formulas match ``bpfast.reference``
term for term, so that compiled and reference results agree to rounding.
"""
from cython cimport floating
from libc.math cimport exp, expf, tanh, tanhf, log1p, log1pf, fabs, fabsf

# The activation codes, defined once in C (kernel_table.h) under the registry's numbers.
cdef extern from "kernel_table.h":
    cdef enum:
        IDENTITY "BPFAST_IDENTITY"
        SIGMOID "BPFAST_SIGMOID"
        TANH "BPFAST_TANH"
        RELU "BPFAST_RELU"
        LEAKY_RELU "BPFAST_LEAKY_RELU"
        SOFTPLUS "BPFAST_SOFTPLUS"
        SILU "BPFAST_SILU"
        SOFTMAX "BPFAST_SOFTMAX"
        EXP "BPFAST_EXP"


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _positive(floating z) noexcept nogil:
    """1 if z > 0 else 0, as a number (a comparison, no branch)."""
    return <floating>(z > 0)


cdef inline floating sigmoid(floating z) noexcept nogil:
    """s(z) = 1 / (1 + e^-z), evaluated without overflow for any z."""
    cdef floating e
    if z >= 0:
        return 1 / (1 + _exp(-z))
    e = _exp(z)
    return e / (1 + e)


cdef inline floating softplus(floating z) noexcept nogil:
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|), without overflow."""
    if floating is float:
        return (z if z > 0 else 0) + log1pf(expf(-fabsf(z)))
    else:
        return (z if z > 0 else 0) + log1p(exp(-fabs(z)))


cdef inline floating relu(floating z) noexcept nogil:
    """max(z, 0)."""
    return z if z > 0 else 0


cdef inline floating relu_prime(floating z) noexcept nogil:
    """1 for z > 0, else 0 (the subgradient 0 at the kink)."""
    return _positive(z)


cdef inline floating leaky_relu(floating z) noexcept nogil:
    """z for z > 0, else 0.01 z; written c z + (1 - c) 0.01 z, c = [z > 0]: exact and
    branch-free, so that loops over it vectorise."""
    return _positive(z) * z + (1 - _positive(z)) * (<floating>0.01 * z)


cdef inline floating leaky_relu_prime(floating z) noexcept nogil:
    """1 for z > 0, else 0.01."""
    return _positive(z) + (1 - _positive(z)) * <floating>0.01


cdef inline floating activate(int code, floating z) noexcept nogil:
    """a = g(z) for the activation with this code."""
    if code == SIGMOID:
        return sigmoid(z)
    elif code == TANH:
        if floating is float:
            return tanhf(z)
        else:
            return tanh(z)
    elif code == RELU:
        return relu(z)
    elif code == LEAKY_RELU:
        return leaky_relu(z)
    elif code == SOFTPLUS:
        return softplus(z)
    elif code == SILU:
        return z * sigmoid(z)
    elif code == EXP:
        return _exp(z)
    return z


cdef inline floating derivative(int code, floating z, floating a) noexcept nogil:
    """g'(z), given z and a = g(z) (whichever is cheaper to use)."""
    cdef floating s
    if code == SIGMOID:
        return a * (1 - a)
    elif code == TANH:
        return 1 - a * a
    elif code == RELU:
        return relu_prime(z)
    elif code == LEAKY_RELU:
        return leaky_relu_prime(z)
    elif code == SOFTPLUS:
        return sigmoid(z)
    elif code == SILU:
        s = sigmoid(z)
        return s * (1 + z * (1 - s))
    elif code == EXP:
        return a
    return 1
