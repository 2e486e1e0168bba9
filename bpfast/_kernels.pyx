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

cdef extern from "_vmath.h" nogil:
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


cdef extern from "_pointwise.h" nogil:
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
cdef extern from "_pointwise512.h" nogil:
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


cdef extern from "_softmax.h" nogil:
    int BPFAST_SOFTMAX_MAX_N
    void bpfast_softmax_rows_d(Py_ssize_t m, Py_ssize_t n, const double* b, double* Z,
                               double* A)
    void bpfast_softmax_rows_f(Py_ssize_t m, Py_ssize_t n, const float* b, float* Z,
                               float* A)


cdef extern from "_reduce.h" nogil:
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


# ---------------------------------------------------------------------------
# The passes' arguments, grouped. The structs hold buffers as void*: a fused function
# takes one operand typed (the batch's X, or the arrays it works on), which picks its
# float or double version, and casts the structs' pointers to that type. Settings are
# doubles holding values of the network's dtype (Trainer.epoch rounds them to float for a
# float32 network), so the casts back are exact and the arithmetic is that dtype's.
# ---------------------------------------------------------------------------

cdef struct Net:
    # one network's sizes, activations and buffers (rows: the batch size or block)
    int L
    const int* sizes  # n^0 .. n^L
    const int* codes  # one activation code per layer
    bint first_t      # W[0], dW[0] and their optimizer state stored transposed
    void** W
    void** b
    void** Z          # pre-activations; the backward pass writes the deltas dZ over them
    void** A
    void** dW
    void** db
    void* scratch     # one hidden layer's dA: rows x the widest hidden layer
    void** sW1        # optimizer state: momentum's V or Adam's M, and Adam's S (or NULL)
    void** sb1
    void** sW2
    void** sb2


cdef struct Batch:
    int m
    double denom        # m, or the sum of the rows' weights
    const void* Y
    const void* w       # the rows' weights, or NULL
    const void** rows   # first layer stored transposed: row p of X is rows[p] (or NULL)


cdef struct Settings:
    # a training epoch's configuration
    int loss
    int optimizer
    bint nesterov
    double loss_scale
    double lr
    double momentum
    double beta1
    double beta2
    double epsilon
    double alpha


cdef enum:
    # what backward() does with each layer's gradient (StepPolicy.kind)
    KEEP_GRADIENT = 0   # dW = beta dW + dZ^T A_prev and db, for the caller
    PLAIN_SGD = 1       # into W and b at once: W = shrink W - lr dZ^T A_prev, no dW
    OPTIMIZER_STEP = 2  # a momentum or Adam step of each layer, from tiles or row blocks


cdef struct StepPolicy:
    int kind
    double beta           # KEEP_GRADIENT: dW = beta dW + dZ^T A_prev
    void** db_total       # KEEP_GRADIENT in row blocks: db summed over blocks (or NULL)
    const Settings* settings
    double l2             # alpha / denom: the L2 term's coefficient in the gradient
    double shrink         # PLAIN_SGD: 1 - lr l2
    double lr_t           # Adam's step size at this step
    void* gbuf            # room for any gradient block (the largest layer's dW)


cdef struct Guard:
    # the overflow guard (see update_is_safe); bound NULL when it is off
    double* bound             # GUARD_SLOTS per layer
    const double* data_bound  # max |X|, max |Y|, the largest row weight (or 1)
    void** Wbak               # plain SGD's copies of the parameters
    void** bbak
    void** backup             # momentum's and Adam's flat copy, allocated at first need
    int overflow              # 1 when a step overflowed and was undone
    long long careful         # batches the guard could not prove safe


cdef struct Epoch:
    # an epoch's data, besides X, and its order
    Py_ssize_t n
    const void* Y
    const void* w
    const Py_ssize_t* order   # a permutation of the rows, or NULL for data order
    int batch_size
    long long t               # steps taken before this epoch
    void* Xb                  # a gathered batch
    void* Yb
    void* wb
    const void** rows         # room for batch_size row pointers (or NULL)
    bint skip_weightless
    bint interruptible


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


cdef void forward_pass(const Net* net, int m, const floating* X,
                       const floating** X_rows) noexcept nogil:
    """Z[l] = A[l-1] W[l]^T + b[l], A[l] = g_l(Z[l]) for l = 0..L-1, with A[-1] = X.

    ``X_rows`` (with W[0] stored transposed, on processors with the tile kernels): row p
    of X is X_rows[p], and the first layer is _layer_forward.h's product with its bias
    and piecewise-linear activation fused in; ``X`` is not read. Then Z[0] is not written
    when only the backward kernel of an optimizer step would read it (it takes the signs
    from A[0]).
    """
    cdef int L = net.L, l, kind
    cdef const int* sizes = net.sizes
    cdef const int* codes = net.codes
    cdef floating** W = <floating**>net.W
    cdef floating** b = <floating**>net.b
    cdef floating** Z = <floating**>net.Z
    cdef floating** A = <floating**>net.A
    cdef bint store_z
    cdef const floating* prev = X
    for l in range(L):
        if l == 0 and X_rows != NULL:
            kind = pwl_kind(codes[0])
            # Z[0] is only read by an optimizer step's backward kernel, which takes the
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
            layer_product(net.first_t and l == 0, m, sizes[l + 1], sizes[l], prev, W[l],
                          Z[l])
            bias_activate(codes[l], m, sizes[l + 1], b[l], Z[l], A[l])
        prev = A[l]


