# Optimizer updates: scikit-learn's SGD, momentum, Nesterov and Adam rules applied to each
# layer as backward() reaches it (in the gradient's register tiles for small layers, in
# blocks of rows for large ones), and one batch's whole step.


cdef extern from "kernels.h" nogil:
    ctypedef struct bpfast_step_rule:
        int adam
        int nesterov
        double lr, mu, beta1, beta2, eps, lr_t, l2
    double bpfast_update_d(Py_ssize_t n, double* P, const double* G, double* V, double* S,
                           const bpfast_step_rule* rule)
    double bpfast_update_f(Py_ssize_t n, float* P, const float* G, float* V, float* S,
                           const bpfast_step_rule* rule)


cdef inline bpfast_step_rule step_rule(const StepPolicy* policy, double l2) noexcept nogil:
    """The kernels' form of this step's optimizer settings, with L2 coefficient ``l2``."""
    cdef const Settings* s = policy.settings
    cdef bpfast_step_rule rule
    rule.adam = s.optimizer == OPT_ADAM
    rule.nesterov = s.nesterov
    rule.lr = s.lr
    rule.mu = s.momentum
    rule.beta1 = s.beta1
    rule.beta2 = s.beta2
    rule.eps = s.epsilon
    rule.lr_t = policy.lr_t
    rule.l2 = l2
    return rule


cdef inline double update(const StepPolicy* policy, Py_ssize_t N, floating* p,
                          const floating* g, floating* s1, floating* s2,
                          floating l2) noexcept nogil:
    """One optimizer step on N parameters p with gradient g + l2 p (scikit-learn's rules);
    returns sum p^2 of the new values.

    sgd: p -= lr g, or with momentum v = mu v - lr g and p += v (nesterov: p += mu v - lr g).
    adam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p += -lr_t m / (sqrt(v) + eps).
    """
    cdef bpfast_step_rule rule = step_rule(policy, l2)
    if floating is double:
        return bpfast_update_d(N, p, g, s1, s2, &rule)
    else:
        return bpfast_update_f(N, p, g, s1, s2, &rule)


cdef extern from "kernels.h" nogil:
    int bpfast_tiles_available()


cdef extern from "kernels.h" nogil:
    double bpfast_grad_update_d(int m, int R, int C, const double* A, Py_ssize_t lda,
                                const double** arows, const double* B, Py_ssize_t ldb,
                                double* P, Py_ssize_t ldp, double* V, double* S,
                                const bpfast_step_rule* rule)
    double bpfast_grad_update_f(int m, int R, int C, const float* A, Py_ssize_t lda,
                                const float** arows, const float* B, Py_ssize_t ldb,
                                float* P, Py_ssize_t ldp, float* V, float* S,
                                const bpfast_step_rule* rule)


# Layers whose weight gradient takes at most this many multiply-adds (batch x n^l x
# n^(l-1)) are stepped by grad_update.inc's fused kernel, the gradient never stored;
# larger ones take a BLAS product into dW and the update pass, which wins once the
# product is large (docs/performance.md). 0 where the processor has no tile kernels.
cdef long long bpfast_fused_update_limit = (1LL << 19) if bpfast_tiles_available() else 0


cdef inline bint tile_backward(int m, int n_above, int n_below,
                              int code_below) noexcept nogil:
    """Whether an optimizer step takes a layer's delta from layer_forward.inc's backward
    kernel: a piecewise-linear activation below, and a product small enough for the tile
    kernels. That kernel reads only A below, so forward_pass may then skip Z."""
    return (pwl_kind(code_below) >= 0
            and <long long>m * n_above * n_below <= bpfast_fused_update_limit)


cdef inline double grad_update(const Net* net, int m, int l, const floating* prev,
                               const floating** prev_rows,
                               const StepPolicy* policy) noexcept nogil:
    """W[l] stepped as :func:`update` with dW = dZ[l]^T prev (n_out x n_in; its transpose
    for W stored transposed) in grad_update.inc's register tiles, the gradient never
    stored; returns sum W^2 of the new values.

    ``prev_rows`` (W stored transposed only): row p of prev is prev_rows[p], and ``prev``
    is not read."""
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
    cdef bpfast_step_rule rule = step_rule(policy, policy.l2)
    if floating is double:
        return bpfast_grad_update_d(m, R, C, a, R, prev_rows, bb, C, W, C, s1, s2, &rule)
    else:
        return bpfast_grad_update_f(m, R, C, a, R, prev_rows, bb, C, W, C, s1, s2, &rule)


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


cdef void copy_parameters(int L, const int* sizes, floating** W, floating** b,
                          floating** W_to, floating** b_to) noexcept nogil:
    """W_to[l], b_to[l] = W[l], b[l] for every layer."""
    cdef int l
    for l in range(L):
        memcpy(W_to[l], W[l], <size_t>sizes[l + 1] * sizes[l] * sizeof(floating))
        memcpy(b_to[l], b[l], <size_t>sizes[l + 1] * sizeof(floating))
