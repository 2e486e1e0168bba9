# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled forward pass and back-propagation over all layers of a network.

Shapes follow the NumPy convention, one sample per row (DESIGN.md section 2): for layer
``l`` (0-based here) ``W[l]`` is ``(n[l+1], n[l])``, ``b[l]`` is ``(n[l+1],)``, and
``Z[l]``, ``A[l]`` are ``(m, n[l+1])``. Per layer, in row terms::

    Z = A_prev @ W.T + b        A = g(Z)
    dW = dZ.T @ A_prev          db = dZ.sum(axis=0)        dA_prev = dZ @ W

The Python entry points check every buffer (type, dtype, shape, contiguity) before any
pointer is taken, then run the whole pass without the GIL and without allocating.
"""
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.math cimport sqrt, pow, isfinite, log, logf, frexp, HUGE_VAL, M_LN2, NAN
from libc.float cimport FLT_EPSILON, DBL_EPSILON, FLT_MAX, DBL_MAX
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cython cimport floating

cimport numpy as cnp
import threading

import numpy as np

from ._blas cimport (gemm, bpfast_small_gemm_limit, bpfast_dgemm_ptr, bpfast_sgemm_ptr,
                     bpfast_blas_ilp64, bpfast_panel_route)

# The C kernels' dispatch: the processor's features (less BPFAST_DISABLE_CPU_FEATURES)
# pick one copy of every kernel, once, before anything below asks what is available.
cdef extern from "kernels.h":
    const char* bpfast_dispatch_init()
    const char* bpfast_dispatch_target()
    const char* bpfast_cpu_known_names()
    const char* bpfast_cpu_feature_name(int index)
    unsigned bpfast_cpu_features

cdef bytes _unknown_cpu_features = bpfast_dispatch_init()
if _unknown_cpu_features:
    import warnings
    warnings.warn(f"BPFAST_DISABLE_CPU_FEATURES: unknown feature name(s) "
                  f"{_unknown_cpu_features.decode()}; valid names: "
                  f"{bpfast_cpu_known_names().decode()}", RuntimeWarning, stacklevel=2)


def cpu_features():
    """The processor features the kernels' dispatch uses here (e.g. ``['avx2', 'fma']``),
    after BPFAST_DISABLE_CPU_FEATURES."""
    names = []
    cdef int i = 0
    while bpfast_cpu_feature_name(i) != NULL:
        if bpfast_cpu_features & (1u << i):
            names.append(bpfast_cpu_feature_name(i).decode())
        i += 1
    return names


def kernel_target():
    """The copy of the kernels in use: ``'avx512f'``, ``'avx2'`` or ``'baseline'``."""
    return bpfast_dispatch_target().decode()


cdef extern from "kernels.h" nogil:
    void bpfast_exp_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_exp_row_f(Py_ssize_t n, const float* z, float* a)
    void bpfast_tanh_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_tanh_row_f(Py_ssize_t n, const float* z, float* a)
    void bpfast_sigmoid_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_sigmoid_row_f(Py_ssize_t n, const float* z, float* a)
    void bpfast_silu_row_d(Py_ssize_t n, const double* z, double* a)
    void bpfast_silu_row_f(Py_ssize_t n, const float* z, float* a)
    double bp_sigmoid_d(double x)
    float bp_sigmoid_f(float x)
    int bpfast_vmath_avx512_allowed
    int bpfast_vmath_avx512()


cdef inline floating vsigmoid(floating z) noexcept nogil:
    """The vectorisable sigmoid of _vmath.h (within a few ulp of 1 / (1 + e^-z))."""
    if floating is double:
        return bp_sigmoid_d(z)
    else:
        return bp_sigmoid_f(z)


cdef extern from "kernels.h" nogil:
    void bpfast_bias_pwl_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* b,
                           double* Z, double* A)
    void bpfast_bias_pwl_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* b,
                           float* Z, float* A)
    void bpfast_delta_pwl_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* dA,
                            double* Z, double* db)
    void bpfast_delta_pwl_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* dA,
                            float* Z, float* db)
    void bpfast_bias_add_d(Py_ssize_t m, Py_ssize_t n, const double* b, double* Z)
    void bpfast_bias_add_f(Py_ssize_t m, Py_ssize_t n, const float* b, float* Z)
    double bpfast_xent_loss_d(int binary, Py_ssize_t N, const double* A, const double* Y,
                              double eps)
    double bpfast_xent_loss_f(int binary, Py_ssize_t N, const float* A, const float* Y,
                              float eps)


# The smooth activations' passes: _pointwise512.h's on processors with AVX-512 (bias and
# activation in one pass; column sums in registers), else _pointwise.h's loops.
cdef extern from "kernels.h" nogil:
    int BPFAST_ACT_SIGMOID, BPFAST_ACT_TANH, BPFAST_ACT_EXP, BPFAST_ACT_SILU
    void bpfast_pw_bias_act_d(int act, Py_ssize_t m, Py_ssize_t n, const double* b,
                              double* Z, double* A)
    void bpfast_pw_bias_act_f(int act, Py_ssize_t m, Py_ssize_t n, const float* b,
                              float* Z, float* A)
    void bpfast_pw_delta_from_a_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* dA,
                                  const double* A, double* Z, double* db)
    void bpfast_pw_delta_from_a_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* dA,
                                  const float* A, float* Z, float* db)
    double bpfast_pw_mse_delta_d(int kind, Py_ssize_t m, Py_ssize_t n, const double* A,
                                 const double* Y, const double* w, double denom,
                                 double* Z, double* db)
    double bpfast_pw_mse_delta_f(int kind, Py_ssize_t m, Py_ssize_t n, const float* A,
                                 const float* Y, const float* w, float denom, float* Z,
                                 float* db)


cdef inline int from_a_kind(int code) noexcept nogil:
    """_pointwise.h's BPFAST_FROM_A_* kind for an activation whose derivative comes from
    a = g(z) alone (sigmoid, tanh, exp), or -1."""
    if code == SIGMOID:
        return 0
    if code == TANH:
        return 1
    if code == EXP:
        return 2
    return -1


cdef inline int pwl_kind(int code) noexcept nogil:
    """_pointwise.h's kind for a piecewise-linear activation code, or -1."""
    if code == IDENTITY:
        return 0
    if code == RELU:
        return 1
    if code == LEAKY_RELU:
        return 2
    return -1


cdef extern from "kernels.h" nogil:
    int BPFAST_SOFTMAX_MAX_N
    void bpfast_softmax_rows_d(Py_ssize_t m, Py_ssize_t n, const double* b, double* Z,
                               double* A)
    void bpfast_softmax_rows_f(Py_ssize_t m, Py_ssize_t n, const float* b, float* Z,
                               float* A)


cdef extern from "kernels.h" nogil:
    double bpfast_sumsq_d(const double* x, Py_ssize_t n)
    double bpfast_sumsq_f(const float* x, Py_ssize_t n)
    double bpfast_max_abs_d(const double* x, Py_ssize_t n)
    double bpfast_max_abs_f(const float* x, Py_ssize_t n)


cdef inline double max_abs(const floating* x, Py_ssize_t n) noexcept nogil:
    """max_k |x_k|, or +inf if any x_k is not finite."""
    if floating is double:
        return bpfast_max_abs_d(x, n)
    else:
        return bpfast_max_abs_f(x, n)


