# Back-propagation: the output delta dZ^L = dE/dZ^L with the loss, the hidden delta
# dZ = dA (.) g'(Z), and per layer dW = dZ^T A_prev, db = column sums of dZ and
# dA_prev = dZ W, in one routine, backward(), whose StepPolicy says what each layer's
# gradient is for.


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline bint outputs_finite(int loss, int L, int m, const int* sizes,
                               floating** A) noexcept nogil:
    """Whether every output A^L of the batch is finite, as far as its loss needs telling.
    A product that overflowed reaches the outputs as inf or NaN (a softmax row of inf
    gives NaN), which the cross-entropies' clipped logarithms hide from the loss; the
    squared error and the Poisson loss of such an output are not finite themselves."""
    if loss != LOSS_CE and loss != LOSS_BCE:
        return True
    return max_abs(A[L - 1], <Py_ssize_t>m * sizes[L]) < HUGE_VAL


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
    return log(f.mantissa) + f.exponent * BPFAST_LN2


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
    if loss == LOSS_MSE and (kind >= 0 or code == IDENTITY):  # pointwise_fused.inc's pass
        if floating is double:
            return bpfast_pw_mse_delta_d(kind, m, n, A, Y, w, denom, Z, db)
        else:
            return bpfast_pw_mse_delta_f(kind, m, n, A, Y, w, denom, Z, db)
    if (loss == LOSS_CE or loss == LOSS_BCE) and w == NULL:
        # dZ = (A - Y) / denom with its column sums is the identity's squared-error pass
        # (its sum of squares unused); the loss from pointwise.inc's vectorised products
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


cdef inline void weight_gradient(bint transposed, int m, int n_out, int n_in,
                                 floating alpha, const floating* dZ, const floating* prev,
                                 floating beta, floating* G) noexcept nogil:
    """G = beta G + alpha dZ^T prev (n_out x n_in), or its transpose (n_in x n_out)."""
    if transposed:
        gemm(True, False, n_in, n_out, m, alpha, prev, n_in, dZ, n_out, beta, G, n_out)
    else:
        gemm(True, False, n_out, n_in, m, alpha, dZ, n_out, prev, n_in, beta, G, n_in)


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
    activation: then dZ[l-1] comes from one pass of layer_forward.inc's backward kernel.
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
    """:func:`delta_below` in one pass of layer_forward.inc's backward kernel, which takes
    g' of a piecewise-linear activation from the signs of A[l-1]."""
    cdef const int* sizes = net.sizes
    cdef floating** Z = <floating**>net.Z
    cdef floating** W = <floating**>net.W
    cdef floating** db = <floating**>net.db
    cdef int kind = pwl_kind(net.codes[l - 1])
    cdef bpfast_layer_io_d io_d
    cdef bpfast_layer_io_f io_f
    # W[l] (n^(l+1) x n^l) is the n_in x n matrix of the backward product
    if floating is double:
        layer_io(m, sizes[l + 1], sizes[l], W[l], Z[l - 1], A[l - 1], kind, &io_d)
        io_d.dZ, io_d.db = Z[l], db[l - 1]
        bpfast_layer_forward_d_back(&io_d)
    else:
        layer_io(m, sizes[l + 1], sizes[l], W[l], Z[l - 1], A[l - 1], kind, &io_f)
        io_f.dZ, io_f.db = Z[l], db[l - 1]
        bpfast_layer_forward_f_back(&io_f)


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