cdef double backward(const Net* net, const floating* X, const Batch* batch,
                     const StepPolicy* policy) noexcept nogil:
    """Back-propagation from dZ[L-1] (in Z[L-1], db[L-1] its column sums) down, the one
    pass behind every gradient and step; per layer l, top down:

        dA[l-1] = dZ[l] W[l]                 (W[l] before any step of it)
        dZ[l-1] = dA[l-1] (.) g'(Z[l-1])     over Z[l-1]; db[l-1] its column sums
        dW[l]   = dZ[l]^T A[l-1]             (A[-1] = X), used as ``policy`` says

    KEEP_GRADIENT leaves dW[l] and db[l] for the caller; PLAIN_SGD and OPTIMIZER_STEP
    step W[l] and b[l] with them (see :func:`layer_step`). dA[l-1] goes through the
    scratch buffer, except in an optimizer step of a small layer over a piecewise-linear
    activation: then dZ[l-1] comes from one pass of _layer_forward.h's backward kernel.
    Returns sum ||W||^2 of the new weights for OPTIMIZER_STEP, else 0.
    """
    cdef int l, m = batch.m
    cdef const int* sizes = net.sizes
    cdef const int* codes = net.codes
    cdef floating** A = <floating**>net.A
    cdef const floating* prev
    cdef double total = 0
    for l in range(net.L - 1, -1, -1):
        if l > 0:
            if (policy.kind == OPTIMIZER_STEP
                    and tile_backward(m, sizes[l + 1], sizes[l], codes[l - 1])):
                tile_delta_below(net, m, l, A)
            else:
                delta_below(net, m, l, A)
        prev = X if l == 0 else A[l - 1]
        total += layer_step(net, batch, l, prev, policy)
    return total


cdef inline void delta_below(const Net* net, int m, int l, floating** A) noexcept nogil:
    """dA = dZ[l] W[l] into scratch, then dZ[l-1] and db[l-1] from it."""
    cdef const int* sizes = net.sizes
    cdef floating** Z = <floating**>net.Z
    cdef floating* scratch = <floating*>net.scratch
    gemm(False, False, m, sizes[l], sizes[l + 1], <floating>1, Z[l], sizes[l + 1],
         (<floating**>net.W)[l], sizes[l], <floating>0, scratch, sizes[l])
    hidden_delta(net.codes[l - 1], m, sizes[l], scratch, A[l - 1], Z[l - 1],
                 (<floating**>net.db)[l - 1])


cdef inline void tile_delta_below(const Net* net, int m, int l,
                                  floating** A) noexcept nogil:
    """:func:`delta_below` in one pass of _layer_forward.h's backward kernel, which takes
    g' of a piecewise-linear activation from the signs of A[l-1]."""
    cdef const int* sizes = net.sizes
    cdef floating** Z = <floating**>net.Z
    cdef floating** W = <floating**>net.W
    cdef floating** db = <floating**>net.db
    cdef int kind = pwl_kind(net.codes[l - 1])
    if floating is double:
        bpfast_layer_forward_d_back(m, sizes[l + 1], sizes[l], Z[l], W[l], sizes[l],
                                    A[l - 1], Z[l - 1], sizes[l], db[l - 1], kind)
    else:
        bpfast_layer_forward_f_back(m, sizes[l + 1], sizes[l], Z[l], W[l], sizes[l],
                                    A[l - 1], Z[l - 1], sizes[l], db[l - 1], kind)


cdef inline double layer_step(const Net* net, const Batch* batch, int l,
                              const floating* prev,
                              const StepPolicy* policy) noexcept nogil:
    """Layer l's gradient dW = dZ[l]^T prev, db[l] used as the policy says (see
    :func:`backward`); returns sum ||W[l]||^2 of the new weights of an optimizer step."""
    cdef int m = batch.m, n_out = net.sizes[l + 1], n_in = net.sizes[l]
    cdef bint tr = net.first_t and l == 0
    cdef floating* dZ = (<floating**>net.Z)[l]
    cdef floating* db = (<floating**>net.db)[l]
    cdef floating* b = (<floating**>net.b)[l]
    cdef floating* total
    cdef floating lr
    cdef Py_ssize_t k
    if policy.kind == KEEP_GRADIENT:
        weight_gradient(tr, m, n_out, n_in, <floating>1, dZ, prev,
                        <floating>policy.beta, (<floating**>net.dW)[l])
        if policy.db_total != NULL:
            total = (<floating**>policy.db_total)[l]
            for k in range(n_out):
                total[k] = db[k] if policy.beta == 0 else total[k] + db[k]
        return 0
    if policy.kind == PLAIN_SGD:  # the step fused into the product: dW is never stored
        lr = <floating>policy.settings.lr
        weight_gradient(tr, m, n_out, n_in, -lr, dZ, prev, <floating>policy.shrink,
                        (<floating**>net.W)[l])
        for k in range(n_out):
            b[k] = b[k] - lr * db[k]
        return 0
    return optimizer_layer_step(net, batch, l, prev, policy)


cdef double scaled_loss(const Net* net, const Batch* batch, int loss, double loss_scale,
                        const floating* Y) noexcept nogil:
    """The output delta dZ[L-1] (with db[L-1]) of the batch's targets ``Y`` and its loss:
    the data term times loss_scale over 2 denom (squared error) or denom."""
    cdef int L = net.L
    cdef floating denom = <floating>batch.denom
    cdef double value = output_delta(loss, net.codes[L - 1], batch.m, net.sizes[L],
                                     (<floating**>net.A)[L - 1], Y,
                                     <const floating*>batch.w, denom,
                                     (<floating**>net.Z)[L - 1],
                                     (<floating**>net.db)[L - 1])
    return value * loss_scale / (2.0 * denom if loss == LOSS_MSE else denom)


cdef inline StepPolicy gradient_policy(double beta, void** db_total) noexcept nogil:
    """The policy that keeps the gradient: dW = beta dW + dZ^T A_prev."""
    cdef StepPolicy policy
    memset(&policy, 0, sizeof(StepPolicy))
    policy.kind = KEEP_GRADIENT
    policy.beta = beta
    policy.db_total = db_total
    return policy


cdef double squared_error_gradient(const Net* net, const floating* X,
                                   const Batch* batch) noexcept nogil:
    """Forward and back-propagation of the seed's E = sum (A[L-1] - Y)^2 / (2m) (Y is
    ``batch.Y``); returns E, the gradient in dW, db."""
    cdef int L = net.L, m = batch.m
    cdef StepPolicy keep = gradient_policy(0, NULL)
    cdef double sq
    forward_pass(net, m, X, NULL)
    sq = output_delta(LOSS_MSE, net.codes[L - 1], m, net.sizes[L],
                      (<floating**>net.A)[L - 1], <const floating*>batch.Y,
                      <floating*>NULL, <floating>m, (<floating**>net.Z)[L - 1],
                      (<floating**>net.db)[L - 1])
    backward(net, X, batch, &keep)
    return sq / (2.0 * m)