cdef inline double sumsq(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum_k x_k^2, accumulated in double (a vectorised reduction)."""
    if floating is double:
        return bpfast_sumsq_d(x, n)
    else:
        return bpfast_sumsq_f(x, n)
from ._activation_math cimport (activate, derivative, relu, relu_prime,
                               leaky_relu, leaky_relu_prime, IDENTITY, SIGMOID,
                               TANH, RELU, LEAKY_RELU, SOFTPLUS, SILU, SOFTMAX, EXP)

cdef enum:
    LOSS_MSE = 0
    LOSS_CE = 1
    LOSS_BCE = 2
    LOSS_POISSON = 3
    OPT_SGD = 0
    OPT_ADAM = 1


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)

cnp.import_array()


cdef inline bint outputs_finite(int loss, int L, int m, const int* sizes,
                               floating** A) noexcept nogil:
    """Whether every output A^L of the batch is finite, as far as its loss needs telling.
    A product that overflowed reaches the outputs as inf or NaN (a softmax row of inf
    gives NaN), which the cross-entropies' clipped logarithms hide from the loss; the
    squared error and the Poisson loss of such an output are not finite themselves."""
    if loss != LOSS_CE and loss != LOSS_BCE:
        return True
    return max_abs(A[L - 1], <Py_ssize_t>m * sizes[L]) < HUGE_VAL


# ---------------------------------------------------------------------------
# nogil building blocks over one layer
# ---------------------------------------------------------------------------

cdef inline void activate_row(int code, Py_ssize_t n, const floating* z,
                              floating* a) noexcept nogil:
    """a = g(z) elementwise over n values (softmax is bias_activate's); each branch is a
    plain loop the compiler specialises."""
    cdef Py_ssize_t j
    if code == IDENTITY:
        for j in range(n):
            a[j] = z[j]
    elif code == SIGMOID:
        if floating is double:
            bpfast_sigmoid_row_d(n, z, a)
        else:
            bpfast_sigmoid_row_f(n, z, a)
    elif code == TANH:
        if floating is double:
            bpfast_tanh_row_d(n, z, a)
        else:
            bpfast_tanh_row_f(n, z, a)
    elif code == RELU:
        for j in range(n):
            a[j] = relu(z[j])
    elif code == LEAKY_RELU:
        for j in range(n):
            a[j] = leaky_relu(z[j])
    elif code == SOFTPLUS:
        for j in range(n):
            a[j] = activate(SOFTPLUS, z[j])
    elif code == SILU:
        if floating is double:
            bpfast_silu_row_d(n, z, a)
        else:
            bpfast_silu_row_f(n, z, a)
    elif code == EXP:
        if floating is double:
            bpfast_exp_row_d(n, z, a)
        else:
            bpfast_exp_row_f(n, z, a)


cdef inline void delta_row(int code, Py_ssize_t n, const floating* d, floating* z,
                           const floating* a, floating* db) noexcept nogil:
    """z = d (.) g'(z) over one row (a = g(z)), and db += that row, in one pass."""
    cdef Py_ssize_t j
    cdef floating s
    if code == IDENTITY:
        for j in range(n):
            z[j] = d[j]
            db[j] += z[j]
    elif code == SIGMOID:
        for j in range(n):
            z[j] = d[j] * derivative(SIGMOID, z[j], a[j])
            db[j] += z[j]
    elif code == TANH:
        for j in range(n):
            z[j] = d[j] * derivative(TANH, z[j], a[j])
            db[j] += z[j]
    elif code == RELU:
        for j in range(n):
            z[j] = d[j] * relu_prime(z[j])
            db[j] += z[j]
    elif code == LEAKY_RELU:
        for j in range(n):
            z[j] = d[j] * leaky_relu_prime(z[j])
            db[j] += z[j]
    elif code == SOFTPLUS:
        for j in range(n):
            z[j] = d[j] * vsigmoid(z[j])
            db[j] += z[j]
    elif code == SILU:
        for j in range(n):
            s = vsigmoid(z[j])
            z[j] = d[j] * (s * (1 + z[j] * (1 - s)))
            db[j] += z[j]
    elif code == EXP:
        for j in range(n):
            z[j] = d[j] * a[j]
            db[j] += z[j]


cdef void bias_activate(int code, int m, int n, const floating* b,
                        floating* Z, floating* A) noexcept nogil:
    """Z += 1 b^T and A = g(Z).

    Piecewise-linear activations: _pointwise.h's loops. Sigmoid, tanh, silu and exp:
    _pointwise512.h's single pass (or, without AVX-512, the bias add and then the
    vectorised function once over the whole m x n block: one call per row would pay the
    call and the vector loop's ragged tail once per row, which dominates for narrow
    layers). Softmax: across rows when narrow, else its exponentials over the block. The
    others go row by row while the row is in cache.
    """
    cdef Py_ssize_t i, j, size = <Py_ssize_t>m * n
    cdef floating* z
    cdef floating* a
    cdef floating top, total
    cdef int act, kind = pwl_kind(code)
    if kind >= 0:
        if floating is double:
            bpfast_bias_pwl_d(kind, m, n, b, Z, A)
        else:
            bpfast_bias_pwl_f(kind, m, n, b, Z, A)
        return
    if code == SOFTMAX and n <= BPFAST_SOFTMAX_MAX_N:  # narrow rows: across rows
        if floating is double:
            bpfast_softmax_rows_d(m, n, b, Z, A)
        else:
            bpfast_softmax_rows_f(m, n, b, Z, A)
        return
    if code == SIGMOID or code == TANH or code == SILU or code == EXP:
        act = (BPFAST_ACT_SIGMOID if code == SIGMOID else BPFAST_ACT_TANH if code == TANH
               else BPFAST_ACT_SILU if code == SILU else BPFAST_ACT_EXP)
        if floating is double:
            bpfast_pw_bias_act_d(act, m, n, b, Z, A)
        else:
            bpfast_pw_bias_act_f(act, m, n, b, Z, A)
        return
    if code == SOFTMAX:
        if floating is double:
            bpfast_bias_add_d(m, n, b, Z)
        else:
            bpfast_bias_add_f(m, n, b, Z)
        for i in range(m):  # a = z - max z, row by row, then e^a over the block
            z = Z + i * n
            a = A + i * n
            top = z[0]
            for j in range(1, n):
                if z[j] > top:
                    top = z[j]
            for j in range(n):
                a[j] = z[j] - top
        if floating is double:
            bpfast_exp_row_d(size, A, A)
        else:
            bpfast_exp_row_f(size, A, A)
        for i in range(m):
            a = A + i * n
            total = 0
            for j in range(n):
                total = total + a[j]
            for j in range(n):
                a[j] = a[j] / total
        return
    for i in range(m):
        z = Z + i * n
        for j in range(n):
            z[j] += b[j]
        activate_row(code, n, z, A + i * n)


cdef struct LogOfProduct:
    # sum_k log x_k as the log of a product kept as mantissa * 2^exponent: one log per
    # batch instead of one per row. Each factor is at least FLT_EPSILON or DBL_EPSILON
    # (the clipped probabilities), so 16 of them stay far above double's smallest normal
    # before the mantissa is renormalised. Relative error ~ (factors) ulp of the product.
    double mantissa
    long long exponent
    int pending


cdef inline void log_product_times(LogOfProduct* f, double x) noexcept nogil:
    """The product f times x (x >= FLT_EPSILON)."""
    cdef int e
    f.mantissa *= x
    f.pending += 1
    if f.pending == 16:
        f.mantissa = frexp(f.mantissa, &e)
        f.exponent += e
        f.pending = 0


cdef inline double log_product_value(const LogOfProduct* f) noexcept nogil:
    """log of the product: log(mantissa) + exponent log 2."""
    return log(f.mantissa) + f.exponent * M_LN2


cdef double output_delta(int loss, int code, int m, int n, const floating* A,
                         const floating* Y, const floating* w, floating denom,
                         floating* Z, floating* db) noexcept nogil:
    """dZ^L = dE/dZ^L written over Z, db = column sums of dZ^L; returns the loss sum.

    Row c has weight w_c (1 when ``w`` is NULL); ``denom`` is m or the sum of the weights.
    MSE: dZ = w_c (A - Y) / denom (.) g'(Z) (the softmax Jacobian for softmax outputs),
    sum w_c (A - Y)^2. The canonical pairs -- cross-entropy with softmax, binary
    cross-entropy with sigmoid, Poisson with exp -- have dZ = w_c (A - Y) / denom and sum
    -w_c Y log P (plus (1 - Y) log(1 - P) for binary), P = A clipped to [eps, 1 - eps] as
    scikit-learn does, resp. w_c (Y log(Y / A) - Y + A) (half the Poisson deviance).
    """
    cdef Py_ssize_t i, j
    cdef floating r, d, wc, dot, p
    cdef floating* z
    cdef const floating* a
    cdef const floating* y
    cdef double acc = 0, row_acc
    cdef floating eps = FLT_EPSILON if floating is float else DBL_EPSILON
    cdef LogOfProduct factors = LogOfProduct(1.0, 0, 0)
    cdef int kind = -1 if code == IDENTITY else from_a_kind(code)
    if loss == LOSS_MSE and (kind >= 0 or code == IDENTITY):  # _pointwise512.h's pass
        if floating is double:
            return bpfast_pw_mse_delta_d(kind, m, n, A, Y, w, denom, Z, db)
        else:
            return bpfast_pw_mse_delta_f(kind, m, n, A, Y, w, denom, Z, db)
    if (loss == LOSS_CE or loss == LOSS_BCE) and w == NULL:
        # dZ = (A - Y) / denom with its column sums is the identity's squared-error pass
        # (its sum of squares unused); the loss from _pointwise.h's vectorised products
        if floating is double:
            bpfast_pw_mse_delta_d(-1, m, n, A, Y, NULL, denom, Z, db)
            return bpfast_xent_loss_d(loss == LOSS_BCE, <Py_ssize_t>m * n, A, Y, eps)
        else:
            bpfast_pw_mse_delta_f(-1, m, n, A, Y, NULL, denom, Z, db)
            return bpfast_xent_loss_f(loss == LOSS_BCE, <Py_ssize_t>m * n, A, Y, eps)
    memset(db, 0, n * sizeof(floating))
    for i in range(m):
        wc = w[i] if w != NULL else 1
        a = A + i * n
        y = Y + i * n
        z = Z + i * n
        row_acc = 0
        if loss == LOSS_MSE:
            if code == SOFTMAX:
                dot = 0
                for j in range(n):
                    r = a[j] - y[j]
                    row_acc += <double>r * r
                    d = wc * r / denom
                    z[j] = d
                    dot = dot + d * a[j]
                for j in range(n):
                    z[j] = a[j] * (z[j] - dot)
            else:
                for j in range(n):
                    r = a[j] - y[j]
                    row_acc += <double>r * r
                    z[j] = wc * r / denom * derivative(code, z[j], a[j])
        elif loss == LOSS_POISSON:
            for j in range(n):
                z[j] = wc * (a[j] - y[j]) / denom
                if y[j] != 0:
                    row_acc += <double>y[j] * _log(y[j] / a[j])
                row_acc += <double>a[j] - y[j]
        else:
            for j in range(n):
                z[j] = wc * (a[j] - y[j]) / denom
                p = a[j] if a[j] > eps else eps
                p = p if p < 1 - eps else 1 - eps
                if y[j] == 1 and w == NULL:
                    log_product_times(&factors, p)
                elif y[j] != 0:
                    row_acc -= <double>y[j] * _log(p)
                if loss == LOSS_BCE:
                    if y[j] == 0 and w == NULL:
                        log_product_times(&factors, 1 - p)
                    elif y[j] != 1:
                        row_acc -= <double>(1 - y[j]) * _log(1 - p)
        acc += <double>wc * row_acc
        for j in range(n):
            db[j] += z[j]
    return acc - log_product_value(&factors)


cdef void hidden_delta(int code, int m, int n, const floating* dA, const floating* A,
                       floating* Z, floating* db) noexcept nogil:
    """dZ = dA (.) g'(Z) written over Z, db = column sums of dZ."""
    cdef Py_ssize_t i
    cdef int kind = pwl_kind(code)
    if kind >= 0:
        if floating is double:
            bpfast_delta_pwl_d(kind, m, n, dA, Z, db)
        else:
            bpfast_delta_pwl_f(kind, m, n, dA, Z, db)
        return
    kind = from_a_kind(code)
    if kind >= 0:
        if floating is double:
            bpfast_pw_delta_from_a_d(kind, m, n, dA, A, Z, db)
        else:
            bpfast_pw_delta_from_a_f(kind, m, n, dA, A, Z, db)
        return
    memset(db, 0, n * sizeof(floating))
    for i in range(m):
        delta_row(code, n, dA + i * n, Z + i * n, A + i * n, db)


# ---------------------------------------------------------------------------
# nogil passes over all layers
# ---------------------------------------------------------------------------

cdef inline void layer_product(bint transposed, int m, int n_out, int n_in,
                              const floating* prev, const floating* W,
                              floating* Z) noexcept nogil:
    """Z = prev W^T (m x n_out) for W stored n_out x n_in, or prev W for W stored
    transposed (n_in x n_out)."""
    if transposed:
        gemm(False, False, m, n_out, n_in, <floating>1, prev, n_in, W, n_out,
             <floating>0, Z, n_out)
    else:
        gemm(False, True, m, n_out, n_in, <floating>1, prev, n_in, W, n_in,
             <floating>0, Z, n_out)


cdef inline void weight_gradient(bint transposed, int m, int n_out, int n_in,
                                 floating alpha, const floating* dZ, const floating* prev,
                                 floating beta, floating* G) noexcept nogil:
    """G = beta G + alpha dZ^T prev (n_out x n_in), or its transpose (n_in x n_out)."""
    if transposed:
        gemm(True, False, n_in, n_out, m, alpha, prev, n_in, dZ, n_out, beta, G, n_out)
    else:
        gemm(True, False, n_out, n_in, m, alpha, dZ, n_out, prev, n_in, beta, G, n_in)


cdef void forward_pass(int L, int m, const int* sizes, const int* codes,
                       const floating* X, floating** W, floating** b,
                       floating** Z, floating** A, bint first_t=False,
                       const floating** X_rows=NULL) noexcept nogil:
    """Z[l] = A[l-1] W[l]^T + b[l], A[l] = g_l(Z[l]) for l = 0..L-1, with A[-1] = X.

    ``first_t``: W[0] is stored transposed (n^0 x n^1), as the trainer keeps it.
    ``X_rows`` (with ``first_t``, on processors with the tile kernels): row p of X is
    X_rows[p], and the first layer is _layer_forward.h's product with its bias and
    piecewise-linear activation fused in; ``X`` is not read. Then Z[0] is not written
    when only :func:`optimizer_step`'s backward kernel would read it (it takes the signs
    from A[0]).
    """
    cdef int l, kind
    cdef bint store_z
    cdef const floating* prev = X
    for l in range(L):
        if l == 0 and X_rows != NULL:
            kind = pwl_kind(codes[0])
            # Z[0] is only read by the backward kernel of optimizer_step, which takes the
            # signs from A[0], when the layer above is small enough for it: then the
            # forward kernel writes A[0] alone
            store_z = not (L >= 2 and tile_backward(m, sizes[2], sizes[1], codes[0]))
            if floating is double:
                bpfast_layer_forward_d(m, sizes[0], sizes[1], X_rows, W[0], sizes[1],
                                       b[0], Z[0], A[0], sizes[1], kind, store_z)
            else:
                bpfast_layer_forward_f(m, sizes[0], sizes[1], X_rows, W[0], sizes[1],
                                       b[0], Z[0], A[0], sizes[1], kind, store_z)
            if kind < 0:
                bias_activate(codes[0], m, sizes[1], b[0], Z[0], A[0])
        else:
            layer_product(first_t and l == 0, m, sizes[l + 1], sizes[l], prev, W[l],
                          Z[l])
            bias_activate(codes[l], m, sizes[l + 1], b[l], Z[l], A[l])
        prev = A[l]


cdef void backward_layers(int L, int m, const int* sizes, const int* codes,
                          const floating* X, floating** W, floating** Z, floating** A,
                          floating** dW, floating** db, floating* scratch,
                          bint first_t=False) noexcept nogil:
    """From dZ[L-1] (in Z[L-1]) down: dW[l] = dZ[l]^T A[l-1], dA[l-1] = dZ[l] W[l],
    dZ[l-1] = dA[l-1] (.) g'(Z[l-1]) over Z[l-1], db[l-1] = its column sums.

    scratch (at least m x the widest hidden layer) holds dA[l-1]. ``first_t``: W[0] and
    dW[0] are stored transposed.
    """
    cdef int l
    cdef const floating* prev
    for l in range(L - 1, -1, -1):
        prev = X if l == 0 else A[l - 1]
        weight_gradient(first_t and l == 0, m, sizes[l + 1], sizes[l], <floating>1, Z[l],
                        prev, <floating>0, dW[l])
        if l > 0:
            gemm(False, False, m, sizes[l], sizes[l + 1], <floating>1, Z[l], sizes[l + 1],
                 W[l], sizes[l], <floating>0, scratch, sizes[l])
            hidden_delta(codes[l - 1], m, sizes[l], scratch, A[l - 1], Z[l - 1], db[l - 1])


cdef double backward_pass(int L, int m, const int* sizes, const int* codes,
                          const floating* X, const floating* Y, floating** W,
                          floating** Z, floating** A, floating** dW, floating** db,
                          floating* scratch) noexcept nogil:
    """Back-propagate the seed's E = sum (A[L-1] - Y)^2 / (2m) after forward_pass; returns E."""
    cdef double sq = output_delta(LOSS_MSE, codes[L - 1], m, sizes[L], A[L - 1], Y,
                                  <floating*>NULL, <floating>m, Z[L - 1], db[L - 1])
    backward_layers(L, m, sizes, codes, X, W, Z, A, dW, db, scratch)
    return sq / (2.0 * m)


cdef inline Py_ssize_t bias_offset(const int* sizes, int l) noexcept nogil:
    """Where layer l's biases start in one array of every layer's: sum n^1..n^l."""
    cdef Py_ssize_t at = 0
    cdef int j
    for j in range(l):
        at += sizes[j + 1]
    return at


cdef double blocked_backprop(int L, Py_ssize_t n, int block, const int* sizes,
                             const int* codes, const floating* X, const floating* Y,
                             const floating* W0, floating** W, floating** b, floating** Z,
                             floating** A, floating* dW0, floating** dW, floating** db,
                             floating* db_block, floating* scratch) noexcept nogil:
    """:func:`backward_pass` over n rows taken ``block`` rows at a time; returns E.

    Each block runs forward and backward through the layers while its activations are
    in cache; every layer's dW accumulates the blocks' products (beta = 1 after the
    first block) and db their column sums, and the output delta divides by all n rows,
    so the result is the whole batch's gradient: the same sums, grouped by block. W[0]
    and dW[0] are the panel kernel's transposed (n^0 x n^1) buffers: W0 (n^1 x n^0) is
    copied into W[0] first, and dW[0] out to dW0 last. Z, A and scratch have ``block``
    rows; db_block has room for one bias gradient per layer.
    """
    cdef Py_ssize_t start, k
    cdef int l, mb, n0 = sizes[0], nL = sizes[L]
    cdef double sq = 0
    cdef floating beta
    cdef floating* dbl
    cdef const floating* x
    cdef const floating* prev
    transpose(sizes[1], n0, W0, W[0])
    start = 0
    while start < n:
        mb = <int>(n - start if n - start < block else block)
        x = X + start * n0
        beta = 0 if start == 0 else 1
        forward_pass(L, mb, sizes, codes, x, W, b, Z, A, True)
        sq += output_delta(LOSS_MSE, codes[L - 1], mb, nL, A[L - 1], Y + start * nL,
                           <floating*>NULL, <floating>n, Z[L - 1],
                           db_block + bias_offset(sizes, L - 1))
        for l in range(L - 1, -1, -1):
            prev = x if l == 0 else A[l - 1]
            weight_gradient(l == 0, mb, sizes[l + 1], sizes[l], <floating>1, Z[l], prev,
                            beta, dW[l])
            if l > 0:
                gemm(False, False, mb, sizes[l], sizes[l + 1], <floating>1, Z[l],
                     sizes[l + 1], W[l], sizes[l], <floating>0, scratch, sizes[l])
                hidden_delta(codes[l - 1], mb, sizes[l], scratch, A[l - 1], Z[l - 1],
                             db_block + bias_offset(sizes, l - 1))
            dbl = db_block + bias_offset(sizes, l)
            for k in range(sizes[l + 1]):
                db[l][k] = dbl[k] if start == 0 else db[l][k] + dbl[k]
        start += mb
    transpose(n0, sizes[1], dW[0], dW0)
    return sq / (2.0 * n)


cdef void blocked_forward(int L, Py_ssize_t n, int block, const int* sizes,
                          const int* codes, const floating* X, const floating* W0,
                          floating** W, floating** b, floating** Z, floating** A,
                          floating* out) noexcept nogil:
    """:func:`forward_pass` over n rows taken ``block`` rows at a time, the last layer
    written straight into ``out`` (n x n^L). W[0] is the panel kernel's transposed
    (n^0 x n^1) buffer, into which W0 (n^1 x n^0) is copied first; Z and A have
    ``block`` rows, and A's last entry is moved along ``out`` block by block."""
    cdef Py_ssize_t start = 0
    cdef int mb, n0 = sizes[0], nL = sizes[L]
    transpose(sizes[1], n0, W0, W[0])
    while start < n:
        mb = <int>(n - start if n - start < block else block)
        A[L - 1] = out + start * nL
        forward_pass(L, mb, sizes, codes, X + start * n0, W, b, Z, A, True)
        start += mb


# ---------------------------------------------------------------------------
# Checked access to NumPy buffers
# ---------------------------------------------------------------------------

cdef void* checked_data(object arr, str name, int typenum, Py_ssize_t rows,
                        Py_ssize_t cols, bint writable) except NULL:
    """Pointer to the data of a C-contiguous array of the given dtype and shape.

    ``cols < 0`` asks for a 1-D array of length ``rows``. Any mismatch raises, so no
    pointer is ever taken to a buffer of the wrong size.
    """
    if not cnp.PyArray_Check(arr):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr
    cdef int ndim = 1 if cols < 0 else 2
    if cnp.PyArray_NDIM(a) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got {cnp.PyArray_NDIM(a)}")
    if cnp.PyArray_TYPE(a) != typenum:
        expected_dtype = "float64" if typenum == cnp.NPY_DOUBLE else "float32"
        raise TypeError(f"{name}: expected dtype {expected_dtype}, got {a.dtype}")
    if a.shape[0] != rows or (ndim == 2 and a.shape[1] != cols):
        expected = str((rows,)) if ndim == 1 else str((rows, cols))
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(arr.shape)}")
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise TypeError(f"{name}: expected native byte order, got dtype {a.dtype.str}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{name}: expected a C-contiguous, aligned array")
    if writable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name}: expected a writable array")
    return cnp.PyArray_DATA(a)


