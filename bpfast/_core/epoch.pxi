# Whole training epochs without the GIL: batches in data order or gathered through a
# permutation, the L2 term, Adam's step size, and Python's signals between batches.


# In the main thread, the epoch loop reads the clock after about bpfast_signal_work
# multiply-adds (batch rows x parameters: a millisecond or two of training), and every
# bpfast_signal_interval seconds takes the GIL to run Python's signal handlers (Ctrl-C).
# Not more often: taking the GIL waits while another thread runs Python code (up to the
# switch interval, 5 ms). Other threads never: Python runs handlers in the main thread.
cdef long long bpfast_signal_work = 1LL << 22


cdef double bpfast_signal_interval = 0.05


cdef extern from "clock.h" nogil:
    double monotonic_seconds "bpfast_monotonic_seconds"()


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


cdef bint bpfast_direct_rows = True