cdef double blocked_backprop(const Net* net, const floating* X, const floating* Y,
                             Py_ssize_t n, int block, const floating* W0,
                             floating* dW0, void** db) noexcept nogil:
    """:func:`squared_error_gradient` over n rows taken ``block`` rows at a time;
    returns E.

    Each block runs forward and backward through the layers while its activations are
    in cache; every layer's dW accumulates the blocks' products (beta = 1 after the
    first block) and ``db`` the blocks' column sums (``net.db``, one block's), and the
    output delta divides by all n rows, so the result is the whole batch's gradient: the
    same sums, grouped by block. W[0] and dW[0] are the panel kernel's transposed
    (n^0 x n^1) buffers: W0 (n^1 x n^0) is copied into W[0] first, and dW[0] out to dW0
    last. Z, A and scratch have ``block`` rows.
    """
    cdef Py_ssize_t start
    cdef int L = net.L, mb, n0 = net.sizes[0], nL = net.sizes[L]
    cdef double sq = 0
    cdef const floating* x
    cdef StepPolicy keep
    cdef Batch rows_of
    memset(&rows_of, 0, sizeof(Batch))
    transpose(net.sizes[1], n0, W0, (<floating**>net.W)[0])
    start = 0
    while start < n:
        mb = <int>(n - start if n - start < block else block)
        x = X + start * n0
        rows_of.m = mb
        keep = gradient_policy(0 if start == 0 else 1, db)
        forward_pass(net, mb, x, NULL)
        sq += output_delta(LOSS_MSE, net.codes[L - 1], mb, nL,
                           (<floating**>net.A)[L - 1], Y + start * nL, <floating*>NULL,
                           <floating>n, (<floating**>net.Z)[L - 1],
                           (<floating**>net.db)[L - 1])
        backward(net, x, &rows_of, &keep)
        start += mb
    transpose(n0, net.sizes[1], (<floating**>net.dW)[0], dW0)
    return sq / (2.0 * n)


cdef void blocked_forward(const Net* net, const floating* X, Py_ssize_t n, int block,
                          const floating* W0, floating* out) noexcept nogil:
    """:func:`forward_pass` over n rows taken ``block`` rows at a time, the last layer
    written straight into ``out`` (n x n^L). W[0] is the panel kernel's transposed
    (n^0 x n^1) buffer, into which W0 (n^1 x n^0) is copied first; Z and A have
    ``block`` rows, and A's last entry (the caller's copy of the pointers) is moved
    along ``out`` block by block."""
    cdef Py_ssize_t start = 0
    cdef int L = net.L, mb, n0 = net.sizes[0], nL = net.sizes[L]
    transpose(net.sizes[1], n0, W0, (<floating**>net.W)[0])
    while start < n:
        mb = <int>(n - start if n - start < block else block)
        (<floating**>net.A)[L - 1] = out + start * nL
        forward_pass(net, mb, X + start * n0, NULL)
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

    cdef Net network(self, void* scratch) noexcept:
        """This object's buffers as the passes take them (no optimizer state)."""
        cdef Net net
        memset(&net, 0, sizeof(Net))
        net.L = self.L
        net.sizes = self.sizes
        net.codes = self.codes
        net.W = self.W
        net.b = self.b
        net.Z = self.Z
        net.A = self.A
        net.dW = self.dW
        net.db = self.db
        net.scratch = scratch
        return net

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
        cdef Net net = self.network(NULL)
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                forward_pass[double](&net, self.m, <double*>x, NULL)
            else:
                forward_pass[float](&net, self.m, <float*>x, NULL)

    def backprop(self, X, Y, scratch):
        """Forward then backward pass on (X, Y); fills dW and db and returns E."""
        self.check_ready()
        if self.dW == NULL:
            raise ValueError("these Layers were built without dW and db buffers")
        cdef void* x = checked_data(X, "X", self.typenum, self.m, self.sizes[0], False)
        cdef void* y = checked_data(Y, "Y", self.typenum, self.m, self.sizes[self.L], False)
        cdef Py_ssize_t need = <Py_ssize_t>self.m * self.max_hidden()
        cdef void* s = checked_data(scratch, "scratch", self.typenum, need, -1, True)
        cdef Net net = self.network(s)
        cdef Batch batch = whole_batch(self.m, y, NULL)
        cdef double E
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                E = squared_error_gradient[double](&net, <double*>x, &batch)
            else:
                E = squared_error_gradient[float](&net, <float*>x, &batch)
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
        cdef Net net = self.network(NULL)
        net.first_t = True
        net.W = with_first(self.W, L, wt)
        # a copy of the A pointers, whose last entry blocked_forward moves along out
        net.A = with_first(self.A, L, self.A[0])
        if net.W == NULL or net.A == NULL:
            free(net.W)
            free(net.A)
            raise MemoryError()
        with nogil:
            bpfast_set_panel_scope(1)
            if self.typenum == cnp.NPY_DOUBLE:
                blocked_forward[double](&net, <double*>x, n, self.m, <double*>self.W[0],
                                        <double*>o)
            else:
                blocked_forward[float](&net, <float*>x, n, self.m, <float*>self.W[0],
                                       <float*>o)
            bpfast_set_panel_scope(0)
        free(net.W)
        free(net.A)

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
        cdef char* dbb = <char*>checked_data(db_block, "db_block", self.typenum, total, -1,
                                             True)
        cdef int itemsize = 8 if self.typenum == cnp.NPY_DOUBLE else 4
        cdef Net net = self.network(s)
        cdef double E
        net.first_t = True
        net.W = with_first(self.W, L, wt)
        net.dW = with_first(self.dW, L, dwt)
        # each block's bias gradients, one layer after the other in db_block
        net.db = <void**>malloc(L * sizeof(void*))
        if net.W == NULL or net.dW == NULL or net.db == NULL:
            free(net.W)
            free(net.dW)
            free(net.db)
            raise MemoryError()
        for l in range(L):
            net.db[l] = dbb
            dbb += <Py_ssize_t>self.sizes[l + 1] * itemsize
        with nogil:
            bpfast_set_panel_scope(1)
            if self.typenum == cnp.NPY_DOUBLE:
                E = blocked_backprop[double](&net, <double*>x, <double*>y, n, self.m,
                                             <double*>self.W[0], <double*>self.dW[0],
                                             self.db)
            else:
                E = blocked_backprop[float](&net, <float*>x, <float*>y, n, self.m,
                                            <float*>self.W[0], <float*>self.dW[0],
                                            self.db)
            bpfast_set_panel_scope(0)
        free(net.W)
        free(net.dW)
        free(net.db)
        return E