cdef int check_permutation(const Py_ssize_t* order, Py_ssize_t n) except -1:
    """Raise unless order[0..n) holds every index 0..n-1 exactly once (O(n))."""
    cdef unsigned char* seen = <unsigned char*>calloc(n, 1)
    cdef Py_ssize_t i, k
    if seen == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            k = order[i]
            if k < 0 or k >= n or seen[k]:
                raise ValueError("order: expected a permutation of range(n_samples)")
            seen[k] = 1
    finally:
        free(seen)
    return 0


cdef class Layers:
    """Raw pointers to one network's parameters and buffers for a batch of m rows.

    Built from lists of arrays after checking each of them; the lists are kept alive
    with the object, so the pointers stay valid for its lifetime.
    """
    cdef readonly int L, m, typenum
    cdef bint ready
    cdef int* sizes
    cdef int* codes
    cdef void** W
    cdef void** b
    cdef void** Z
    cdef void** A
    cdef void** dW
    cdef void** db
    cdef object keep

    def __cinit__(self):
        self.ready = False
        self.sizes = NULL
        self.codes = NULL
        self.W = self.b = self.Z = self.A = self.dW = self.db = NULL

    def __init__(self, list weights, list biases, codes, int n_inputs, int m,
                 list Z, list A, list dW=None, list db=None):
        cdef Py_ssize_t L = len(weights), l
        if self.sizes != NULL:
            raise RuntimeError("Layers objects cannot be initialised twice")
        if L < 1:
            raise ValueError("weights: expected at least one layer")
        if len(biases) != L or len(Z) != L or len(A) != L:
            raise ValueError("biases, Z and A must have one entry per layer")
        if (dW is None) != (db is None) or (dW is not None and (len(dW) != L or len(db) != L)):
            raise ValueError("dW and db must both be given, with one entry per layer")
        if len(codes) != L:
            raise ValueError("codes: expected one activation code per layer")
        if m < 1 or n_inputs < 1:
            raise ValueError("m and n_inputs must be positive")
        self.L = L
        self.m = m
        first = weights[0]
        if not cnp.PyArray_Check(first):
            raise TypeError(f"weights[0]: expected a numpy.ndarray, got {type(first).__name__}")
        self.typenum = cnp.PyArray_TYPE(<cnp.ndarray>first)
        if self.typenum != cnp.NPY_DOUBLE and self.typenum != cnp.NPY_FLOAT:
            raise TypeError(f"weights[0]: expected float32 or float64, got {first.dtype}")
        # Private copies of the lists: the caller editing theirs cannot free our arrays.
        weights, biases, Z, A = list(weights), list(biases), list(Z), list(A)
        dW = None if dW is None else list(dW)
        db = None if db is None else list(db)
        self.keep = (weights, biases, Z, A, dW, db)
        self.sizes = <int*>calloc(L + 1, sizeof(int))
        self.codes = <int*>calloc(L, sizeof(int))
        self.W = <void**>calloc(L, sizeof(void*))
        self.b = <void**>calloc(L, sizeof(void*))
        self.Z = <void**>calloc(L, sizeof(void*))
        self.A = <void**>calloc(L, sizeof(void*))
        if dW is not None:
            self.dW = <void**>calloc(L, sizeof(void*))
            self.db = <void**>calloc(L, sizeof(void*))
            if self.dW == NULL or self.db == NULL:
                raise MemoryError()
        if (self.sizes == NULL or self.codes == NULL or self.W == NULL or self.b == NULL
                or self.Z == NULL or self.A == NULL):
            raise MemoryError()
        self.sizes[0] = n_inputs
        cdef int t = self.typenum
        for l in range(L):
            code = int(codes[l])
            if code < 0 or code > 8 or (code == SOFTMAX and l != L - 1):
                raise ValueError(f"codes[{l}]: activation code {code} is not valid here")
            self.codes[l] = code
            w = weights[l]
            if not cnp.PyArray_Check(w) or cnp.PyArray_NDIM(<cnp.ndarray>w) != 2:
                raise ValueError(f"weights[{l}]: expected a 2-D numpy.ndarray")
            n = w.shape[0]
            if n < 1 or n > 2147483647:
                raise ValueError(f"weights[{l}]: expected 1 to 2**31-1 rows, got {n}")
            self.sizes[l + 1] = n
            self.W[l] = checked_data(w, f"weights[{l}]", t, n, self.sizes[l], False)
            self.b[l] = checked_data(biases[l], f"biases[{l}]", t, n, -1, False)
            self.Z[l] = checked_data(Z[l], f"Z[{l}]", t, m, n, True)
            self.A[l] = checked_data(A[l], f"A[{l}]", t, m, n, True)
            if dW is not None:
                self.dW[l] = checked_data(dW[l], f"dW[{l}]", t, n, self.sizes[l], True)
                self.db[l] = checked_data(db[l], f"db[{l}]", t, n, -1, True)
        self.ready = True

    def __dealloc__(self):
        free(self.sizes)
        free(self.codes)
        free(self.W)
        free(self.b)
        free(self.Z)
        free(self.A)
        free(self.dW)
        free(self.db)

    cdef int max_hidden(self) noexcept:
        cdef int l, widest = 1
        for l in range(1, self.L):
            if self.sizes[l] > widest:
                widest = self.sizes[l]
        return widest

    def parameters_finite(self):
        """True if every weight and bias is finite (one vectorised pass, no copies)."""
        self.check_ready()
        cdef bint ok
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                ok = all_finite[double](self.L, self.sizes, <double**>self.W,
                                        <double**>self.b)
            else:
                ok = all_finite[float](self.L, self.sizes, <float**>self.W,
                                       <float**>self.b)
        return ok

    cdef int check_ready(self) except -1:
        if not self.ready:
            raise RuntimeError("this object was not (successfully) initialised")
        return 0

    def forward(self, X):
        """Run the forward pass on X (m x n[0]); results land in the A and Z buffers."""
        self.check_ready()
        cdef void* x = checked_data(X, "X", self.typenum, self.m, self.sizes[0], False)
        if self.typenum == cnp.NPY_DOUBLE:
            with nogil:
                forward_pass[double](self.L, self.m, self.sizes, self.codes, <double*>x,
                                     <double**>self.W, <double**>self.b,
                                     <double**>self.Z, <double**>self.A)
        else:
            with nogil:
                forward_pass[float](self.L, self.m, self.sizes, self.codes, <float*>x,
                                    <float**>self.W, <float**>self.b,
                                    <float**>self.Z, <float**>self.A)

    def backprop(self, X, Y, scratch):
        """Forward then backward pass on (X, Y); fills dW and db and returns E."""
        self.check_ready()
        if self.dW == NULL:
            raise ValueError("these Layers were built without dW and db buffers")
        cdef void* x = checked_data(X, "X", self.typenum, self.m, self.sizes[0], False)
        cdef void* y = checked_data(Y, "Y", self.typenum, self.m, self.sizes[self.L], False)
        cdef Py_ssize_t need = <Py_ssize_t>self.m * self.max_hidden()
        cdef void* s = checked_data(scratch, "scratch", self.typenum, need, -1, True)
        cdef double E
        if self.typenum == cnp.NPY_DOUBLE:
            with nogil:
                forward_pass[double](self.L, self.m, self.sizes, self.codes, <double*>x,
                                     <double**>self.W, <double**>self.b,
                                     <double**>self.Z, <double**>self.A)
                E = backward_pass[double](self.L, self.m, self.sizes, self.codes,
                                          <double*>x, <double*>y, <double**>self.W,
                                          <double**>self.Z, <double**>self.A,
                                          <double**>self.dW, <double**>self.db, <double*>s)
        else:
            with nogil:
                forward_pass[float](self.L, self.m, self.sizes, self.codes, <float*>x,
                                    <float**>self.W, <float**>self.b,
                                    <float**>self.Z, <float**>self.A)
                E = backward_pass[float](self.L, self.m, self.sizes, self.codes,
                                         <float*>x, <float*>y, <float**>self.W,
                                         <float**>self.Z, <float**>self.A,
                                         <float**>self.dW, <float**>self.db, <float*>s)
        return E

    def forward_blocks(self, X, out, W0T):
        """:meth:`forward` over all rows of X, m rows (this object's batch) at a time in
        the panel kernel's scope (see :func:`backprop_block_rows`), the outputs written
        to ``out`` (rows of X x n^L). ``W0T`` (n^0 x n^1) takes the first layer's weights
        transposed. The one-pass forward's values to rounding (the panel kernel adds each
        entry's terms in order, OpenBLAS in its own blocks). Where the one-pass forward's
        products went to OpenBLAS's threads, whose workers keep spinning for a while after
        each product, the training epoch that followed (fitting with validation data)
        found its second core taken."""
        self.check_ready()
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1:
            raise ValueError("X: expected a 2-D array with at least one row")
        cdef int L = self.L, n0 = self.sizes[0], n1 = self.sizes[1]
        cdef void* x = checked_data(X, "X", self.typenum, n, n0, False)
        cdef void* o = checked_data(out, "out", self.typenum, n, self.sizes[L], True)
        cdef void* wt = checked_data(W0T, "W0T", self.typenum, n0, n1, True)
        cdef void** tW = with_first(self.W, L, wt)
        # a copy of the A pointers, whose last entry blocked_forward moves along out
        cdef void** tA = with_first(self.A, L, self.A[0])
        if tW == NULL or tA == NULL:
            free(tW)
            free(tA)
            raise MemoryError()
        with nogil:
            bpfast_set_panel_scope(1)
            if self.typenum == cnp.NPY_DOUBLE:
                blocked_forward[double](L, n, self.m, self.sizes, self.codes, <double*>x,
                                        <double*>self.W[0], <double**>tW,
                                        <double**>self.b, <double**>self.Z,
                                        <double**>tA, <double*>o)
            else:
                blocked_forward[float](L, n, self.m, self.sizes, self.codes, <float*>x,
                                       <float*>self.W[0], <float**>tW, <float**>self.b,
                                       <float**>self.Z, <float**>tA, <float*>o)
            bpfast_set_panel_scope(0)
        free(tW)
        free(tA)

    def backprop_blocks(self, X, Y, scratch, W0T, dW0T, db_block):
        """:meth:`backprop` over all rows of (X, Y), taken m rows (this object's batch)
        at a time in the panel kernel's scope (see :func:`backprop_block_rows` and
        :func:`blocked_backprop`); fills dW and db and returns E.

        ``W0T`` and ``dW0T`` (n^0 x n^1) take the first layer's weights and gradient
        transposed; ``db_block`` has room for sum n^l values; none is read before it is
        written."""
        self.check_ready()
        if self.dW == NULL:
            raise ValueError("these Layers were built without dW and db buffers")
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1:
            raise ValueError("X: expected a 2-D array with at least one row")
        cdef int L = self.L, n0 = self.sizes[0], n1 = self.sizes[1], l
        cdef Py_ssize_t total = 0
        for l in range(L):
            total += self.sizes[l + 1]
        cdef void* x = checked_data(X, "X", self.typenum, n, n0, False)
        cdef void* y = checked_data(Y, "Y", self.typenum, n, self.sizes[L], False)
        cdef void* s = checked_data(scratch, "scratch", self.typenum,
                                    <Py_ssize_t>self.m * self.max_hidden(), -1, True)
        cdef void* wt = checked_data(W0T, "W0T", self.typenum, n0, n1, True)
        cdef void* dwt = checked_data(dW0T, "dW0T", self.typenum, n0, n1, True)
        cdef void* dbb = checked_data(db_block, "db_block", self.typenum, total, -1, True)
        cdef void** tW = with_first(self.W, L, wt)
        cdef void** tdW = with_first(self.dW, L, dwt)
        cdef double E
        if tW == NULL or tdW == NULL:
            free(tW)
            free(tdW)
            raise MemoryError()
        with nogil:
            bpfast_set_panel_scope(1)
            if self.typenum == cnp.NPY_DOUBLE:
                E = blocked_backprop[double](L, n, self.m, self.sizes, self.codes,
                                             <double*>x, <double*>y, <double*>self.W[0],
                                             <double**>tW, <double**>self.b,
                                             <double**>self.Z, <double**>self.A,
                                             <double*>self.dW[0], <double**>tdW,
                                             <double**>self.db, <double*>dbb,
                                             <double*>s)
            else:
                E = blocked_backprop[float](L, n, self.m, self.sizes, self.codes,
                                            <float*>x, <float*>y, <float*>self.W[0],
                                            <float**>tW, <float**>self.b, <float**>self.Z,
                                            <float**>self.A, <float*>self.dW[0],
                                            <float**>tdW, <float**>self.db, <float*>dbb,
                                            <float*>s)
            bpfast_set_panel_scope(0)
        free(tW)
        free(tdW)
        return E


# ---------------------------------------------------------------------------
# Training: whole epochs of mini-batch steps without the GIL
# ---------------------------------------------------------------------------

cdef extern from "kernels.h" nogil:
    double bpfast_update_d(Py_ssize_t n, double* P, const double* G, double* V, double* S,
                           int adam, double lr, double mu, int nesterov, double beta1,
                           double beta2, double eps, double lr_t, double l2)
    double bpfast_update_f(Py_ssize_t n, float* P, const float* G, float* V, float* S,
                           int adam, float lr, float mu, int nesterov, float beta1,
                           float beta2, float eps, float lr_t, float l2)


