# The overflow guard: bounds that prove a step leaves every parameter finite
# (update_is_safe), the measured bounds it starts from, and the data's magnitudes.


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


cdef enum:
    # update_is_safe's step rules: plain SGD fused into the product (l2 as a shrink),
    # and an optimizer step's momentum, Nesterov and Adam
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


def data_bounds(X, Y, sample_weight=None):
    """The overflow guard's (max |X|, max |Y|, largest sample weight or 1): the
    ``data_bound`` of :meth:`Trainer.epoch`."""
    return (magnitude_bound(X), magnitude_bound(Y),
            1.0 if sample_weight is None else magnitude_bound(sample_weight))