cdef inline double in_dtype(double x, bint single) noexcept nogil:
    """x as the network's dtype holds it (rounded to float for a float32 network)."""
    return <float>x if single else x


cdef inline Batch whole_batch(int m, const void* Y, const void* w) noexcept nogil:
    """m rows of targets Y (weights w, or NULL) read in place, denom m."""
    cdef Batch batch
    batch.m = m
    batch.denom = m
    batch.Y = Y
    batch.w = w
    batch.rows = NULL
    return batch


# ---------------------------------------------------------------------------
# Training: whole epochs of mini-batch steps without the GIL
# ---------------------------------------------------------------------------

cdef extern from "_update.h" nogil:
    double bpfast_update_d(Py_ssize_t n, double* P, const double* G, double* V, double* S,
                           int adam, double lr, double mu, int nesterov, double beta1,
                           double beta2, double eps, double lr_t, double l2)
    double bpfast_update_f(Py_ssize_t n, float* P, const float* G, float* V, float* S,
                           int adam, float lr, float mu, int nesterov, float beta1,
                           float beta2, float eps, float lr_t, float l2)


cdef inline double update(const StepPolicy* policy, Py_ssize_t N, floating* p,
                          const floating* g, floating* s1, floating* s2,
                          floating l2) noexcept nogil:
    """One optimizer step on N parameters p with gradient g + l2 p (scikit-learn's rules);
    returns sum p^2 of the new values.

    sgd: p -= lr g, or with momentum v = mu v - lr g and p += v (nesterov: p += mu v - lr g).
    adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p += -lr_t m / (sqrt(v) + eps).
    """
    cdef const Settings* s = policy.settings
    if floating is double:
        return bpfast_update_d(N, p, g, s1, s2, s.optimizer == OPT_ADAM, s.lr, s.momentum,
                               s.nesterov, s.beta1, s.beta2, s.epsilon, policy.lr_t, l2)
    else:
        return bpfast_update_f(N, p, g, s1, s2, s.optimizer == OPT_ADAM, <float>s.lr,
                               <float>s.momentum, s.nesterov, <float>s.beta1,
                               <float>s.beta2, <float>s.epsilon, <float>policy.lr_t, l2)


cdef extern from "_tiles.h" nogil:
    int bpfast_tiles_available()


cdef extern from "_layer_forward.h" nogil:
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


cdef extern from "_grad_update.h" nogil:
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


cdef inline double grad_update(const Net* net, int m, int l, const floating* prev,
                               const floating** prev_rows,
                               const StepPolicy* policy) noexcept nogil:
    """W[l] stepped as :func:`update` with dW = dZ[l]^T prev (n_out x n_in; its transpose
    for W stored transposed) in _grad_update.h's register tiles, the gradient never
    stored; returns sum W^2 of the new values.

    ``prev_rows`` (W stored transposed only): row p of prev is prev_rows[p], and ``prev``
    is not read."""
    cdef const Settings* s = policy.settings
    cdef bint transposed = net.first_t and l == 0
    cdef int n_out = net.sizes[l + 1], n_in = net.sizes[l]
    cdef const floating* dZ = (<floating**>net.Z)[l]
    cdef floating* W = (<floating**>net.W)[l]
    cdef floating* s1 = (<floating*>net.sW1[l] if net.sW1 != NULL else NULL)
    cdef floating* s2 = (<floating*>net.sW2[l] if net.sW2 != NULL else NULL)
    cdef const floating* a = prev if transposed else dZ
    cdef const floating* bb = dZ if transposed else prev
    cdef int R = n_in if transposed else n_out
    cdef int C = n_out if transposed else n_in
    if floating is double:
        return bpfast_grad_update_d(m, R, C, a, R, prev_rows, bb, C, W, C, s1, s2,
                                    s.optimizer == OPT_ADAM, s.lr, s.momentum,
                                    s.nesterov, s.beta1, s.beta2, s.epsilon, policy.lr_t,
                                    policy.l2)
    else:
        return bpfast_grad_update_f(m, R, C, a, R, prev_rows, bb, C, W, C, s1, s2,
                                    s.optimizer == OPT_ADAM, <float>s.lr,
                                    <float>s.momentum, s.nesterov, <float>s.beta1,
                                    <float>s.beta2, <float>s.epsilon, <float>policy.lr_t,
                                    <float>policy.l2)


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


cdef double batch_gradient(const Net* net, const floating* X, const Batch* batch,
                           int loss, floating loss_scale, floating alpha) noexcept nogil:
    """One batch's loss (data term times loss_scale, plus alpha/(2 denom) sum ||W||^2)
    and its gradient in dW, db: forward, output delta, backward, L2. With alpha = 0 the
    L2 term is left out (the trainer adds it in its update pass)."""
    cdef double value
    cdef floating denom = <floating>batch.denom
    cdef StepPolicy keep = gradient_policy(0, NULL)
    forward_pass(net, batch.m, X, NULL)
    value = scaled_loss(net, batch, loss, loss_scale, <const floating*>batch.Y)
    backward(net, X, batch, &keep)
    if alpha != 0:
        value += 0.5 * alpha * l2_penalty(net.L, net.sizes, <floating**>net.W,
                                          <floating**>net.dW, alpha / denom) / denom
    return value


# A large layer's weight gradient is taken this many entries (rows of W) at a time, each
# block stepped at once: one block of gradient is ever resident, not every layer's dW
# (fitting 784-1024-1024-10 with momentum in float64: 2 MiB instead of 14.2).
cdef Py_ssize_t bpfast_gradient_block = 1 << 18


