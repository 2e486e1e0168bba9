# Switches for tests and benchmarks: the process-wide choices between routes (set_*) and
# what this processor runs.


def set_gradient_block(Py_ssize_t entries):
    """Large layers' gradients are taken ``entries`` at a time (whole rows, at least
    one) in momentum and Adam steps; returns the old value. For benchmarks and tests."""
    global bpfast_gradient_block
    if entries < 1:
        raise ValueError(f"entries: expected a positive number, got {entries}")
    old = bpfast_gradient_block
    bpfast_gradient_block = entries
    return old


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


def set_first_transpose_limit(long long limit):
    """Trainers built afterwards keep the first layer transposed during an epoch when
    batch_size * n^0 * n^1 <= limit; returns the old limit. For benchmarks and tests."""
    global bpfast_first_transpose_limit
    old = bpfast_first_transpose_limit
    bpfast_first_transpose_limit = limit
    return old


def fused_update_available():
    """Whether this processor runs the register-tile kernels (AVX2 with FMA, or AVX-512)."""
    return bool(bpfast_tiles_available())


def set_direct_rows(bint enabled):
    """Whether momentum and Adam epochs may read a small transposed first layer's batch
    rows where they sit (see train_epoch) instead of gathering them; returns the old
    setting. For benchmarks and tests."""
    global bpfast_direct_rows
    old = bpfast_direct_rows
    bpfast_direct_rows = enabled
    return old


def set_vector_math(bint enabled):
    """Whether exp, tanh, sigmoid and silu over arrays, and the fused pointwise passes,
    may take their vector versions (vmath_vec.inc, pointwise_fused.inc: on processors
    with AVX2+FMA or AVX-512F) rather than the portable loops; returns the old setting.
    For benchmarks and tests."""
    global bpfast_vector_math_allowed
    old = bool(bpfast_vector_math_allowed)
    bpfast_vector_math_allowed = enabled
    return old


def vector_math():
    """Whether exp, tanh, sigmoid, silu and the fused pointwise passes run their vector
    versions."""
    return bool(bpfast_vector_math())


def activation_rows(int code, z):
    """g(z) over a contiguous float64 or float32 array through the compiled array
    function of activation ``code`` (sigmoid, tanh, silu, exp), as a new array. For
    tests, which hold the routes' bits against each other."""
    cdef double[::1] zd, ad
    cdef float[::1] zf, af
    if code not in (SIGMOID, TANH, SILU, EXP):
        raise ValueError(f"code: expected sigmoid, tanh, silu or exp's, got {code}")
    z = np.ascontiguousarray(z)
    if z.ndim != 1 or z.dtype not in (np.float64, np.float32):
        raise TypeError("z: expected a 1-D float64 or float32 array")
    out = np.empty_like(z)
    if z.dtype == np.float64:
        zd, ad = z, out
        if zd.shape[0]:
            activate_row(code, zd.shape[0], &zd[0], &ad[0])
    else:
        zf, af = z, out
        if zf.shape[0]:
            activate_row(code, zf.shape[0], &zf[0], &af[0])
    return out


cdef extern from "kernels.h" nogil:
    int bpfast_vector_products_allowed "bpfast_vector_products_allowed"
    int vector_products_on "bpfast_vector_products"()


def set_vector_products(bint enabled):
    """Whether one-row products (batches of one row) may take their own route rather than
    BLAS: vector_products.inc's kernels where they run (AVX2, AVX-512), small_gemm.inc's
    loops elsewhere; returns the old setting. For benchmarks and tests."""
    global bpfast_vector_products_allowed
    old = bool(bpfast_vector_products_allowed)
    bpfast_vector_products_allowed = enabled
    return old


def vector_products_available():
    """Whether one-row products run vector_products.inc's kernels (AVX2, AVX-512) on this
    processor (elsewhere their route is small_gemm.inc's loops)."""
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
    """Whether mid-sized products may take panel_gemm.inc's threaded kernel rather than
    BLAS, and on how many threads (0: the BLAS's own count); returns the old
    (enabled, threads). Enabled by default only where the AVX-512 copy runs, the one
    target where it beats the BLAS. For benchmarks and tests."""
    global bpfast_panel_allowed, bpfast_panel_thread_override
    if threads < 0:
        raise ValueError(f"threads: expected 0 or a positive count, got {threads}")
    old = (bool(bpfast_panel_allowed), bpfast_panel_thread_override)
    bpfast_panel_allowed = enabled
    bpfast_panel_thread_override = threads
    return old


def panel_gemm_available():
    """Whether this processor runs panel_gemm.inc's kernel."""
    return bool(panel_available())


def panel_gemm_calls():
    """Products panel_gemm.inc's kernel has taken so far in this process (for tests)."""
    return bpfast_panel_calls


def panel_gemm_threads():
    """Threads a mid-sized product would take now."""
    return panel_threads()


def set_fused_update_limit(long long limit):
    """Layers with batch * n^l * n^(l-1) <= limit take the fused gradient-and-update
    kernel in momentum and Adam steps (0: never); returns the old limit. For benchmarks
    and tests. Ignored (always 0) where the processor has no tile kernels."""
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