cdef inline double update(int optimizer, Py_ssize_t N, floating* p, const floating* g,
                          floating* s1, floating* s2, floating lr, floating momentum,
                          bint nesterov, floating beta1, floating beta2, floating epsilon,
                          floating lr_t, floating l2) noexcept nogil:
    """One optimizer step on N parameters p with gradient g + l2 p (scikit-learn's rules);
    returns sum p^2 of the new values.

    sgd: p -= lr g, or with momentum v = mu v - lr g and p += v (nesterov: p += mu v - lr g).
    adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p += -lr_t m / (sqrt(v) + eps).
    """
    if floating is double:
        return bpfast_update_d(N, p, g, s1, s2, optimizer == OPT_ADAM, lr, momentum,
                               nesterov, beta1, beta2, epsilon, lr_t, l2)
    else:
        return bpfast_update_f(N, p, g, s1, s2, optimizer == OPT_ADAM, lr, momentum,
                               nesterov, beta1, beta2, epsilon, lr_t, l2)


cdef extern from "kernels.h" nogil:
    int bpfast_tiles_available()


cdef extern from "kernels.h" nogil:
    void bpfast_layer_forward_d(int m, int n_in, int n, const double** rows,
                                const double* W, Py_ssize_t ldw, const double* b,
                                double* Z, double* A, Py_ssize_t ldz, int kind,
                                int store_z)
    void bpfast_layer_forward_f(int m, int n_in, int n, const float** rows,
                                const float* W, Py_ssize_t ldw, const float* b, float* Z,
                                float* A, Py_ssize_t ldz, int kind, int store_z)
    void bpfast_layer_forward_d_back(int m, int n_in, int n, const double* dZ,
                                     const double* W, Py_ssize_t ldw, const double* Ap,
                                     double* Zp, Py_ssize_t ldz, double* db, int kind)
    void bpfast_layer_forward_f_back(int m, int n_in, int n, const float* dZ,
                                     const float* W, Py_ssize_t ldw, const float* Ap,
                                     float* Zp, Py_ssize_t ldz, float* db, int kind)


cdef extern from "kernels.h" nogil:
    double bpfast_grad_update_d(int m, int R, int C, const double* A, Py_ssize_t lda,
                                const double** arows, const double* B, Py_ssize_t ldb,
                                double* P, Py_ssize_t ldp, double* V,
                                double* S, int adam, double lr, double mu, int nesterov,
                                double beta1, double beta2, double eps, double lr_t,
                                double l2)
    double bpfast_grad_update_f(int m, int R, int C, const float* A, Py_ssize_t lda,
                                const float** arows, const float* B, Py_ssize_t ldb,
                                float* P, Py_ssize_t ldp, float* V,
                                float* S, int adam, float lr, float mu, int nesterov,
                                float beta1, float beta2, float eps, float lr_t, float l2)


# Layers whose weight gradient takes at most this many multiply-adds (batch x n^l x
# n^(l-1)) are stepped by _grad_update.h's fused kernel, the gradient never stored;
# larger ones take a BLAS product into dW and the update pass, which wins once the
# product is large (docs/performance.md). 0 where the processor lacks AVX-512.
cdef long long bpfast_fused_update_limit = (1LL << 19) if bpfast_tiles_available() else 0


cdef inline bint tile_backward(int m, int n_above, int n_below,
                              int code_below) noexcept nogil:
    """Whether optimizer_step takes a layer's delta from _layer_forward.h's backward
    kernel: a piecewise-linear activation below, and a product small enough for the tile
    kernels. That kernel reads only A below, so forward_pass may then skip Z."""
    return (pwl_kind(code_below) >= 0
            and <long long>m * n_above * n_below <= bpfast_fused_update_limit)


cdef bint panel_network(int L, const int* sizes, int m, bint first_t,
                        int itemsize) noexcept nogil:
    """Whether every product of a training step at batch m that OpenBLAS would thread
    (more than BPFAST_PANEL_MIN multiply-adds) fits _panel_gemm.h's kernel: forward
    Z = A W^T (W stored n^l x n^(l-1), or transposed for the first layer with
    ``first_t``), dA = dZ W and the weight update; see bpfast_panel_scope."""
    cdef int l, n_in, n_out
    cdef bint tr
    for l in range(L):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        tr = first_t and l == 0
        if not panel_product(not tr, m, n_out, n_in, itemsize):  # forward
            return False
        if l > 0 and not panel_product(False, m, n_in, n_out, itemsize):  # dA
            return False
        if not panel_product(False, n_in if tr else n_out, n_out if tr else n_in, m,
                             itemsize):  # update, of W or of its transposed copy
            return False
    return True


cdef inline bint panel_product(bint trans_b, int m, int n, int k,
                               int itemsize) noexcept nogil:
    """A product that OpenBLAS keeps on one thread, or one the panel kernel fits."""
    return (<long long>m * n * k <= BPFAST_PANEL_MIN
            or bpfast_panel_fits(trans_b, m, n, k, itemsize))


cdef inline double grad_update(bint transposed, int m, int n_out, int n_in,
                               const floating* dZ, const floating* prev, floating* W,
                               floating* s1, floating* s2, int optimizer, floating lr,
                               floating momentum, bint nesterov, floating beta1,
                               floating beta2, floating epsilon, floating lr_t,
                               floating l2, const floating** prev_rows=NULL) noexcept nogil:
    """W stepped as :func:`update` with dW = dZ^T prev (n_out x n_in; its transpose for W
    stored transposed), the gradient never stored; returns sum W^2 of the new values.

    ``prev_rows`` (W stored transposed only): row p of prev is prev_rows[p], and ``prev``
    is not read."""
    cdef const floating* a = prev if transposed else dZ
    cdef const floating* bb = dZ if transposed else prev
    cdef int R = n_in if transposed else n_out
    cdef int C = n_out if transposed else n_in
    if floating is double:
        return bpfast_grad_update_d(m, R, C, a, R, prev_rows, bb, C, W, C, s1, s2,
                                    optimizer == OPT_ADAM, lr, momentum, nesterov, beta1,
                                    beta2, epsilon, lr_t, l2)
    else:
        return bpfast_grad_update_f(m, R, C, a, R, prev_rows, bb, C, W, C, s1, s2,
                                    optimizer == OPT_ADAM, lr, momentum, nesterov, beta1,
                                    beta2, epsilon, lr_t, l2)


cdef double l2_penalty(int L, const int* sizes, floating** W, floating** dW,
                       floating scale) noexcept nogil:
    """dW[l] += scale W[l] for every layer; returns sum of W[l]^2 over all layers."""
    cdef int l
    cdef Py_ssize_t k, N
    cdef double sq = 0
    for l in range(L):
        N = <Py_ssize_t>sizes[l + 1] * sizes[l]
        sq += sumsq(W[l], N)
        for k in range(N):
            dW[l][k] += scale * W[l][k]
    return sq


cdef double batch_gradient(
        int L, int m, const int* sizes, const int* codes,
        floating** W, floating** b, floating** Z, floating** A,
        floating** dW, floating** db, floating* scratch,
        const floating* X, const floating* Y, const floating* w, floating denom,
        int loss, floating loss_scale, floating alpha, bint first_t=False) noexcept nogil:
    """One batch's loss (data term times loss_scale, plus alpha/(2 denom) sum ||W||^2)
    and its gradient in dW, db: forward, output delta, backward, L2. ``first_t``: W[0]
    and dW[0] are stored transposed. With alpha = 0 the L2 term is left out (the
    trainer adds it in its update pass)."""
    cdef double value
    forward_pass(L, m, sizes, codes, X, W, b, Z, A, first_t)
    value = output_delta(loss, codes[L - 1], m, sizes[L], A[L - 1], Y, w, denom,
                         Z[L - 1], db[L - 1])
    value = value * loss_scale / (2.0 * denom if loss == LOSS_MSE else denom)
    backward_layers(L, m, sizes, codes, X, W, Z, A, dW, db, scratch, first_t)
    if alpha != 0:
        value += 0.5 * alpha * l2_penalty(L, sizes, W, dW, alpha / denom) / denom
    return value


# A large layer's weight gradient is taken this many entries (rows of W) at a time, each
# block stepped at once: one block of gradient is ever resident, not every layer's dW
# (fitting 784-1024-1024-10 with momentum in float64: 2 MiB instead of 14.2).
cdef Py_ssize_t bpfast_gradient_block = 1 << 18