cdef double blocked_step(const Net* net, int m, int l, const floating* prev,
                         const StepPolicy* policy) noexcept nogil:
    """:func:`update` of W[l] (n_out x n_in, or n_in x n_out stored transposed) with the
    gradient dZ[l]^T prev, a block of whole rows at a time: G = the block's rows of the
    gradient (a BLAS product) in ``policy.gbuf``, then the step of those rows of W and of
    its state. The buffer has room for min(N, bpfast_gradient_block) entries
    (N = n_out n_in). Returns sum W^2 of the new values. The same values as the gradient
    in full and then the step."""
    cdef bint transposed = net.first_t and l == 0
    cdef int n_out = net.sizes[l + 1], n_in = net.sizes[l]
    cdef const floating* dZ = (<floating**>net.Z)[l]
    cdef floating* W = (<floating**>net.W)[l]
    cdef floating* s1 = (<floating*>net.sW1[l] if net.sW1 != NULL else NULL)
    cdef floating* s2 = (<floating*>net.sW2[l] if net.sW2 != NULL else NULL)
    cdef floating* G = <floating*>policy.gbuf
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
        total += update(policy, <Py_ssize_t>(r1 - r0) * C, W + at, G,
                        s1 + at if s1 != NULL else NULL, s2 + at if s2 != NULL else NULL,
                        <floating>policy.l2)
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


cdef double optimizer_layer_step(const Net* net, const Batch* batch, int l,
                                 const floating* prev,
                                 const StepPolicy* policy) noexcept nogil:
    """The momentum or Adam step of W[l] (through :func:`grad_update` for small layers,
    else :func:`blocked_step`) and of b[l]; returns sum W[l]^2 of the new weights."""
    cdef int m = batch.m, n_out = net.sizes[l + 1]
    cdef Py_ssize_t N = <Py_ssize_t>n_out * net.sizes[l]
    cdef double total
    if <long long>m * N <= bpfast_fused_update_limit:  # the tile kernels
        total = grad_update(net, m, l, prev,
                            <const floating**>batch.rows if l == 0 else NULL, policy)
    else:
        total = blocked_step(net, m, l, prev, policy)
    update(policy, n_out, (<floating**>net.b)[l], (<floating**>net.db)[l],
           <floating*>net.sb1[l] if net.sb1 != NULL else NULL,
           <floating*>net.sb2[l] if net.sb2 != NULL else NULL, <floating>0)
    return total


cdef double step_batch(const Net* net, const floating* X, const Batch* batch,
                       const StepPolicy* policy, Guard* guard, double penalty,
                       double* sq) noexcept nogil:
    """One batch's training step (plain SGD or an optimizer's, see :func:`backward`);
    returns the batch's loss, its data term plus ``penalty`` (the L2 term).

    Forward and output delta; if an output or the loss is not finite, nothing is
    updated (NaN is returned for outputs that are not finite). Then back-propagation
    with the step of each layer as its gradient is done: the same updates as taking
    every gradient first. An optimizer step's ``sq[0]`` gets sum ||W||^2 of the new
    weights.

    With the guard on (``guard.bound``), the step never leaves a parameter or a state
    entry that is not finite: :func:`update_is_safe` proves it (no copy), or the
    parameters are copied before the step and put back if it overflowed, with
    ``guard.overflow = 1``.
    """
    cdef int m = batch.m
    cdef double value, total
    cdef bint safe = True
    forward_pass(net, m, X, <const floating**>batch.rows)
    if not outputs_finite(policy.settings.loss, net.L, m, net.sizes, <floating**>net.A):
        return NAN
    value = scaled_loss(net, batch, policy.settings.loss, policy.settings.loss_scale,
                        <const floating*>batch.Y) + penalty
    if not isfinite(value):
        return value
    # the guard decides before the step (its bounds need only the forward pass's values)
    if guard.bound != NULL:
        safe = update_is_safe(net, m, batch.denom, policy, guard, <floating**>net.A)
        if not safe:
            guard.careful += 1
            if not keep_parameters(net, policy, guard, <floating**>net.W):
                guard.overflow = 1  # no room to step carefully: stop before the step
                return value
    total = backward(net, X, batch, policy)
    if policy.kind == OPTIMIZER_STEP:
        sq[0] = total
    if not safe and not guard_bounds(net, guard.bound, <floating**>net.W):
        restore_parameters(net, policy, guard, <floating**>net.W)
        guard_bounds(net, guard.bound, <floating**>net.W)
        guard.overflow = 1
    return value


cdef bint keep_parameters(const Net* net, const StepPolicy* policy, Guard* guard,
                          floating** W) noexcept nogil:
    """A copy of the parameters W, b before a step the guard could not clear: plain
    SGD's into its backup buffers, an optimizer's into one flat block allocated at the
    first need. False when there is no room for it."""
    if policy.kind == PLAIN_SGD:
        copy_parameters(net.L, net.sizes, W, <floating**>net.b, <floating**>guard.Wbak,
                        <floating**>guard.bbak)
        return True
    if guard.backup[0] == NULL:
        guard.backup[0] = malloc(parameter_count(net.L, net.sizes) * sizeof(floating))
    if guard.backup[0] == NULL:
        return False
    save_parameters(net.L, net.sizes, W, <floating**>net.b, <floating*>guard.backup[0],
                    True)
    return True


cdef void restore_parameters(const Net* net, const StepPolicy* policy, Guard* guard,
                             floating** W) noexcept nogil:
    """The parameters back from :func:`keep_parameters`' copy."""
    if policy.kind == PLAIN_SGD:
        copy_parameters(net.L, net.sizes, <floating**>guard.Wbak, <floating**>guard.bbak,
                        W, <floating**>net.b)
    else:
        save_parameters(net.L, net.sizes, W, <floating**>net.b,
                        <floating*>guard.backup[0], False)


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


cdef struct StepBound:
    # the coefficients of a step in update_is_safe's bounds (see there)
    int rule
    double keep     # plain SGD: max(|shrink|, 1)
    double lr
    double mu
    double beta1
    double beta2
    double epsilon
    double lr_t
    double l2


cdef StepBound step_bound(const StepPolicy* policy) noexcept nogil:
    """The step's rule and coefficients, as update_is_safe bounds them."""
    cdef const Settings* s = policy.settings
    cdef StepBound r
    memset(&r, 0, sizeof(StepBound))
    r.keep = 1
    r.epsilon = 1
    r.lr = s.lr
    if policy.kind == PLAIN_SGD:
        r.rule = RULE_PLAIN
        if policy.shrink > 1 or policy.shrink < -1:
            r.keep = policy.shrink if policy.shrink > 0 else -policy.shrink
        return r
    r.rule = (RULE_ADAM if s.optimizer == OPT_ADAM
              else RULE_NESTEROV if s.nesterov else RULE_MOMENTUM)
    r.mu = s.momentum
    r.beta1 = s.beta1
    r.beta2 = s.beta2
    r.epsilon = s.epsilon
    r.lr_t = policy.lr_t
    r.l2 = policy.l2
    return r


cdef bint update_is_safe(const Net* net, int m, double denom, const StepPolicy* policy,
                         const Guard* guard, floating** A) noexcept nogil:
    """Whether the step from the deltas in Z provably leaves every parameter (and every
    entry of the optimizer state) finite; sets bound[l] to a bound on the parameters'
    magnitudes after the step, and when safe the state's bounds too (``guard.bound`` has
    room for GUARD_SLOTS L doubles, see Trainer.bound).

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

    The other rules' bounds are :func:`stepped_bound`'s. The step is safe when every
    new bound is below a quarter of the dtype's largest finite value (room for the
    rounding of the products); anything not finite makes it unsafe. Loose bounds only
    ever send a batch to the careful path (copy, step, check), never let an overflow
    through.
    """
    cdef int L = net.L, measured, l
    cdef double a_out
    cdef double limit = (FLT_MAX if floating is float else DBL_MAX) / 4
    cdef double* bound = guard.bound
    cdef double* act = bound + L  # a_l, then d_l: the guard's scratch room of 2 L doubles
    cdef double* dlt = bound + 2 * L
    cdef StepBound rule = step_bound(policy)
    cdef bint safe = True
    # first with the output delta's bound; when that cannot prove it, again with its
    # measured maximum
    for measured in range(2):
        a_out = activation_bounds(net, m, A, guard.data_bound[0], measured, act)
        dlt[L - 1] = output_delta_bound(net, m, (<floating**>net.Z)[L - 1],
                                        policy.settings.loss, denom, guard.data_bound,
                                        a_out, measured)
        hidden_delta_bounds(L, net.sizes, net.codes, bound, act, dlt)
        safe = stepped_bounds(L, m, &rule, limit, bound)
        if safe:
            break
    for l in range(L):
        bound[l] = dlt[l]
        if safe and rule.rule != RULE_PLAIN:
            bound[3 * L + l] = bound[5 * L + l]
            bound[4 * L + l] = bound[6 * L + l]
    return safe


cdef double activation_bounds(const Net* net, int m, floating** A, double x_bound,
                              bint measured, double* act) noexcept nogil:
    """act[l] = a_l, the bound on |A[l-1]| (act[0] = the inputs' bound); returns the
    outputs' bound. Measured layers keep the first round's a_l in the second."""
    cdef int L = net.L, l, code
    cdef const int* codes = net.codes
    cdef double a = 1
    act[0] = x_bound
    for l in range(1, L + 1):
        code = codes[l - 1]
        # a bounded layer's NaN (from a product that overflowed) reaches the outputs,
        # or a measured layer, unless a relu above maps it to 0
        if ((code == SIGMOID or code == TANH or code == SOFTMAX)
                and not (l < L and codes[l] == RELU)):
            a = 1
        elif measured and l < L:
            a = act[l]  # taken in the first round
        else:  # unbounded activations: their largest magnitude, one pass
            a = max_abs(A[l - 1], <Py_ssize_t>m * net.sizes[l])
        if l < L:
            act[l] = a
    return a


cdef inline double slope_bound(int code) noexcept nogil:
    """A bound on |g'| for a sigmoid, softmax (its Jacobian under squared error) or silu
    layer, else 1."""
    return 0.25 if code == SIGMOID else 2 if code == SOFTMAX else 1.1 if code == SILU else 1


cdef double output_delta_bound(const Net* net, int m, const floating* dZ, int loss,
                               double denom, const double* data_bound, double a_out,
                               bint measured) noexcept nogil:
    """d_(L-1), the bound on |dZ| at the outputs: w (a_out + max |Y|) |g'| / denom, or
    dZ's largest magnitude (measured, or an exp output)."""
    cdef int L = net.L, code = net.codes[L - 1]
    cdef double gmax = slope_bound(code) if loss == LOSS_MSE else 1
    if code == EXP or measured:
        return max_abs(dZ, <Py_ssize_t>m * net.sizes[L])
    return data_bound[2] * (a_out + data_bound[1]) * gmax / denom


cdef void hidden_delta_bounds(int L, const int* sizes, const int* codes,
                              const double* bound, const double* act,
                              double* dlt) noexcept nogil:
    """d_(l-1) = n^(l+1) d_l B_l max|g'| downwards from the outputs' d_(L-1)."""
    cdef int l, code
    cdef double gmax
    for l in range(L - 1, 0, -1):
        code = codes[l - 1]
        gmax = act[l] if code == EXP else slope_bound(code)
        dlt[l - 1] = sizes[l + 1] * dlt[l] * bound[l] * gmax


cdef bint stepped_bounds(int L, int m, const StepBound* rule, double limit,
                         double* bound) noexcept nogil:
    """Each layer's new bounds from the d_l (each used once, just here, and replaced by
    the parameters' new bound) and the a_l; the state's go to the two scratch slots.
    Whether all of them are below ``limit``."""
    cdef int l
    cdef double a, grown
    cdef double* act = bound + L
    cdef double* dlt = bound + 2 * L
    cdef bint safe = True
    for l in range(L):
        a = act[l] if act[l] > 1 else 1
        grown = stepped_bound(rule, bound[l], m, dlt[l], a, bound[3 * L + l],
                              bound[4 * L + l], &bound[5 * L + l], &bound[6 * L + l])
        if not (grown < limit and bound[5 * L + l] < limit  # also when NaN
                and bound[6 * L + l] < limit):
            safe = False
        dlt[l] = grown
    return safe