cdef double blocked_step(bint transposed, int m, int n_out, int n_in,
                         const floating* dZ, const floating* prev, floating* W,
                         floating* s1, floating* s2, floating* G, int optimizer,
                         floating lr, floating momentum, bint nesterov, floating beta1,
                         floating beta2, floating epsilon, floating lr_t,
                         floating l2) noexcept nogil:
    """:func:`update` of W (n_out x n_in, or n_in x n_out stored transposed) with the
    gradient dZ^T prev, a block of whole rows at a time: G = the block's rows of the
    gradient (a BLAS product), then the step of those rows of W and of its state. G has
    room for min(N, bpfast_gradient_block) entries (N = n_out n_in). Returns sum W^2 of
    the new values. The same values as the gradient in full and then the step."""
    cdef int R = n_in if transposed else n_out
    cdef int C = n_out if transposed else n_in
    cdef Py_ssize_t N = <Py_ssize_t>R * C
    cdef Py_ssize_t blocks = (N + bpfast_gradient_block - 1) // bpfast_gradient_block
    cdef int rows = <int>((R + blocks - 1) // blocks), r0, r1
    cdef Py_ssize_t at
    cdef double total = 0
    if rows < 1:
        rows = 1
    r0 = 0
    while r0 < R:
        r1 = r0 + rows if r0 + rows < R else R
        at = <Py_ssize_t>r0 * C
        if transposed:  # rows of W^T: G = prev[:, r0:r1]^T dZ
            gemm(True, False, r1 - r0, C, m, <floating>1, prev + r0, n_in, dZ, n_out,
                 <floating>0, G, C)
        else:  # G = dZ[:, r0:r1]^T prev
            gemm(True, False, r1 - r0, C, m, <floating>1, dZ + r0, n_out, prev, n_in,
                 <floating>0, G, C)
        total += update(optimizer, <Py_ssize_t>(r1 - r0) * C, W + at, G,
                        s1 + at if s1 != NULL else NULL, s2 + at if s2 != NULL else NULL,
                        lr, momentum, nesterov, beta1, beta2, epsilon, lr_t, l2)
        r0 = r1
    return total


def set_gradient_block(Py_ssize_t entries):
    """Large layers' gradients are taken ``entries`` at a time (whole rows, at least
    one) in momentum and Adam steps; returns the old value. For benchmarks and tests."""
    global bpfast_gradient_block
    if entries < 1:
        raise ValueError(f"entries: expected a positive number, got {entries}")
    old = bpfast_gradient_block
    bpfast_gradient_block = entries
    return old


cdef double optimizer_step(
        int L, int m, const int* sizes, const int* codes,
        floating** W, floating** b, floating** Z, floating** A,
        floating** dW, floating** db, floating* scratch,
        floating** sW1, floating** sb1, floating** sW2, floating** sb2,
        const floating* X, const floating* Y, const floating* w, floating denom,
        int loss, floating loss_scale, double penalty, int optimizer, floating lr,
        floating momentum, bint nesterov, floating beta1, floating beta2,
        floating epsilon, floating lr_t, floating l2, bint first_t,
        double* sq, const floating** X_rows=NULL, double* bound=NULL,
        const double* data_bound=NULL, void** backup=NULL,
        int* overflow=NULL, long long* careful=NULL) noexcept nogil:
    """One batch's step with a momentum or Adam optimizer (or plain SGD with state);
    returns the batch's loss, its data term plus ``penalty`` (the L2 term).

    Forward and output delta; if an output or the loss is not finite, nothing is
    updated (NaN is returned for outputs that are not finite). Then per
    layer, top down: dA[l-1] = dZ[l] W[l] from the old W[l], the step of W[l] (through
    :func:`grad_update` for small layers, else dW[l] and :func:`update`), the step of
    b[l], and dZ[l-1]. The same updates as taking every gradient first. For a small
    layer over a piecewise-linear activation, dZ[l-1] = (dZ[l] W[l]) (.) g'(Z[l-1])
    comes from one pass of _layer_forward.h's backward kernel (no dA in scratch).
    ``sq[0]`` gets sum ||W||^2 of the new weights. ``first_t``: W[0], dW[0] and their state are stored
    transposed. ``X_rows``: row p of the batch is X_rows[p] (``X`` is not read); only
    with ``first_t`` and a first layer small enough for the fused kernels.

    With ``bound`` (the guard's bounds, see Trainer.bound) and ``data_bound``, the step
    never leaves a parameter or a state entry that is not finite, as :func:`sgd_step`'s:
    :func:`update_is_safe` proves it (no copy), or the parameters are copied to
    ``backup[0]`` (allocated at the first need, freed by the trainer) before the step
    and put back if it overflowed, with ``overflow[0] = 1``.
    """
    cdef int l, kind
    cdef Py_ssize_t N
    cdef bint tr, small, fused_back
    cdef const floating* prev
    cdef double value, total = 0
    cdef bint safe = True
    cdef int rule = (RULE_ADAM if optimizer == OPT_ADAM
                     else RULE_NESTEROV if nesterov else RULE_MOMENTUM)
    cdef floating* gbuf = dW[0]  # the largest layer's dW: room for any gradient block
    for l in range(1, L):
        if <Py_ssize_t>sizes[l + 1] * sizes[l] > <Py_ssize_t>sizes[1] * sizes[0]:
            gbuf = dW[l]
    forward_pass(L, m, sizes, codes, X, W, b, Z, A, first_t, X_rows)
    if not outputs_finite(loss, L, m, sizes, A):
        return NAN
    value = output_delta(loss, codes[L - 1], m, sizes[L], A[L - 1], Y, w, denom,
                         Z[L - 1], db[L - 1])
    value = value * loss_scale / (2.0 * denom if loss == LOSS_MSE else denom) + penalty
    if not isfinite(value):
        return value
    if bound != NULL:
        safe = update_is_safe(L, m, sizes, codes, loss, denom, data_bound, A, Z, bound, 1,
                              lr, rule, momentum, beta1, beta2, epsilon, lr_t, l2)
        if not safe:
            careful[0] += 1
            if backup[0] == NULL:
                backup[0] = malloc(parameter_count(L, sizes) * sizeof(floating))
            if backup[0] == NULL:  # no room to step carefully: stop before the step
                overflow[0] = 1
                return value
            save_parameters(L, sizes, W, b, <floating*>backup[0], True)
    for l in range(L - 1, -1, -1):
        prev = X if l == 0 else A[l - 1]
        tr = first_t and l == 0
        N = <Py_ssize_t>sizes[l + 1] * sizes[l]
        small = <long long>m * N <= bpfast_fused_update_limit  # the tile kernels
        kind = pwl_kind(codes[l - 1]) if l > 0 else -1
        fused_back = l > 0 and tile_backward(m, sizes[l + 1], sizes[l], codes[l - 1])
        if fused_back:
            if floating is double:
                bpfast_layer_forward_d_back(m, sizes[l + 1], sizes[l], Z[l], W[l],
                                            sizes[l], A[l - 1], Z[l - 1], sizes[l],
                                            db[l - 1], kind)
            else:
                bpfast_layer_forward_f_back(m, sizes[l + 1], sizes[l], Z[l], W[l],
                                            sizes[l], A[l - 1], Z[l - 1], sizes[l],
                                            db[l - 1], kind)
        elif l > 0:
            gemm(False, False, m, sizes[l], sizes[l + 1], <floating>1, Z[l], sizes[l + 1],
                 W[l], sizes[l], <floating>0, scratch, sizes[l])
        if small:
            total += grad_update(tr, m, sizes[l + 1], sizes[l], Z[l], prev, W[l],
                                 sW1[l] if sW1 != NULL else NULL,
                                 sW2[l] if sW2 != NULL else NULL, optimizer, lr, momentum,
                                 nesterov, beta1, beta2, epsilon, lr_t, l2,
                                 X_rows if l == 0 else NULL)
        else:
            total += blocked_step(tr, m, sizes[l + 1], sizes[l], Z[l], prev, W[l],
                                  sW1[l] if sW1 != NULL else NULL,
                                  sW2[l] if sW2 != NULL else NULL, gbuf, optimizer, lr,
                                  momentum, nesterov, beta1, beta2, epsilon, lr_t, l2)
        update(optimizer, sizes[l + 1], b[l], db[l], sb1[l] if sb1 != NULL else NULL,
               sb2[l] if sb2 != NULL else NULL, lr, momentum, nesterov, beta1, beta2,
               epsilon, lr_t, 0)
        if l > 0 and not fused_back:
            hidden_delta(codes[l - 1], m, sizes[l], scratch, A[l - 1], Z[l - 1], db[l - 1])
    sq[0] = total
    if not safe and not guard_bounds(L, sizes, W, b, sW1, sb1, sW2, sb2, bound):
        save_parameters(L, sizes, W, b, <floating*>backup[0], False)
        guard_bounds(L, sizes, W, b, sW1, sb1, sW2, sb2, bound)
        overflow[0] = 1
    return value


cdef Py_ssize_t parameter_count(int L, const int* sizes) noexcept nogil:
    """Weights and biases of all layers."""
    cdef int l
    cdef Py_ssize_t count = 0
    for l in range(L):
        count += <Py_ssize_t>sizes[l + 1] * (sizes[l] + 1)
    return count


cdef void save_parameters(int L, const int* sizes, floating** W, floating** b,
                          floating* flat, bint save) noexcept nogil:
    """Every W[l] then b[l] into one flat block (``save``), or back from it."""
    cdef int l
    cdef size_t nw, nb
    for l in range(L):
        nw = <size_t>sizes[l + 1] * sizes[l]
        nb = <size_t>sizes[l + 1]
        if save:
            memcpy(flat, W[l], nw * sizeof(floating))
            memcpy(flat + nw, b[l], nb * sizeof(floating))
        else:
            memcpy(W[l], flat, nw * sizeof(floating))
            memcpy(b[l], flat + nw, nb * sizeof(floating))
        flat += nw + nb


cdef double sum_of_squares(int L, const int* sizes, floating** W) noexcept nogil:
    """sum over layers of ||W[l]||^2, in double."""
    cdef int l
    cdef double sq = 0
    for l in range(L):
        sq += sumsq(W[l], <Py_ssize_t>sizes[l + 1] * sizes[l])
    return sq


cdef double sgd_step(
        int L, int m, const int* sizes, const int* codes,
        floating** W, floating** b, floating** Z, floating** A, floating** db,
        floating* scratch, const floating* X, const floating* Y, const floating* w,
        floating denom, int loss, floating loss_scale, floating alpha,
        floating lr, bint first_t=False, double* bound=NULL,
        const double* data_bound=NULL, floating** Wbak=NULL, floating** bbak=NULL,
        int* overflow=NULL, long long* careful=NULL) noexcept nogil:
    """One plain SGD step with the update fused into back-propagation; returns the loss.

    Per layer, top down: dA[l-1] = dZ[l] W[l] is taken from the old W[l], then
    W[l] = (1 - lr alpha/denom) W[l] - lr dZ[l]^T A[l-1] in one GEMM (beta = the L2
    shrink), and b[l] -= lr db[l]. Equal to W -= lr (dW + alpha/denom W) to rounding,
    without writing or re-reading dW. Nothing is updated when an output or the loss is
    not finite (NaN is returned for the outputs).
    ``first_t``: W[0] is stored transposed.

    With ``bound`` (per layer, a bound on the magnitude of every weight and bias) and
    ``data_bound`` (see :func:`update_is_safe`), the step never leaves a parameter that is
    not finite: :func:`update_is_safe` proves that it cannot overflow (the usual case: no
    copy at all), or else the parameters are copied to ``Wbak``/``bbak`` before the step
    and put back if it overflowed, with ``overflow[0] = 1``.
    """
    cdef int l
    cdef Py_ssize_t k
    cdef const floating* prev
    cdef double value
    cdef bint safe
    cdef floating shrink = 1 - lr * (alpha / denom)
    forward_pass(L, m, sizes, codes, X, W, b, Z, A, first_t)
    if not outputs_finite(loss, L, m, sizes, A):
        return NAN
    value = output_delta(loss, codes[L - 1], m, sizes[L], A[L - 1], Y, w, denom,
                         Z[L - 1], db[L - 1])
    value = value * loss_scale / (2.0 * denom if loss == LOSS_MSE else denom)
    if alpha != 0:
        value += 0.5 * alpha * sum_of_squares(L, sizes, W) / denom
    if not isfinite(value):
        return value
    # the guard decides before the step (its bounds need only the forward pass's values)
    safe = bound == NULL or update_is_safe(L, m, sizes, codes, loss, denom, data_bound, A,
                                           Z, bound, shrink, lr)
    if not safe:
        careful[0] += 1
        copy_parameters(L, sizes, W, b, Wbak, bbak)
    for l in range(L - 1, -1, -1):
        prev = X if l == 0 else A[l - 1]
        if l > 0:
            gemm(False, False, m, sizes[l], sizes[l + 1], <floating>1, Z[l], sizes[l + 1],
                 W[l], sizes[l], <floating>0, scratch, sizes[l])
            hidden_delta(codes[l - 1], m, sizes[l], scratch, A[l - 1], Z[l - 1], db[l - 1])
        weight_gradient(first_t and l == 0, m, sizes[l + 1], sizes[l], -lr, Z[l], prev,
                        shrink, W[l])
        for k in range(sizes[l + 1]):
            b[l][k] = b[l][k] - lr * db[l][k]
    if not safe and not parameter_bounds(L, sizes, W, b, bound):
        copy_parameters(L, sizes, Wbak, bbak, W, b)
        parameter_bounds(L, sizes, W, b, bound)
        overflow[0] = 1
    return value


cdef enum:
    # update_is_safe's step rules: plain SGD fused into the product (l2 as a shrink),
    # and optimizer_step's momentum, Nesterov and Adam
    RULE_PLAIN = 0
    RULE_MOMENTUM = 1
    RULE_NESTEROV = 2
    RULE_ADAM = 3
    # the guard's room per layer in Trainer.bound: parameter bounds, two of scratch, the
    # optimizer state's bounds (momentum's V or Adam's M; Adam's S), and two of scratch
    # for the state's new bounds
    GUARD_SLOTS = 7


cdef bint update_is_safe(int L, int m, const int* sizes, const int* codes, int loss,
                         double denom, const double* data_bound, floating** A,
                         floating** Z, double* bound, double shrink,
                         double lr, int rule=RULE_PLAIN, double mu=0, double beta1=0,
                         double beta2=0, double epsilon=1, double lr_t=0,
                         double l2=0) noexcept nogil:
    """Whether the step from the deltas in Z provably leaves every parameter (and every
    entry of the optimizer state) finite; sets bound[l] to a bound on the parameters'
    magnitudes after the step, and when safe the state's bounds too (``bound`` has room
    for GUARD_SLOTS L doubles, see Trainer.bound).

    With B_l = bound[l] (weights and biases of layer l before the step), a_l a bound on
    |A| of the layer below and d_l one on |dZ[l]|: |dW_ij| = |sum_r dZ_ri A_rj| <= m d_l a_l
    and |db_i| <= m d_l, so every new weight or bias is at most
    max(|shrink|, 1) B_l + lr m d_l max(a_l, 1). a_0 is the inputs' bound, a_l is 1 for
    sigmoid, tanh and softmax layers and the largest |A| of any other layer (one pass:
    bounds chained through n B per layer grow too fast to be of use). At the output,
    dZ = w (A - Y) g' / denom with w and |Y| at most their data bounds, |g'| <= 1/4 for
    sigmoid, 2 for a softmax under squared error (its Jacobian), 1.1 for silu, else 1
    (an exp output takes its measured largest |dZ| instead: e^z has no such bound), and
    downwards |dZ[l-1]| <= n^(l+1) d_l B_l max|g'|. ``data_bound``: max |X|, max |Y|,
    max sample weight (1 without weights). When that cannot prove the step safe, the
    output delta's measured maximum replaces its bound before the verdict. So networks
    of sigmoid, tanh or softmax layers need no pass at all, and others one pass over the
    activations per batch (against the products' n' passes). A NaN activation (a
    product that overflowed) is not bounded by 1: it makes every layer above NaN, up to
    the outputs (which the steps check) or a measured layer, except through a relu,
    which maps it to 0; so a sigmoid or tanh layer below a relu is measured too.

    With G_l = m d_l max(a_l, 1) (every gradient entry's bound) and g = G_l + l2 B_l,
    the other rules, V_l and S_l the state's bounds (bound[3 L + l], bound[4 L + l]):
    momentum |V'| <= mu V_l + lr g, |P'| <= B_l + |V'| (Nesterov: B_l + mu |V'| + lr g);
    Adam |M'| <= b1 V_l + (1 - b1) g, S' <= b2 S_l + (1 - b2) g^2 and
    |P'| <= B_l + lr_t min(|M'| / eps, 2 K). The first as sqrt(S') + eps >= eps; the
    second for a state built from zero by these betas (as the trainer's is), when
    b1^2 < b2: by Cauchy-Schwarz over the gradients' history,
    |M| <= (1 - b1) sqrt(sum_j (b1^2 / b2)^j) sqrt(S / (1 - b2)), so |M| / sqrt(S) <= K =
    (1 - b1) / sqrt((1 - b2) (1 - b1^2 / b2)) (7.3 for the usual 0.9 and 0.999; the 2
    is room for rounding). |M'| / eps alone would let the weight bounds, chained
    through the layers' deltas, outgrow float32 within a few batches.

    The step is safe when every new bound is below a quarter of the dtype's largest
    finite value (room for the rounding of the products); anything not finite makes it
    unsafe. Loose bounds only ever send a batch to the careful path (copy, step, check),
    never let an overflow through.
    """
    cdef int l, code, measured
    cdef double a = 1, gmax, grown, g, first, second, step, ratio
    cdef double limit = (FLT_MAX if floating is float else DBL_MAX) / 4
    cdef double keep = shrink if shrink > 1 or shrink < -1 else 1
    cdef double* act = bound + L  # a_l, then d_l: the caller's room of 3 L doubles
    cdef double* dlt = bound + 2 * L
    cdef bint safe = True
    if keep < 0:
        keep = -keep
    # first with the output delta's bound; when that cannot prove it, again with its
    # measured maximum
    for measured in range(2):
        act[0] = data_bound[0]
        for l in range(1, L + 1):
            code = codes[l - 1]
            # a bounded layer's NaN (from a product that overflowed) reaches the
            # outputs, or a measured layer, unless a relu above maps it to 0
            if ((code == SIGMOID or code == TANH or code == SOFTMAX)
                    and not (l < L and codes[l] == RELU)):
                a = 1
            elif measured and l < L:
                a = act[l]  # taken in the first round
            else:  # unbounded activations: their largest magnitude, one pass
                a = max_abs(A[l - 1], <Py_ssize_t>m * sizes[l])
            if l < L:
                act[l] = a
        code = codes[L - 1]
        if code == EXP or measured:
            dlt[L - 1] = max_abs(Z[L - 1], <Py_ssize_t>m * sizes[L])
        else:  # a is now the bound on the outputs
            gmax = 1
            if loss == LOSS_MSE:
                gmax = (0.25 if code == SIGMOID else 2 if code == SOFTMAX
                        else 1.1 if code == SILU else 1)
            dlt[L - 1] = data_bound[2] * (a + data_bound[1]) * gmax / denom
        for l in range(L - 1, 0, -1):
            code = codes[l - 1]
            gmax = (0.25 if code == SIGMOID else 1.1 if code == SILU
                    else act[l] if code == EXP else 1)
            dlt[l - 1] = sizes[l + 1] * dlt[l] * bound[l] * gmax
        safe = True
        for l in range(L):  # the new bounds, over the d_l (each used once, just here)
            a = act[l] if act[l] > 1 else 1
            if rule == RULE_PLAIN:
                grown = keep * bound[l] + lr * m * dlt[l] * a
            else:
                g = m * dlt[l] * a + l2 * bound[l]
                if rule == RULE_ADAM:
                    first = beta1 * bound[3 * L + l] + (1 - beta1) * g
                    second = beta2 * bound[4 * L + l] + (1 - beta2) * (g * g)
                    step = first / epsilon
                    if beta1 * beta1 < beta2:  # |M| / sqrt(S) <= K, see the docstring
                        ratio = 2 * (1 - beta1) / sqrt((1 - beta2)
                                                       * (1 - beta1 * beta1 / beta2))
                        step = ratio if ratio < step else step
                    grown = bound[l] + lr_t * step
                    if not second < limit:
                        safe = False
                else:
                    first = mu * bound[3 * L + l] + lr * g
                    second = 0
                    grown = bound[l] + (mu * first + lr * g if rule == RULE_NESTEROV
                                        else first)
                if not first < limit:
                    safe = False
                bound[5 * L + l] = first
                bound[6 * L + l] = second
            if not grown < limit:  # also when it is NaN
                safe = False
            dlt[l] = grown
        if safe:
            break
    for l in range(L):
        bound[l] = dlt[l]
        if safe and rule != RULE_PLAIN:
            bound[3 * L + l] = bound[5 * L + l]
            bound[4 * L + l] = bound[6 * L + l]
    return safe


cdef bint all_finite(int L, const int* sizes, floating** W, floating** b) noexcept nogil:
    """Whether every weight and bias is finite."""
    cdef int l
    for l in range(L):
        if not (max_abs(W[l], <Py_ssize_t>sizes[l + 1] * sizes[l]) < HUGE_VAL
                and max_abs(b[l], sizes[l + 1]) < HUGE_VAL):
            return False
    return True


cdef bint parameter_bounds(int L, const int* sizes, floating** W, floating** b,
                           double* bound) noexcept nogil:
    """bound[l] = max |W[l]|, |b[l]| (parameters, or an optimizer state's entries for
    them), 0 for every layer when W is NULL (no such state); returns whether every
    value is finite."""
    cdef int l
    cdef double top, tb
    cdef bint finite = True
    for l in range(L):
        if W == NULL:
            bound[l] = 0
            continue
        top = max_abs(W[l], <Py_ssize_t>sizes[l + 1] * sizes[l])
        tb = max_abs(b[l], sizes[l + 1])
        bound[l] = top if top > tb else tb
        if not bound[l] < HUGE_VAL:
            finite = False
    return finite


cdef bint guard_bounds(int L, const int* sizes, floating** W, floating** b,
                       floating** sW1, floating** sb1, floating** sW2, floating** sb2,
                       double* bound) noexcept nogil:
    """The guard's measured bounds: parameters, and each optimizer state present (see
    Trainer.bound); returns whether all of them are finite."""
    cdef bint finite = parameter_bounds(L, sizes, W, b, bound)
    finite = parameter_bounds(L, sizes, sW1, sb1, bound + 3 * L) and finite
    finite = parameter_bounds(L, sizes, sW2, sb2, bound + 4 * L) and finite
    return finite


cdef void copy_parameters(int L, const int* sizes, floating** W, floating** b,
                          floating** W_to, floating** b_to) noexcept nogil:
    """W_to[l], b_to[l] = W[l], b[l] for every layer."""
    cdef int l
    for l in range(L):
        memcpy(W_to[l], W[l], <size_t>sizes[l + 1] * sizes[l] * sizeof(floating))
        memcpy(b_to[l], b[l], <size_t>sizes[l + 1] * sizeof(floating))


# In the main thread, the epoch loop reads the clock after about bpfast_signal_work
# multiply-adds (batch rows x parameters: a millisecond or two of training), and every
# bpfast_signal_interval seconds takes the GIL to run Python's signal handlers (Ctrl-C).
# Not more often: taking the GIL waits while another thread runs Python code (up to the
# switch interval, 5 ms). Other threads never: Python runs handlers in the main thread.
cdef long long bpfast_signal_work = 1LL << 22
cdef double bpfast_signal_interval = 0.05


def set_signal_check(long long work, double interval):
    """Read the clock after ``work`` multiply-adds of training and check for signals
    every ``interval`` seconds (1 and 0: after every batch); returns the old pair. For
    tests."""
    global bpfast_signal_work, bpfast_signal_interval
    if work < 1:
        raise ValueError(f"work: expected a positive number, got {work}")
    if not interval >= 0:
        raise ValueError(f"interval: expected a non-negative number, got {interval}")
    old = (bpfast_signal_work, bpfast_signal_interval)
    bpfast_signal_work, bpfast_signal_interval = work, interval
    return old


cdef inline double monotonic_seconds() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef extern from "Python.h":
    # declared without an exception value: the pending exception stays set for
    # Trainer.epoch to raise once the epoch has stopped
    int check_signals "PyErr_CheckSignals" () noexcept


cdef bint signal_raised() noexcept with gil:
    """Run Python's handlers of the signals received (SIGINT's raises
    KeyboardInterrupt); whether one raised, its exception then left set."""
    return check_signals() < 0


cdef int raise_pending() except -1:
    """Raise the exception that :func:`signal_raised` left set."""
    return -1


cdef struct EpochResult:
    double loss_sum      # sum over batches of batch loss x batch rows
    long long steps      # optimizer steps taken (t, for adam)
    long long bad_batch  # index of the first batch whose loss (or guarded update) was
                         # not finite, or -1
    int overflow         # 1 when bad_batch's loss was finite but its update overflowed
    long long careful    # batches the guard could not prove safe (copy, step, check)
    int interrupted      # 1 when a signal handler raised: stopped at a batch boundary


cdef EpochResult train_epoch(
        int L, const int* sizes, const int* codes, int capacity,
        floating** W, floating** b, floating** Z, floating** A,
        floating** dW, floating** db, floating* scratch,
        floating** sW1, floating** sb1, floating** sW2, floating** sb2,
        floating* Xb, floating* Yb, floating* wb,
        Py_ssize_t n, const floating* X, const floating* Y, const floating* w,
        const Py_ssize_t* order, int batch_size, int loss, floating loss_scale,
        int optimizer, floating lr, floating momentum, bint nesterov,
        floating beta1, floating beta2, floating epsilon, floating alpha,
        long long t, bint first_t, double* bound=NULL, const double* data_bound=NULL,
        floating** Wbak=NULL, floating** bbak=NULL,
        const floating** rows=NULL, void** backup=NULL,
        bint skip_weightless=False, bint interruptible=False) noexcept nogil:
    """One epoch: for each batch, forward, the loss's output delta, backward, L2, update.

    ``interruptible`` (the main thread): pending signals are checked between batches
    (see bpfast_signal_interval); when a handler raises, the epoch stops there with
    ``interrupted``, the parameters those of the last batch done. ``skip_weightless``: a
    batch whose sample weights sum to zero is passed over (no step: its loss, 0/0, is
    undefined, and it carries no weight).

    ``first_t``: W[0], dW[0] and their optimizer state are stored transposed. ``bound``
    and the rest: the overflow guard (see :func:`sgd_step` and :func:`optimizer_step`;
    ``backup`` is the latter's). ``rows`` (room for
    ``capacity`` pointers): when the first layer is stored transposed and small enough
    for the fused kernels of momentum and Adam steps, both of its products read the
    batch's rows of X where they sit, through these pointers, instead of a gathered copy.
    """
    cdef int overflow = 0
    cdef EpochResult res
    cdef Py_ssize_t start, i, k, src
    cdef int l, mb, n0 = sizes[0], nL = sizes[L]
    cdef const floating* xp
    cdef const floating* yp
    cdef const floating* wp
    cdef floating denom, lr_t = 0
    cdef double wsum, batch_loss, penalty, sq = -1  # sq: sum ||W||^2 once known
    cdef long long work = 0, batch_work = parameter_count(L, sizes) * batch_size
    cdef double checked = monotonic_seconds() if interruptible else 0, now
    cdef bint direct = (rows != NULL and bpfast_direct_rows and first_t and sW1 != NULL
                        and <long long>batch_size * n0 * sizes[1]
                        <= bpfast_fused_update_limit)
    res.loss_sum = 0
    res.bad_batch = -1
    res.overflow = 0
    res.careful = 0
    res.interrupted = 0
    start = 0
    while start < n:
        if interruptible and work >= bpfast_signal_work:
            work = 0
            now = monotonic_seconds()
            if now - checked >= bpfast_signal_interval:
                checked = now
                if signal_raised():
                    res.interrupted = 1
                    break
        work += batch_work
        mb = <int>(n - start if n - start < batch_size else batch_size)
        if order != NULL:
            for i in range(mb):
                src = order[start + i]
                if direct:
                    rows[i] = X + src * n0
                else:
                    memcpy(Xb + i * n0, X + src * n0, n0 * sizeof(floating))
                memcpy(Yb + i * nL, Y + src * nL, nL * sizeof(floating))
                if w != NULL:
                    wb[i] = w[src]
            xp, yp = Xb, Yb
            wp = wb if w != NULL else NULL
        else:
            xp = X + start * n0
            yp = Y + start * nL
            wp = w + start if w != NULL else NULL
            if direct:
                for i in range(mb):
                    rows[i] = xp + i * n0
        if wp != NULL:
            wsum = 0
            for i in range(mb):
                wsum += wp[i]
            denom = <floating>wsum
            if skip_weightless and wsum == 0:
                start += mb
                continue
        else:
            denom = <floating>mb
        if optimizer == OPT_SGD and sW1 == NULL:
            # plain SGD: the update is fused into the backward pass (no dW at all)
            batch_loss = sgd_step(L, mb, sizes, codes, W, b, Z, A, db, scratch,
                                  xp, yp, wp, denom, loss, loss_scale, alpha, lr, first_t,
                                  bound, data_bound, Wbak, bbak, &overflow, &res.careful)
            if not isfinite(batch_loss) or overflow:
                res.bad_batch = start // batch_size
                res.overflow = overflow
                break
            t += 1
            res.loss_sum += batch_loss * mb
            start += mb
            continue
        # the L2 term of the loss from the previous step's sum ||W||^2; its gradient
        # goes into the update
        if alpha != 0 and sq < 0:
            sq = sum_of_squares(L, sizes, W)
        if optimizer == OPT_ADAM:
            lr_t = lr * <floating>(sqrt(1 - pow(beta2, t + 1)) / (1 - pow(beta1, t + 1)))
        penalty = 0.5 * alpha * sq / denom if alpha != 0 else 0
        batch_loss = optimizer_step(L, mb, sizes, codes, W, b, Z, A, dW, db, scratch,
                                    sW1, sb1, sW2, sb2, xp, yp, wp, denom, loss,
                                    loss_scale, penalty,
                                    optimizer, lr, momentum, nesterov, beta1, beta2,
                                    epsilon, lr_t, alpha / denom, first_t, &sq,
                                    rows if direct else NULL, bound, data_bound, backup,
                                    &overflow, &res.careful)
        if not isfinite(batch_loss) or overflow:
            res.bad_batch = start // batch_size
            res.overflow = overflow
            break
        t += 1
        res.loss_sum += batch_loss * mb
        start += mb
    res.steps = t
    return res


cdef void transpose(int rows, int cols, const floating* src,
                    floating* dst) noexcept nogil:
    """dst (cols x rows) = src^T (src rows x cols), in 32 x 32 tiles."""
    cdef int i0, j0, i, j, i1, j1
    for i0 in range(0, rows, 32):
        i1 = i0 + 32 if i0 + 32 < rows else rows
        for j0 in range(0, cols, 32):
            j1 = j0 + 32 if j0 + 32 < cols else cols
            for i in range(i0, i1):
                for j in range(j0, j1):
                    dst[<Py_ssize_t>j * rows + i] = src[<Py_ssize_t>i * cols + j]


cdef inline void transpose_pair(bint into, int rows, int cols, floating* a,
                                floating* a_t) noexcept nogil:
    """a_t = a^T (``into``) or a = a_t^T; a is rows x cols."""
    if into:
        transpose(rows, cols, a, a_t)
    else:
        transpose(cols, rows, a_t, a)


cdef void transpose_layer0(bint into, int n1, int n0, floating** W, floating** W_t,
                           floating** s1, floating** s1_t, floating** s2,
                           floating** s2_t) noexcept nogil:
    """transpose_pair for entry 0 of the weights and of each optimizer state present."""
    transpose_pair(into, n1, n0, W[0], W_t[0])
    if s1_t != NULL:
        transpose_pair(into, n1, n0, s1[0], s1_t[0])
    if s2_t != NULL:
        transpose_pair(into, n1, n0, s2[0], s2_t[0])


# The trainer's buffers start on a cache line. The panel kernel's threads split products
# by columns, and NumPy aligns to 16 bytes only: a line holding the end of one thread's
# columns and the start of the other's then bounced between their caches on every row.
cdef Py_ssize_t CACHE_LINE = 64


def aligned_empty(shape, dtype, bint zero=False):
    """A new C-contiguous array of ``shape`` and ``dtype`` whose data starts on a
    CACHE_LINE boundary; zeros with ``zero``, else uninitialised."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + CACHE_LINE, np.uint8)
    start = (-raw.ctypes.data) % CACHE_LINE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


cdef void* transposed_copy(list keep, list sizes, dtype) except NULL:
    """Data pointer of a new n^0 x n^1 array, kept alive in ``keep``."""
    copy = aligned_empty((sizes[0], sizes[1]), dtype)
    keep.append(copy)
    return cnp.PyArray_DATA(copy)


cdef void** with_first(void** pointers, int count, void* first) noexcept:
    """malloc'd copy of a pointer array with entry 0 replaced (NULL stays NULL)."""
    if pointers == NULL:
        return NULL
    cdef void** out = <void**>malloc(count * sizeof(void*))
    if out != NULL:
        memcpy(out, pointers, count * sizeof(void*))
        out[0] = first
    return out


cdef void** pointer_list(list arrays, str name, int typenum, object shapes,
                         bint writable) except NULL:
    """malloc'd array of data pointers to checked arrays of the given shapes."""
    cdef Py_ssize_t k, count = len(arrays)
    cdef void** out = <void**>malloc((count if count > 0 else 1) * sizeof(void*))
    if out == NULL:
        raise MemoryError()
    try:
        for k in range(count):
            shape = shapes[k]
            out[k] = checked_data(arrays[k], f"{name}[{k}]", typenum, shape[0],
                                  shape[1] if len(shape) == 2 else -1, writable)
    except BaseException:
        free(out)
        raise
    return out


cdef class Trainer(Layers):
    """Buffers and optimizer state for training one network with one batch size.

    Parameters
    ----------
    weights, biases : lists of writable C-contiguous arrays
        The network's own parameters, updated in place.
    codes : sequence of int
        Activation codes, one per layer (softmax only last).
    n_inputs, batch_size : int
    loss : int
        0 the seed's squared error, 1 cross-entropy (softmax output),
        2 binary cross-entropy (sigmoid output), 3 Poisson (exp output).
    optimizer : int
        0 sgd (with ``momentum`` state when ``momentum_state``), 1 adam.

    Attributes
    ----------
    state : list of ndarray
        Optimizer state (velocities, or adam's first then second moments), one array per
        parameter, weights first; empty for plain sgd.

    Notes
    -----
    When the first layer's product is small (``first_transposed``: batch_size * n^0 * n^1
    at most 2^20 multiply-adds, see :func:`set_first_transpose_limit`), during
    :meth:`epoch` its weights (and their gradient and optimizer state) live in private
    transposed copies, n^0 x n^1, copied in at the start and back at the end: the forward
    product X W^T then runs as a non-transposed GEMM, which OpenBLAS's small-matrix
    kernels take faster than the transposed form. Mid-sized first layers
    whose forward product _panel_gemm.h takes (it reads B by rows) are transposed too.
    The first layer's dA is never needed, so its transposed layout costs nothing but the
    copies.
    """
    cdef readonly int loss, optimizer, batch_size
    cdef readonly list state
    cdef object own
    cdef readonly list buffers
    cdef void* scratch
    cdef void* Xb
    cdef void* Yb
    cdef void* wb
    cdef void** sW1
    cdef void** sb1
    cdef void** sW2
    cdef void** sb2
    # the epoch's pointer arrays: the same as W, dW, sW1, sW2 but for entry 0, which is
    # the transposed copy below
    cdef void** tW
    cdef void** tdW
    cdef void** tsW1
    cdef void** tsW2
    # the overflow guard: per-layer magnitude bounds (GUARD_SLOTS per layer, see
    # update_is_safe); plain SGD's bias backups (its weights' backups are the dW
    # buffers, which plain SGD never uses); momentum's and Adam's backup of every
    # parameter, allocated at the first batch that needs it (usually never)
    cdef double* bound
    cdef void** bbak
    cdef void* backup
    # batch_size row pointers: the batch's rows of X where they sit (see train_epoch)
    cdef void** rows
    cdef readonly bint overflowed
    # batches the overflow guard could not prove safe (copied, stepped, checked): a
    # diagnostic, 0 in ordinary fits
    cdef readonly long long careful_steps
    cdef readonly bint first_transposed
    # whether the epoch runs in a panel scope (see panel_network)
    cdef readonly bint panel
    # bytes of the trainer's own buffers (activations, gradients, optimizer state,
    # copies), the parameters not counted
    cdef readonly Py_ssize_t nbytes

    def __cinit__(self):
        self.sW1 = self.sb1 = self.sW2 = self.sb2 = NULL
        self.tW = self.tdW = self.tsW1 = self.tsW2 = NULL
        self.bound = NULL
        self.bbak = NULL
        self.backup = NULL
        self.rows = NULL

    def __init__(self, list weights, list biases, codes, int n_inputs, int batch_size,
                 int loss, int optimizer, bint momentum_state):
        if loss not in (LOSS_MSE, LOSS_CE, LOSS_BCE, LOSS_POISSON):
            raise ValueError(f"loss: unknown loss code {loss}")
        if optimizer not in (OPT_SGD, OPT_ADAM):
            raise ValueError(f"optimizer: unknown optimizer code {optimizer}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        dtype = np.asarray(weights[0]).dtype
        sizes = [n_inputs] + [np.shape(w)[0] for w in weights]
        Z = [aligned_empty((batch_size, k), dtype) for k in sizes[1:]]
        A = [aligned_empty((batch_size, k), dtype) for k in sizes[1:]]
        dW = [aligned_empty(np.shape(w), dtype) for w in weights]
        db = [aligned_empty(np.shape(v), dtype) for v in biases]
        Layers.__init__(self, weights, biases, codes, n_inputs, batch_size, Z, A, dW, db)
        self.ready = False  # until the trainer's own buffers below are in place
        cdef Py_ssize_t l
        for l in range(self.L):
            if not weights[l].flags.writeable or not biases[l].flags.writeable:
                raise ValueError(f"weights[{l}] and biases[{l}]: training needs writable arrays")
        self.loss = loss
        self.optimizer = optimizer
        self.batch_size = batch_size
        widest = max(sizes[1:self.L], default=1)
        scratch = aligned_empty(batch_size * widest, dtype)
        Xb = aligned_empty((batch_size, sizes[0]), dtype)
        Yb = aligned_empty((batch_size, sizes[self.L]), dtype)
        wb = aligned_empty(batch_size, dtype)
        self.own = (scratch, Xb, Yb, wb)
        self.scratch = cnp.PyArray_DATA(scratch)
        self.Xb = cnp.PyArray_DATA(Xb)
        self.Yb = cnp.PyArray_DATA(Yb)
        self.wb = cnp.PyArray_DATA(wb)
        wshapes = [np.shape(w) for w in weights]
        bshapes = [np.shape(v) for v in biases]
        self.state = []
        if optimizer == OPT_ADAM or momentum_state:
            first = [aligned_empty(s, dtype, True) for s in wshapes + bshapes]
            self.state += first
            self.sW1 = pointer_list(first[:self.L], "state", self.typenum, wshapes, True)
            self.sb1 = pointer_list(first[self.L:], "state", self.typenum, bshapes, True)
        if optimizer == OPT_ADAM:
            second = [aligned_empty(s, dtype, True) for s in wshapes + bshapes]
            self.state += second
            self.sW2 = pointer_list(second[:self.L], "state", self.typenum, wshapes, True)
            self.sb2 = pointer_list(second[self.L:], "state", self.typenum, bshapes, True)
        # transposed first-layer copies, for small first layers and those whose forward
        # product the panel kernel takes (see the class notes); plain sgd (fused update)
        # never writes dW in epoch
        self.first_transposed = bpfast_first_transpose_limit > 0 and (
            <long long>batch_size * sizes[0] * sizes[1] <= bpfast_first_transpose_limit
            # or the panel kernel takes the forward product, which it reads untransposed
            or bpfast_panel_fits(False, batch_size, sizes[1], sizes[0], dtype.itemsize))
        self.panel = panel_network(self.L, self.sizes, batch_size, self.first_transposed,
                                   dtype.itemsize)
        cdef void* w0 = self.W[0]
        cdef void* dw0 = self.dW[0]
        cdef void* s10 = self.sW1[0] if self.sW1 != NULL else NULL
        cdef void* s20 = self.sW2[0] if self.sW2 != NULL else NULL
        if self.first_transposed:  # private n^0 x n^1 copies of what entry 0 holds
            copies = []
            w0 = transposed_copy(copies, sizes, dtype)
            if optimizer == OPT_ADAM or momentum_state:
                dw0 = transposed_copy(copies, sizes, dtype)
            if s10 != NULL:
                s10 = transposed_copy(copies, sizes, dtype)
            if s20 != NULL:
                s20 = transposed_copy(copies, sizes, dtype)
            self.own += (copies,)
        self.tW = with_first(self.W, self.L, w0)
        self.tdW = with_first(self.dW, self.L, dw0)
        self.tsW1 = with_first(self.sW1, self.L, s10)
        self.tsW2 = with_first(self.sW2, self.L, s20)
        if (self.tW == NULL or self.tdW == NULL or (self.sW1 != NULL and self.tsW1 == NULL)
                or (self.sW2 != NULL and self.tsW2 == NULL)):
            raise MemoryError()
        bias_backup = [aligned_empty(s, dtype) for s in bshapes]
        self.own += (bias_backup,)
        self.bbak = pointer_list(bias_backup, "bias backup", self.typenum, bshapes, True)
        # the guard's bounds, GUARD_SLOTS per layer: see update_is_safe
        self.bound = <double*>malloc(GUARD_SLOTS * self.L * sizeof(double))
        self.rows = <void**>malloc(batch_size * sizeof(void*))
        if self.bound == NULL or self.rows == NULL:
            raise MemoryError()
        # every array the trainer allocated (each starts on a cache line)
        self.buffers = (Z + A + dW + db + self.state + [scratch, Xb, Yb, wb] + bias_backup
                        + (copies if self.first_transposed else []))
        self.nbytes = sum(a.nbytes for a in self.buffers)
        self.ready = True

    def reusable(self, list weights, list biases, codes, int n_inputs, int batch_size,
                 int loss, int optimizer, bint momentum_state):
        """Whether this trainer, after :meth:`reset`, is what ``Trainer(weights, biases,
        codes, n_inputs, batch_size, loss, optimizer, momentum_state)`` would build: the
        very same parameter arrays, still writable, C-contiguous, of their shapes and with
        their data where it was (``resize(..., refcheck=False)`` can move it), and the
        same activations, batch size, loss and optimizer."""
        cdef Py_ssize_t l
        if (not self.ready or loss != self.loss or optimizer != self.optimizer
                or batch_size != self.batch_size or n_inputs != self.sizes[0]
                or (self.sW1 != NULL) != (optimizer == OPT_ADAM or momentum_state)
                or len(weights) != self.L or len(biases) != self.L
                or len(codes) != self.L):
            return False
        kept_w, kept_b = self.keep[0], self.keep[1]
        for l in range(self.L):
            w, v = weights[l], biases[l]
            if (w is not kept_w[l] or v is not kept_b[l] or codes[l] != self.codes[l]
                    or not cnp.PyArray_ISWRITEABLE(w) or not cnp.PyArray_ISWRITEABLE(v)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(w)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(v)
                    or w.shape != (self.sizes[l + 1], self.sizes[l])
                    or v.shape != (self.sizes[l + 1],)
                    or cnp.PyArray_DATA(w) != self.W[l] or cnp.PyArray_DATA(v) != self.b[l]):
                return False
        return True

    def reset(self):
        """Back to the state of a new trainer: optimizer state zero, no overflow seen."""
        self.check_ready()
        for s in self.state:
            s.fill(0)
        self.overflowed = False
        self.careful_steps = 0

    def __dealloc__(self):
        free(self.sW1)
        free(self.sb1)
        free(self.sW2)
        free(self.sb2)
        free(self.tW)
        free(self.tdW)
        free(self.tsW1)
        free(self.tsW2)
        free(self.bbak)
        free(self.bound)
        free(self.rows)
        free(self.backup)

    def epoch(self, X, Y, sample_weight, order, double lr, double momentum=0,
              bint nesterov=False, double beta1=0.9, double beta2=0.999,
              double epsilon=1e-8, double alpha=0, double loss_scale=1, long long t=0,
              bint guard=False, data_bound=None, bint skip_weightless=False):
        """Run one epoch over (X, Y) in batches; returns (loss_sum, t, bad_batch).

        ``order`` (an intp array holding a permutation of the rows, or None for data
        order) decides the batches. ``loss_sum`` adds each batch's loss times its rows.
        ``bad_batch`` is -1, or the index of the batch whose loss was not finite: training
        stopped there before updating.

        ``guard``: also stop at a batch whose update would leave a parameter (or an
        optimizer state entry) that is not finite, with the parameters from before that
        batch, and set :attr:`overflowed`. The parameters are then finite after every
        epoch without any copy of them, except in the rare batches whose magnitudes come
        near overflow (then one copy, allocated at the first need, for momentum and Adam).
        ``data_bound``: the guard's (max |X|, max |Y|, largest sample weight or 1) when
        the caller knows them (a fit takes them once for all its epochs, with
        :func:`data_bounds`); None to have them computed here.

        ``skip_weightless``: pass over a batch whose sample weights are all zero (no
        step, ``t`` unchanged) instead of stopping there with its loss 0/0.

        In the main thread, signals are handled between batches, about every 50 ms:
        when a handler raises (Ctrl-C: KeyboardInterrupt), the epoch stops at that
        batch boundary, the parameters and optimizer state those of the last batch
        done, and the exception is raised from here.
        """
        self.check_ready()
        self.overflowed = False
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1:
            raise ValueError("X: expected a non-empty 2-D array")
        cdef void* x = checked_data(X, "X", self.typenum, n, self.sizes[0], False)
        cdef void* y = checked_data(Y, "Y", self.typenum, n, self.sizes[self.L], False)
        cdef void* w = NULL
        cdef void* o = NULL
        if sample_weight is not None:
            w = checked_data(sample_weight, "sample_weight", self.typenum, n, -1, False)
        if order is not None:
            o = checked_data(order, "order", cnp.NPY_INTP, n, -1, False)
            check_permutation(<Py_ssize_t*>o, n)
        cdef EpochResult res
        cdef int L = self.L, cap = self.m, bs = self.batch_size, loss = self.loss
        cdef int opt = self.optimizer
        cdef double* bound = self.bound if guard else NULL
        cdef double bounds[3]
        cdef bint interruptible = threading.current_thread() is threading.main_thread()
        if guard:
            bounds[0], bounds[1], bounds[2] = (data_bounds(X, Y, sample_weight)
                                               if data_bound is None else data_bound)
        if self.typenum == cnp.NPY_DOUBLE:
            with nogil:
                self.transpose_first(True)
                bpfast_set_panel_scope(self.panel)
                if guard:
                    guard_bounds[double](L, self.sizes, <double**>self.tW,
                                         <double**>self.b, <double**>self.tsW1,
                                         <double**>self.sb1, <double**>self.tsW2,
                                         <double**>self.sb2, bound)
                res = train_epoch[double](
                    L, self.sizes, self.codes, cap, <double**>self.tW, <double**>self.b,
                    <double**>self.Z, <double**>self.A, <double**>self.tdW,
                    <double**>self.db, <double*>self.scratch, <double**>self.tsW1,
                    <double**>self.sb1, <double**>self.tsW2, <double**>self.sb2,
                    <double*>self.Xb, <double*>self.Yb, <double*>self.wb, n, <double*>x,
                    <double*>y, <double*>w, <Py_ssize_t*>o, bs, loss, loss_scale, opt, lr,
                    momentum, nesterov, beta1, beta2, epsilon, alpha, t,
                    self.first_transposed, bound,
                    bounds, <double**>self.tdW, <double**>self.bbak,
                    <const double**>self.rows, &self.backup, skip_weightless,
                    interruptible)
                bpfast_set_panel_scope(0)
                self.transpose_first(False)
        else:
            with nogil:
                self.transpose_first(True)
                bpfast_set_panel_scope(self.panel)
                if guard:
                    guard_bounds[float](L, self.sizes, <float**>self.tW,
                                        <float**>self.b, <float**>self.tsW1,
                                        <float**>self.sb1, <float**>self.tsW2,
                                        <float**>self.sb2, bound)
                res = train_epoch[float](
                    L, self.sizes, self.codes, cap, <float**>self.tW, <float**>self.b,
                    <float**>self.Z, <float**>self.A, <float**>self.tdW, <float**>self.db,
                    <float*>self.scratch, <float**>self.tsW1, <float**>self.sb1,
                    <float**>self.tsW2, <float**>self.sb2, <float*>self.Xb,
                    <float*>self.Yb, <float*>self.wb, n, <float*>x, <float*>y,
                    <float*>w, <Py_ssize_t*>o, bs, loss, <float>loss_scale, opt,
                    <float>lr, <float>momentum, nesterov, <float>beta1, <float>beta2,
                    <float>epsilon, <float>alpha, t, self.first_transposed, bound, bounds,
                    <float**>self.tdW, <float**>self.bbak, <const float**>self.rows,
                    &self.backup, skip_weightless, interruptible)
                bpfast_set_panel_scope(0)
                self.transpose_first(False)
        if res.interrupted:
            raise_pending()
        self.overflowed = res.overflow != 0
        self.careful_steps += res.careful
        return res.loss_sum, res.steps, res.bad_batch

    cdef void transpose_first(self, bint into) noexcept nogil:
        """Copy the first layer's weights and optimizer state into the transposed copies
        (``into``) or back to the caller's arrays."""
        if not self.first_transposed:
            return
        if self.typenum == cnp.NPY_DOUBLE:
            transpose_layer0[double](into, self.sizes[1], self.sizes[0],
                                     <double**>self.W, <double**>self.tW,
                                     <double**>self.sW1, <double**>self.tsW1,
                                     <double**>self.sW2, <double**>self.tsW2)
        else:
            transpose_layer0[float](into, self.sizes[1], self.sizes[0],
                                    <float**>self.W, <float**>self.tW,
                                    <float**>self.sW1, <float**>self.tsW1,
                                    <float**>self.sW2, <float**>self.tsW2)

    @property
    def gradients(self):
        """(dW, db): the buffers the last batch's gradient was written to (not copies)."""
        weights, biases, Z, A, dW, db = self.keep
        return dW, db

    def gradient(self, X, Y, sample_weight=None, double alpha=0, double loss_scale=1):
        """Full-batch loss and gradient on all rows of (X, Y), without any update.

        X must have at most ``batch_size`` rows. Returns the loss; the gradient is left in
        :attr:`gradients`. The loss is the data term times ``loss_scale`` plus
        ``alpha / (2 s) sum ||W||^2``, s the number of rows or the sum of the weights.
        """
        self.check_ready()
        cdef Py_ssize_t n = X.shape[0] if cnp.PyArray_Check(X) else -1
        if n < 1 or n > self.m:
            raise ValueError(f"X: expected 1 to {self.m} rows (the trainer's batch size)")
        cdef void* x = checked_data(X, "X", self.typenum, n, self.sizes[0], False)
        cdef void* y = checked_data(Y, "Y", self.typenum, n, self.sizes[self.L], False)
        cdef void* w = NULL
        cdef double s = n, value
        cdef int L = self.L, m = <int>n, loss = self.loss
        if sample_weight is not None:
            w = checked_data(sample_weight, "sample_weight", self.typenum, n, -1, False)
            s = float(np.sum(sample_weight, dtype=np.float64))
            if not s > 0:
                raise ValueError("sample_weight: expected a positive sum")
        if self.typenum == cnp.NPY_DOUBLE:
            with nogil:
                value = batch_gradient[double](
                    L, m, self.sizes, self.codes, <double**>self.W, <double**>self.b,
                    <double**>self.Z, <double**>self.A, <double**>self.dW, <double**>self.db,
                    <double*>self.scratch, <double*>x, <double*>y, <double*>w, s, loss,
                    loss_scale, alpha)
        else:
            with nogil:
                value = batch_gradient[float](
                    L, m, self.sizes, self.codes, <float**>self.W, <float**>self.b,
                    <float**>self.Z, <float**>self.A, <float**>self.dW, <float**>self.db,
                    <float*>self.scratch, <float*>x, <float*>y, <float*>w, <float>s, loss,
                    <float>loss_scale, <float>alpha)
        return value


def backprop_block_rows(sizes, Py_ssize_t rows, int itemsize):
    """Rows per block for a full-batch backprop (or forward pass) of ``rows`` rows taken
    in blocks (:meth:`Layers.backprop_blocks`, :meth:`Layers.forward_blocks`), or 0 to
    take them all at once.

    A full-batch backprop of many rows gives OpenBLAS products of tall operands, packed
    again for every product, well below its GEMM rate. In blocks, every product is one the panel kernel takes (as in a training
    epoch at that batch size) and each block's activations stay in cache. The largest
    multiple of 8 from 32 to 256 for which every product of a block either fits the panel
    kernel or stays on one thread in OpenBLAS (:func:`panel_network`, first layer
    transposed), with the first layer's product large enough for the panel's threads,
    and at least two blocks; 0 where there is none, or no panel kernel."""
    cdef int L = len(sizes) - 1, B, l
    cdef int* cs
    if L < 1 or not panel_available():
        return 0
    cs = <int*>malloc((L + 1) * sizeof(int))
    if cs == NULL:
        raise MemoryError()
    try:
        for l in range(L + 1):
            cs[l] = int(sizes[l])
        for B in range(256, 31, -8):
            if 2 * <Py_ssize_t>B > rows:
                continue
            if <long long>B * cs[0] * cs[1] <= BPFAST_PANEL_MIN:
                break
            if (bpfast_panel_fits(False, B, cs[1], cs[0], itemsize)
                    and bpfast_panel_fits(False, cs[0], cs[1], B, itemsize)
                    and panel_network(L, cs, B, True, itemsize)):
                return B
        return 0
    finally:
        free(cs)


cdef extern from "kernels.h" nogil:
    double bpfast_max_abs_parallel(const void* x, Py_ssize_t n, int size)


def magnitude_bound(X):
    """max |X| over a float32 or float64 array (C-contiguous), or inf if any entry is not
    finite (see :func:`data_bounds`); large arrays on the BLAS's thread count."""
    if not cnp.PyArray_Check(X) or not cnp.PyArray_IS_C_CONTIGUOUS(X):
        raise TypeError("X: expected a C-contiguous NumPy array")
    cdef Py_ssize_t n = cnp.PyArray_SIZE(X)
    cdef int typenum = cnp.PyArray_TYPE(X)
    cdef void* data = cnp.PyArray_DATA(X)
    cdef int size = 8 if typenum == cnp.NPY_DOUBLE else 4
    cdef double top
    if typenum != cnp.NPY_DOUBLE and typenum != cnp.NPY_FLOAT:
        raise TypeError(f"X: expected float32 or float64, got {X.dtype}")
    with nogil:
        top = bpfast_max_abs_parallel(data, n, size)
    return top


# Trainers keep the first layer transposed while batch_size * n^0 * n^1 is at most this
# many multiply-adds: about where OpenBLAS stops taking products with its small-matrix
# kernels. Above it both layouts go the same packed way (measured on 784-128-10 at batch
# 64 and 784-1024-1024-10 at 256: within a few percent either way, run to run), and the
# transposed copies would only cost memory (6.1 MiB for the latter in float64).
cdef long long bpfast_first_transpose_limit = 1LL << 20


def data_bounds(X, Y, sample_weight=None):
    """The overflow guard's (max |X|, max |Y|, largest sample weight or 1): the
    ``data_bound`` of :meth:`Trainer.epoch`."""
    return (magnitude_bound(X), magnitude_bound(Y),
            1.0 if sample_weight is None else magnitude_bound(sample_weight))


def set_first_transpose_limit(long long limit):
    """Trainers built afterwards keep the first layer transposed during an epoch when
    batch_size * n^0 * n^1 <= limit; returns the old limit. For benchmarks and tests."""
    global bpfast_first_transpose_limit
    old = bpfast_first_transpose_limit
    bpfast_first_transpose_limit = limit
    return old


def fused_update_available():
    """Whether this processor runs _grad_update.h's fused kernel (it needs AVX-512)."""
    return bool(bpfast_tiles_available())


cdef bint bpfast_direct_rows = True


def set_direct_rows(bint enabled):
    """Whether momentum and Adam epochs may read a small transposed first layer's batch
    rows where they sit (see train_epoch) instead of gathering them; returns the old
    setting. For benchmarks and tests."""
    global bpfast_direct_rows
    old = bpfast_direct_rows
    bpfast_direct_rows = enabled
    return old


def set_avx512_vector_math(bint enabled):
    """Whether exp, tanh, sigmoid and silu over arrays may take _vmath_avx512.h's
    versions (on processors with AVX-512F) rather than the portable loops; returns the
    old setting. For benchmarks and tests."""
    global bpfast_vmath_avx512_allowed
    old = bool(bpfast_vmath_avx512_allowed)
    bpfast_vmath_avx512_allowed = enabled
    return old


def avx512_vector_math():
    """Whether exp, tanh, sigmoid and silu over arrays run _vmath_avx512.h's versions."""
    return bool(bpfast_vmath_avx512())


cdef extern from "kernels.h" nogil:
    int bpfast_vector_products_allowed "bpfast_vector_products_allowed"
    int vector_products_on "bpfast_vector_products"()


def set_vector_products(bint enabled):
    """Whether one-row products (batches of one row) may take _vector_products.h's
    AVX-512 loops rather than BLAS; returns the old setting. For benchmarks and tests."""
    global bpfast_vector_products_allowed
    old = bool(bpfast_vector_products_allowed)
    bpfast_vector_products_allowed = enabled
    return old


def vector_products_available():
    """Whether one-row products run _vector_products.h's loops on this processor."""
    return bool(vector_products_on())


cdef extern from "kernels.h" nogil:
    long long BPFAST_PANEL_MIN
    void bpfast_set_panel_scope(int on)
    int bpfast_panel_fits(int trans_b, int m, int n, int k, int size)
    int bpfast_panel_allowed "bpfast_panel_allowed"
    int bpfast_panel_thread_override "bpfast_panel_thread_override"
    void* bpfast_blas_threads_ptr "bpfast_blas_threads_ptr"
    int panel_available "bpfast_panel_available"()
    int panel_threads "bpfast_panel_threads"()
    long long bpfast_panel_calls


def set_panel_gemm(bint enabled, int threads=0):
    """Whether mid-sized products may take _panel_gemm.h's threaded kernel rather than
    BLAS, and on how many threads (0: the BLAS's own count); returns the old
    (enabled, threads). For benchmarks and tests."""
    global bpfast_panel_allowed, bpfast_panel_thread_override
    if threads < 0:
        raise ValueError(f"threads: expected 0 or a positive count, got {threads}")
    old = (bool(bpfast_panel_allowed), bpfast_panel_thread_override)
    bpfast_panel_allowed = enabled
    bpfast_panel_thread_override = threads
    return old


def panel_gemm_available():
    """Whether this processor runs _panel_gemm.h's kernel."""
    return bool(panel_available())


def panel_gemm_calls():
    """Products _panel_gemm.h's kernel has taken so far in this process (for tests)."""
    return bpfast_panel_calls


def panel_gemm_threads():
    """Threads a mid-sized product would take now."""
    return panel_threads()


def set_blas_threads_function(size_t address):
    """The BLAS's ``int get_num_threads(void)``, which the panel kernel follows (0: none,
    and mid-sized products then stay with the BLAS). Private: set by _blas_backend."""
    global bpfast_blas_threads_ptr
    bpfast_blas_threads_ptr = <void*>address


def set_fused_update_limit(long long limit):
    """Layers with batch * n^l * n^(l-1) <= limit take the fused gradient-and-update
    kernel in momentum and Adam steps (0: never); returns the old limit. For benchmarks
    and tests. Ignored (always 0) where the processor lacks AVX-512."""
    global bpfast_fused_update_limit
    old = bpfast_fused_update_limit
    bpfast_fused_update_limit = limit if bpfast_tiles_available() else 0
    return old


def set_small_gemm_limit(long long limit):
    """Products with m * n * k <= limit use plain loops instead of BLAS; returns the old limit.

    For benchmarks and tests (0 forces BLAS everywhere, a huge value the loops).
    """
    global bpfast_small_gemm_limit
    old = bpfast_small_gemm_limit
    bpfast_small_gemm_limit = limit
    return old


def set_blas(size_t dgemm_address, size_t sgemm_address, bint ilp64):
    """Call this dgemm/sgemm (Fortran interface) for large products; 0, 0 for none (then
    every product takes the plain loops).

    Private: bpfast._blas_backend finds the addresses and checks them with gemm_probe.
    """
    global bpfast_dgemm_ptr, bpfast_sgemm_ptr, bpfast_blas_ilp64
    if (dgemm_address == 0) != (sgemm_address == 0):
        raise ValueError("set_blas: give both addresses or neither")
    bpfast_dgemm_ptr = <void*>dgemm_address
    bpfast_sgemm_ptr = <void*>sgemm_address
    bpfast_blas_ilp64 = ilp64


def gemm_call(bint trans_a, bint trans_b, double alpha, A, B, double beta, C):
    """C = alpha op(A) op(B) + beta C in place, through the kernels' gemm with all its
    routes (one-row vector products, plain loops, BLAS); for tests. A, B, C: C-contiguous
    arrays of one float dtype, op(X) = X.T when trans_x."""
    arrays = (A, B, C)
    if not all(isinstance(x, np.ndarray) and x.ndim == 2 and x.flags.c_contiguous
               for x in arrays) or not (A.dtype == B.dtype == C.dtype) or \
            A.dtype not in (np.float32, np.float64) or not C.flags.writeable:
        raise ValueError("gemm_call: expected C-contiguous 2-D float arrays of one dtype")
    cdef int m = C.shape[0], n = C.shape[1]
    cdef int k = A.shape[0] if trans_a else A.shape[1]
    if (A.shape[1] if trans_a else A.shape[0]) != m or \
            (B.shape[0] if trans_b else B.shape[1]) != n or \
            (B.shape[1] if trans_b else B.shape[0]) != k:
        raise ValueError("gemm_call: shapes do not match")
    cdef int lda = A.shape[1], ldb = B.shape[1], ldc = n
    cdef void* a = cnp.PyArray_DATA(A)
    cdef void* b = cnp.PyArray_DATA(B)
    cdef void* c = cnp.PyArray_DATA(C)
    bpfast_set_panel_scope(1)  # every route, the panel kernel's included
    if A.dtype == np.float64:
        gemm[double](trans_a, trans_b, m, n, k, alpha, <double*>a, lda, <double*>b, ldb,
                     beta, <double*>c, ldc)
    else:
        gemm[float](trans_a, trans_b, m, n, k, <float>alpha, <float*>a, lda, <float*>b,
                    ldb, <float>beta, <float*>c, ldc)
    bpfast_set_panel_scope(0)


def gemm_probe(A, B):
    """A @ B.T through the kernels' BLAS route (never the plain-loop path); for checks."""
    A = np.ascontiguousarray(A)
    B = np.ascontiguousarray(B, dtype=A.dtype)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1] or A.dtype not in (np.float32, np.float64):
        raise ValueError("gemm_probe: expected 2-D float arrays with equal column counts")
    C = np.empty((A.shape[0], B.shape[0]), dtype=A.dtype)
    cdef int m = A.shape[0], n = B.shape[0], k = A.shape[1]
    cdef long long saved = bpfast_small_gemm_limit
    cdef void* a = cnp.PyArray_DATA(A)
    cdef void* b = cnp.PyArray_DATA(B)
    cdef void* c = cnp.PyArray_DATA(C)
    global bpfast_small_gemm_limit
    bpfast_small_gemm_limit = -1
    try:
        if A.dtype == np.float64:
            gemm[double](False, True, m, n, k, 1.0, <double*>a, k, <double*>b, k, 0.0,
                         <double*>c, n)
        else:
            gemm[float](False, True, m, n, k, 1.0, <float*>a, k, <float*>b, k, 0.0,
                        <float*>c, n)
    finally:
        bpfast_small_gemm_limit = saved
    return C