cdef double stepped_bound(const StepBound* r, double B, int m, double d, double a,
                          double V, double S, double* first,
                          double* second) noexcept nogil:
    """The bound on a layer's parameters after the step, from B (before it), the
    gradient's bound G = m d a and the state's bounds V, S; first and second get the
    state's new bounds (0 for plain SGD, which has none).

    With g = G + l2 B: momentum |V'| <= mu V + lr g, |P'| <= B + |V'| (Nesterov:
    B + mu |V'| + lr g); Adam |M'| <= b1 V + (1 - b1) g, S' <= b2 S + (1 - b2) g^2 and
    |P'| <= B + lr_t min(|M'| / eps, 2 K). The first as sqrt(S') + eps >= eps; the
    second for a state built from zero by these betas (as the trainer's is), when
    b1^2 < b2: by Cauchy-Schwarz over the gradients' history,
    |M| <= (1 - b1) sqrt(sum_j (b1^2 / b2)^j) sqrt(S / (1 - b2)), so |M| / sqrt(S) <= K =
    (1 - b1) / sqrt((1 - b2) (1 - b1^2 / b2)) (7.3 for the usual 0.9 and 0.999; the 2
    is room for rounding). |M'| / eps alone would let the weight bounds, chained
    through the layers' deltas, outgrow float32 within a few batches.
    """
    cdef double g, step, ratio
    if r.rule == RULE_PLAIN:
        first[0] = 0
        second[0] = 0
        return r.keep * B + r.lr * m * d * a
    g = m * d * a + r.l2 * B
    if r.rule == RULE_ADAM:
        first[0] = r.beta1 * V + (1 - r.beta1) * g
        second[0] = r.beta2 * S + (1 - r.beta2) * (g * g)
        step = first[0] / r.epsilon
        if r.beta1 * r.beta1 < r.beta2:  # |M| / sqrt(S) <= K
            ratio = 2 * (1 - r.beta1) / sqrt((1 - r.beta2)
                                             * (1 - r.beta1 * r.beta1 / r.beta2))
            step = ratio if ratio < step else step
        return B + r.lr_t * step
    first[0] = r.mu * V + r.lr * g
    second[0] = 0
    return B + (r.mu * first[0] + r.lr * g if r.rule == RULE_NESTEROV else first[0])


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


cdef bint guard_bounds(const Net* net, double* bound, floating** W) noexcept nogil:
    """The guard's measured bounds: the parameters (``W``, the net's weights, and its
    biases), and each optimizer state present (see Trainer.bound); returns whether all
    of them are finite."""
    cdef int L = net.L
    cdef bint finite = parameter_bounds(L, net.sizes, W, <floating**>net.b, bound)
    finite = parameter_bounds(L, net.sizes, <floating**>net.sW1, <floating**>net.sb1,
                              bound + 3 * L) and finite
    finite = parameter_bounds(L, net.sizes, <floating**>net.sW2, <floating**>net.sb2,
                              bound + 4 * L) and finite
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


cdef inline StepPolicy epoch_policy(const Net* net, const Settings* s) noexcept nogil:
    """Plain SGD fused into the backward pass (no optimizer state), else an optimizer
    step; the gradient blocks go to the largest layer's dW, which has room for any."""
    cdef StepPolicy policy
    cdef int l
    memset(&policy, 0, sizeof(StepPolicy))
    policy.settings = s
    policy.kind = (PLAIN_SGD if s.optimizer == OPT_SGD and net.sW1 == NULL
                   else OPTIMIZER_STEP)
    policy.gbuf = net.dW[0]
    for l in range(1, net.L):
        if (<Py_ssize_t>net.sizes[l + 1] * net.sizes[l]
                > <Py_ssize_t>net.sizes[1] * net.sizes[0]):
            policy.gbuf = net.dW[l]
    return policy


cdef EpochResult train_epoch(const Net* net, const floating* X, const Epoch* data,
                             const Settings* s, Guard* guard) noexcept nogil:
    """One epoch: for each batch, forward, the loss's output delta, backward, L2, update.

    ``data.interruptible`` (the main thread): pending signals are checked between batches
    (see bpfast_signal_interval); when a handler raises, the epoch stops there with
    ``interrupted``, the parameters those of the last batch done.
    ``data.skip_weightless``: a batch whose sample weights sum to zero is passed over (no
    step: its loss, 0/0, is undefined, and it carries no weight).

    ``guard``: the overflow guard (see :func:`step_batch`). ``data.rows`` (room for
    ``batch_size`` pointers): when the first layer is stored transposed and small enough
    for the fused kernels of momentum and Adam steps, both of its products read the
    batch's rows of X where they sit, through these pointers, instead of a gathered copy.
    """
    cdef EpochResult res
    cdef Batch batch
    cdef StepPolicy policy = epoch_policy(net, s)
    cdef Py_ssize_t start, i, src, n = data.n
    cdef int mb, bs = data.batch_size, n0 = net.sizes[0], nL = net.sizes[net.L]
    cdef const floating* Y = <const floating*>data.Y
    cdef const floating* w = <const floating*>data.w
    cdef floating* Xb = <floating*>data.Xb
    cdef floating* Yb = <floating*>data.Yb
    cdef floating* wb = <floating*>data.wb
    cdef const floating** rows = <const floating**>data.rows
    cdef const floating* xp
    cdef const floating* wp
    cdef floating denom, l2, shrink, lr_t, lr = <floating>s.lr
    cdef floating beta1 = <floating>s.beta1, beta2 = <floating>s.beta2
    cdef long long t = data.t
    cdef double wsum, batch_loss, penalty, sq = -1  # sq: sum ||W||^2 once known
    cdef long long work = 0, batch_work = parameter_count(net.L, net.sizes) * bs
    cdef double checked = monotonic_seconds() if data.interruptible else 0, now
    cdef bint direct = (rows != NULL and bpfast_direct_rows and net.first_t
                        and net.sW1 != NULL
                        and <long long>bs * n0 * net.sizes[1] <= bpfast_fused_update_limit)
    res.loss_sum = 0
    res.bad_batch = -1
    res.overflow = 0
    res.careful = 0
    res.interrupted = 0
    batch.rows = <const void**>rows if direct else NULL
    start = 0
    while start < n:
        if data.interruptible and work >= bpfast_signal_work:
            work = 0
            now = monotonic_seconds()
            if now - checked >= bpfast_signal_interval:
                checked = now
                if signal_raised():
                    res.interrupted = 1
                    break
        work += batch_work
        mb = <int>(n - start if n - start < bs else bs)
        if data.order != NULL:
            for i in range(mb):
                src = data.order[start + i]
                if direct:
                    rows[i] = X + src * n0
                else:
                    memcpy(Xb + i * n0, X + src * n0, n0 * sizeof(floating))
                memcpy(Yb + i * nL, Y + src * nL, nL * sizeof(floating))
                if w != NULL:
                    wb[i] = w[src]
            xp = Xb
            batch.Y = Yb
            wp = wb if w != NULL else NULL
        else:
            xp = X + start * n0
            batch.Y = Y + start * nL
            wp = w + start if w != NULL else NULL
            if direct:
                for i in range(mb):
                    rows[i] = xp + i * n0
        if wp != NULL:
            wsum = 0
            for i in range(mb):
                wsum += wp[i]
            denom = <floating>wsum
            if data.skip_weightless and wsum == 0:
                start += mb
                continue
        else:
            denom = <floating>mb
        batch.m = mb
        batch.denom = denom
        batch.w = wp
        l2 = <floating>s.alpha / denom
        shrink = 1 - lr * l2
        policy.l2 = l2
        policy.shrink = shrink
        # the L2 term of the loss: plain SGD's from the weights as they are, an
        # optimizer's from the previous step's sum ||W||^2 (its gradient goes into the
        # update)
        if s.alpha != 0 and (sq < 0 or policy.kind == PLAIN_SGD):
            sq = sum_of_squares(net.L, net.sizes, <floating**>net.W)
        if policy.kind == OPTIMIZER_STEP and s.optimizer == OPT_ADAM:
            lr_t = lr * <floating>(sqrt(1 - pow(beta2, t + 1)) / (1 - pow(beta1, t + 1)))
            policy.lr_t = lr_t
        penalty = 0.5 * s.alpha * sq / denom if s.alpha != 0 else 0
        batch_loss = step_batch(net, xp, &batch, &policy, guard, penalty, &sq)
        if not isfinite(batch_loss) or guard.overflow:
            res.bad_batch = start // bs
            res.overflow = guard.overflow
            break
        t += 1
        res.loss_sum += batch_loss * mb
        start += mb
    res.steps = t
    res.careful = guard.careful
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
        cdef Epoch data
        data.n = n
        data.Y = checked_data(Y, "Y", self.typenum, n, self.sizes[self.L], False)
        data.w = NULL
        data.order = NULL
        if sample_weight is not None:
            data.w = checked_data(sample_weight, "sample_weight", self.typenum, n, -1,
                                  False)
        if order is not None:
            data.order = <Py_ssize_t*>checked_data(order, "order", cnp.NPY_INTP, n, -1,
                                                   False)
            check_permutation(data.order, n)
        data.batch_size = self.batch_size
        data.t = t
        data.Xb = self.Xb
        data.Yb = self.Yb
        data.wb = self.wb
        data.rows = <const void**>self.rows
        data.skip_weightless = skip_weightless
        data.interruptible = threading.current_thread() is threading.main_thread()
        cdef bint single = self.typenum == cnp.NPY_FLOAT
        cdef Settings settings
        settings.loss = self.loss
        settings.optimizer = self.optimizer
        settings.nesterov = nesterov
        settings.loss_scale = in_dtype(loss_scale, single)
        settings.lr = in_dtype(lr, single)
        settings.momentum = in_dtype(momentum, single)
        settings.beta1 = in_dtype(beta1, single)
        settings.beta2 = in_dtype(beta2, single)
        settings.epsilon = in_dtype(epsilon, single)
        settings.alpha = in_dtype(alpha, single)
        cdef double bounds[3]
        cdef Guard checks
        memset(&checks, 0, sizeof(Guard))
        checks.bound = self.bound if guard else NULL
        checks.data_bound = bounds
        checks.Wbak = self.tdW  # plain SGD never uses its dW buffers otherwise
        checks.bbak = self.bbak
        checks.backup = &self.backup
        if guard:
            bounds[0], bounds[1], bounds[2] = (data_bounds(X, Y, sample_weight)
                                               if data_bound is None else data_bound)
        cdef Net net = self.training_network()
        cdef EpochResult res
        with nogil:
            self.transpose_first(True)
            bpfast_set_panel_scope(self.panel)
            if self.typenum == cnp.NPY_DOUBLE:
                if guard:
                    guard_bounds[double](&net, checks.bound, <double**>net.W)
                res = train_epoch[double](&net, <double*>x, &data, &settings, &checks)
            else:
                if guard:
                    guard_bounds[float](&net, checks.bound, <float**>net.W)
                res = train_epoch[float](&net, <float*>x, &data, &settings, &checks)
            bpfast_set_panel_scope(0)
            self.transpose_first(False)
        if res.interrupted:
            raise_pending()
        self.overflowed = res.overflow != 0
        self.careful_steps += res.careful
        return res.loss_sum, res.steps, res.bad_batch

    cdef Net training_network(self) noexcept:
        """The epoch's buffers: the first layer's transposed copies where it keeps them,
        and the optimizer state."""
        cdef Net net = self.network(self.scratch)
        net.first_t = self.first_transposed
        net.W = self.tW
        net.dW = self.tdW
        net.sW1 = self.tsW1
        net.sb1 = self.sb1
        net.sW2 = self.tsW2
        net.sb2 = self.sb2
        return net

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
        cdef Net net = self.network(self.scratch)
        cdef Batch batch = whole_batch(m, y, w)
        batch.denom = in_dtype(s, self.typenum == cnp.NPY_FLOAT)
        with nogil:
            if self.typenum == cnp.NPY_DOUBLE:
                value = batch_gradient[double](&net, <double*>x, &batch, loss, loss_scale,
                                               alpha)
            else:
                value = batch_gradient[float](&net, <float*>x, &batch, loss,
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


cdef extern from "_parallel_reduce.h" nogil:
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


cdef extern from "_vector_products.h" nogil:
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


cdef extern from "_panel_gemm.h" nogil:
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
