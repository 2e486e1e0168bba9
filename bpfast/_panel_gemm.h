/* Mid-sized products without packing, split over threads by columns.
 *
 * C = alpha op(A) B + beta C, row-major, op(A) = A or A^T (m x k), B k x n. For the
 * products of a mini-batch step on a layer whose weights fit in the level-2 caches (a
 * 784 x 128 layer at a batch of 64: the forward product X W and the update W += a X^T D,
 * W stored n^0 x n^1), OpenBLAS spends a third of its time packing operands that change
 * every batch and synchronising its threads (docs/performance.md has the figures). This
 * kernel reads the operands where they lie: a register tile of 6 rows by 4 vectors of
 * columns (24 accumulators) takes, for every p, 4 loads of row p of B and one broadcast
 * of op(A) per row, and the same tile serves op(A) = A and A^T through the element
 * strides. op(B) = B^T (a hidden layer's forward product, W stored n^l x n^(l-1)) is
 * left to BLAS: a tile of dot products along k needs its sums reduced across lanes at
 * the end, which made it slower than the BLAS.
 *
 * Threads split the columns of C into contiguous ranges, so a layer's weights (C of the
 * update, B of the forward product) keep the same half in the same core's cache from batch
 * to batch. Every entry is one thread's sum over p = 0..k-1 in order, one multiply-add
 * per term: the result does not depend on the thread count or the buffers' alignment.
 *
 * The helpers are a process-wide pool (bpfast_pool_*), started at the first parallel call:
 * each spins briefly after a task (the next product of the same batch follows within
 * microseconds), then yields, then sleeps on a condition variable. The caller runs the
 * parts no helper has started, so a helper that is asleep, or descheduled before it
 * starts, costs no wait (one descheduled inside its part still does).
 * One caller at a time uses the pool; a second, concurrent caller runs its product on
 * its own thread. A forked child starts a new pool.
 *
 * Compiled for AVX-512 through a function attribute (see _tiles.h); where unavailable,
 * bpfast_panel_available() is 0 and the callers keep BLAS.
 */
#ifndef BPFAST_PANEL_GEMM_H
#define BPFAST_PANEL_GEMM_H

#include <stddef.h>
#include "_tiles.h"

#if BPFAST_HAVE_TILES && defined(__linux__)
#define BPFAST_HAVE_PANEL 1
#else
#define BPFAST_HAVE_PANEL 0
#endif

#define BPFAST_PANEL_MR 6     /* rows of a register tile */
#define BPFAST_PANEL_NV 4     /* vectors of columns of a register tile */
#define BPFAST_POOL_MAX 16    /* threads at most, the caller included */

static int bpfast_panel_available(void)
{
#if BPFAST_HAVE_PANEL
    static int has = -1;
    if (has < 0)
        has = bpfast_tiles_available();
    return has;
#else
    return 0;
#endif
}

/* Routing (gemm in _blas.pxd): products of at least BPFAST_PANEL_MIN multiply-adds whose
 * operands each fit in BPFAST_PANEL_MAX_BYTES, so that every thread's share stays in its
 * core's level-2 cache. BPFAST_PANEL_MIN is where OpenBLAS starts threading a product
 * itself (its GEMM_MULTITHREAD_THRESHOLD of 4 times 65536 multiply-adds; see
 * bpfast_panel_scope); below it the products stay with its small-matrix kernels, on one
 * thread: splitting a microsecond-long product makes it wait out any preemption of the
 * thread running its other part. Larger products stay with OpenBLAS's packed,
 * cache-blocked GEMM, which wins once the operands no longer fit the level-2 caches. */
#define BPFAST_PANEL_MIN (1LL << 18)
#define BPFAST_PANEL_MAX_BYTES (1LL << 21)

static int bpfast_panel_allowed = 1;
/* threads for a product: this many when > 0 (tests), else the BLAS's own thread count */
static int bpfast_panel_thread_override = 0;
/* int (*)(void): the BLAS's current thread count (openblas_get_num_threads), which
   follows OPENBLAS_NUM_THREADS and threadpoolctl's limits. Without it (a BLAS that does
   not say) products stay with the BLAS, unless a test sets the count. */
static void *bpfast_blas_threads_ptr = NULL;

/* products the kernel has taken (a diagnostic for tests) */
static long long bpfast_panel_calls = 0;

static int bpfast_panel_threads(void)
{
    int t = 1;
    if (bpfast_panel_thread_override > 0)
        t = bpfast_panel_thread_override;
    else if (bpfast_blas_threads_ptr != NULL)
        t = ((int (*)(void))bpfast_blas_threads_ptr)();
    return t < 1 ? 1 : t;
}

/* Nonzero while this thread runs the steps of a network whose every product above
 * BPFAST_PANEL_MIN fits the panel kernel (set by the trainer for its epoch). Elsewhere
 * the kernel is not used: OpenBLAS threads products above that size itself, and its
 * workers keep spinning for a while after each one; with the pool's helper spinning
 * too, the two would take turns on the cores. */
static __thread int bpfast_panel_scope = 0;

static void bpfast_set_panel_scope(int on)
{
    bpfast_panel_scope = on;
}

/* Whether C (m x n) = alpha op(A) op(B) + beta C, elements of `size` bytes, fits the
   panel kernel: op(B) = B only, and the size rules above */
static int bpfast_panel_fits(int trans_b, int m, int n, int k, int size)
{
    long long mk = (long long)m * k * size, kn = (long long)k * n * size;
    long long mn = (long long)m * n * size;
    return !trans_b && bpfast_panel_allowed &&
           (bpfast_blas_threads_ptr != NULL || bpfast_panel_thread_override > 0) &&
           (long long)m * n * k >= BPFAST_PANEL_MIN &&
           mk <= BPFAST_PANEL_MAX_BYTES && kn <= BPFAST_PANEL_MAX_BYTES &&
           mn <= BPFAST_PANEL_MAX_BYTES && bpfast_panel_available();
}

/* Whether gemm takes the panel kernel for this product: in a panel scope, and it fits */
static int bpfast_panel_route(int trans_b, int m, int n, int k, int size)
{
    return bpfast_panel_scope && bpfast_panel_fits(trans_b, m, n, k, size);
}

#if BPFAST_HAVE_PANEL

#include <pthread.h>
#include <sched.h>
#include <time.h>

/* ---- the thread pool ------------------------------------------------------------ */

typedef void (*bpfast_pool_fn)(void *job, int part, int parts);

/* A task is fn(job, part, parts) for every part; part 0 is the caller's, part p is
 * helper p - 1's by default, but every part p >= 1 is claimed first (claimed[p] set to
 * the task's generation, by compare-and-swap): the caller, done with part 0, claims and
 * runs whatever no helper has started. A helper that the system has descheduled, or that
 * sleeps, so delays a product by at most the part it is running, never by the time it
 * takes to wake. Claims only move forward, so a helper that wakes late, or reads the
 * next task's fields while they are written, finds its part taken and does nothing. */
static struct {
    pthread_mutex_t caller;      /* held by the one caller using the pool */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    unsigned long long born[BPFAST_POOL_MAX];  /* the generation when each was started */
    int started;                 /* helpers running */
    int initialised;
    unsigned long long generation;  /* bumped for every task */
    unsigned long long claimed[BPFAST_POOL_MAX];  /* generation part p was claimed for */
    int done;                    /* parts >= 1 of the current task finished by helpers */
    int sleepers;
    bpfast_pool_fn fn;
    void *job;
    int parts;
} bpfast_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                 PTHREAD_COND_INITIALIZER};

static double bpfast_pool_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Seconds a helper waits for the next task, spinning then yielding, before it sleeps. */
#define BPFAST_POOL_SPIN_SECONDS 2e-6
#define BPFAST_POOL_YIELD_SECONDS 2e-4

/* Claim part p of task generation g: 1 if this thread is to run it. */
static int bpfast_pool_claim(int p, unsigned long long g)
{
    unsigned long long old = __atomic_load_n(&bpfast_pool.claimed[p], __ATOMIC_ACQUIRE);
    while (old < g) {
        if (__atomic_compare_exchange_n(&bpfast_pool.claimed[p], &old, g, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 1;
    }
    return 0;
}

static void *bpfast_pool_helper(void *arg)
{
    int index = (int)(size_t)arg;  /* runs part index + 1 */
    /* not the generation now: the first task may already have been posted */
    unsigned long long seen = bpfast_pool.born[index];
    for (;;) {
        unsigned long long g;
        bpfast_pool_fn fn;
        void *job;
        int parts;
        double start = bpfast_pool_now();
        int polls = 0;
        while ((g = __atomic_load_n(&bpfast_pool.generation, __ATOMIC_ACQUIRE)) == seen) {
            double waited;
            if ((++polls & 63) != 0) {
                __builtin_ia32_pause();
                continue;
            }
            waited = bpfast_pool_now() - start;
            if (waited < BPFAST_POOL_SPIN_SECONDS)
                continue;
            if (waited < BPFAST_POOL_YIELD_SECONDS) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&bpfast_pool.sleep_lock);
            __atomic_add_fetch(&bpfast_pool.sleepers, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&bpfast_pool.generation, __ATOMIC_SEQ_CST) == seen)
                pthread_cond_wait(&bpfast_pool.wake, &bpfast_pool.sleep_lock);
            __atomic_sub_fetch(&bpfast_pool.sleepers, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&bpfast_pool.sleep_lock);
            start = bpfast_pool_now();
        }
        seen = g;
        /* atomic reads: a helper that wakes late may read them while the caller writes
           the next task's; then its claim below fails, and it uses none of them. A
           successful claim proves they were task g's: the caller writes the next task's
           only after every part of g is claimed. */
        fn = __atomic_load_n(&bpfast_pool.fn, __ATOMIC_RELAXED);
        job = __atomic_load_n(&bpfast_pool.job, __ATOMIC_RELAXED);
        parts = __atomic_load_n(&bpfast_pool.parts, __ATOMIC_RELAXED);
        if (index + 1 < parts && bpfast_pool_claim(index + 1, g)) {
            fn(job, index + 1, parts);
            __atomic_add_fetch(&bpfast_pool.done, 1, __ATOMIC_RELEASE);
        }
    }
    return NULL;
}

static void bpfast_pool_after_fork(void)
{
    /* the child has none of the helpers, and the locks may be held by threads that no
       longer exist */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
    bpfast_pool.caller = fresh;
    bpfast_pool.sleep_lock = fresh;
    bpfast_pool.wake = fresh_cond;
    bpfast_pool.started = 0;
    bpfast_pool.done = 0;
    bpfast_pool.sleepers = 0;
}

/* Start helpers until `helpers` run (the caller holds bpfast_pool.caller); returns how
   many run, which is fewer when a thread cannot be created. */
static int bpfast_pool_grow(int helpers)
{
    if (!bpfast_pool.initialised) {
        pthread_atfork(NULL, NULL, bpfast_pool_after_fork);
        bpfast_pool.initialised = 1;
    }
    while (bpfast_pool.started < helpers) {
        pthread_attr_t attr;
        pthread_t thread;  /* detached: nothing ever joins it */
        int failed;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        bpfast_pool.born[bpfast_pool.started] = bpfast_pool.generation;
        failed = pthread_create(&thread, &attr,
                                bpfast_pool_helper, (void *)(size_t)bpfast_pool.started);
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        bpfast_pool.started++;
    }
    return bpfast_pool.started;
}

/* fn(job, part, parts) for part = 0..parts-1, part 0 on the calling thread; returns
   when all are done. Falls back to fn(job, 0, 1) on the caller alone when the pool is
   busy with another caller or no helper can be started. */
static void bpfast_pool_run(bpfast_pool_fn fn, void *job, int parts)
{
    int helpers, polls, p, mine = 0;
    unsigned long long g;
    if (parts > BPFAST_POOL_MAX)
        parts = BPFAST_POOL_MAX;
    if (parts <= 1 || pthread_mutex_trylock(&bpfast_pool.caller) != 0) {
        fn(job, 0, 1);
        return;
    }
    helpers = bpfast_pool_grow(parts - 1);
    if (helpers < parts - 1)
        parts = helpers + 1;
    if (parts <= 1) {
        pthread_mutex_unlock(&bpfast_pool.caller);
        fn(job, 0, 1);
        return;
    }
    __atomic_store_n(&bpfast_pool.fn, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&bpfast_pool.job, job, __ATOMIC_RELAXED);
    __atomic_store_n(&bpfast_pool.parts, parts, __ATOMIC_RELAXED);
    __atomic_store_n(&bpfast_pool.done, 0, __ATOMIC_RELAXED);
    /* the parts this task does not have are claimed for it in advance: a helper that
       read another task's part count must not claim, for this generation, a part that
       does not exist in it (it would run it on the other task's job, and count it done) */
    g = __atomic_load_n(&bpfast_pool.generation, __ATOMIC_RELAXED) + 1;
    for (p = parts; p < BPFAST_POOL_MAX; p++)
        __atomic_store_n(&bpfast_pool.claimed[p], g, __ATOMIC_RELAXED);
    __atomic_store_n(&bpfast_pool.generation, g, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&bpfast_pool.sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&bpfast_pool.sleep_lock);
        pthread_cond_broadcast(&bpfast_pool.wake);
        pthread_mutex_unlock(&bpfast_pool.sleep_lock);
    }
    fn(job, 0, parts);
    for (p = 1; p < parts; p++)  /* parts no helper has started */
        if (bpfast_pool_claim(p, g)) {
            fn(job, p, parts);
            mine++;
        }
    for (polls = 0; __atomic_load_n(&bpfast_pool.done, __ATOMIC_ACQUIRE) + mine < parts - 1;
         polls++) {
        if (polls < 4096)
            __builtin_ia32_pause();
        else  /* a helper was descheduled inside its part: let it have the core */
            sched_yield();
    }
    pthread_mutex_unlock(&bpfast_pool.caller);
}

/* ---- the kernel ----------------------------------------------------------------- */

/* NAME##_tile: rows x nv vectors of C from op(A) (element (i, p) at A[i*ars + p*acs])
 * and B; the last vector's lanes under `last`. ROWS and NV are constants at every call
 * site, so the accumulators stay in registers. */
#define BPFAST_PANEL_DEFINE(NAME, T, V, M, VL, LOAD, MLOAD, MSTORE, SET1, FMA, MUL)          \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_tile(           \
    const int ROWS, const int NV, M last, int k, const T *A, ptrdiff_t ars,                 \
    ptrdiff_t acs, const T *B, ptrdiff_t ldb, T alpha, T beta, T *C, ptrdiff_t ldc)          \
{                                                                                           \
    V acc[BPFAST_PANEL_MR][BPFAST_PANEL_NV];                                                \
    V b[BPFAST_PANEL_NV];                                                                   \
    int r, v, p;                                                                            \
    _Pragma("GCC unroll 8") for (r = 0; r < ROWS; r++)                                      \
        _Pragma("GCC unroll 8") for (v = 0; v < NV; v++)                                    \
            acc[r][v] = SET1((T)0);                                                         \
    for (p = 0; p < k; p++) {                                                               \
        const T *bp = B + (ptrdiff_t)p * ldb;                                               \
        const T *ap = A + (ptrdiff_t)p * acs;                                               \
        _Pragma("GCC unroll 8") for (v = 0; v < NV - 1; v++)                                \
            b[v] = LOAD(bp + v * VL);                                                       \
        b[NV - 1] = MLOAD(last, bp + (NV - 1) * VL);                                        \
        _Pragma("GCC unroll 8") for (r = 0; r < ROWS; r++) {                                \
            V a = SET1(ap[r * ars]);                                                        \
            _Pragma("GCC unroll 8") for (v = 0; v < NV; v++)                                                        \
                acc[r][v] = FMA(a, b[v], acc[r][v]);                                        \
        }                                                                                   \
    }                                                                                       \
    _Pragma("GCC unroll 8") for (r = 0; r < ROWS; r++) {                                    \
        T *c = C + (ptrdiff_t)r * ldc;                                                      \
        _Pragma("GCC unroll 8") for (v = 0; v < NV; v++) {                                                          \
            M mask = v == NV - 1 ? last : (M)-1;                                            \
            V out;                                                                          \
            if (beta == (T)0)                                                               \
                out = MUL(SET1(alpha), acc[r][v]);                                          \
            else if (beta == (T)1)                                                          \
                out = FMA(SET1(alpha), acc[r][v], MLOAD(mask, c + v * VL));                 \
            else                                                                            \
                out = FMA(SET1(alpha), acc[r][v],                                           \
                          MUL(SET1(beta), MLOAD(mask, c + v * VL)));                        \
            MSTORE(c + v * VL, mask, out);                                                  \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
BPFAST_TILE_TARGET static void NAME##_rows(int ROWS, int NV, M last, int k, const T *A,     \
    ptrdiff_t ars, ptrdiff_t acs, const T *B, ptrdiff_t ldb, T alpha, T beta, T *C,          \
    ptrdiff_t ldc)                                                                          \
{                                                                                           \
    /* one constant (ROWS, NV) instance per case: the accumulators never spill */          \
    switch (ROWS * 8 + NV) {                                                                \
    case 6 * 8 + 4: NAME##_tile(6, 4, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 6 * 8 + 3: NAME##_tile(6, 3, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 6 * 8 + 2: NAME##_tile(6, 2, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 6 * 8 + 1: NAME##_tile(6, 1, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 5 * 8 + 4: NAME##_tile(5, 4, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 5 * 8 + 3: NAME##_tile(5, 3, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 5 * 8 + 2: NAME##_tile(5, 2, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 5 * 8 + 1: NAME##_tile(5, 1, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 4 * 8 + 4: NAME##_tile(4, 4, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 4 * 8 + 3: NAME##_tile(4, 3, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 4 * 8 + 2: NAME##_tile(4, 2, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 4 * 8 + 1: NAME##_tile(4, 1, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 3 * 8 + 4: NAME##_tile(3, 4, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 3 * 8 + 3: NAME##_tile(3, 3, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 3 * 8 + 2: NAME##_tile(3, 2, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 3 * 8 + 1: NAME##_tile(3, 1, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 2 * 8 + 4: NAME##_tile(2, 4, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 2 * 8 + 3: NAME##_tile(2, 3, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 2 * 8 + 2: NAME##_tile(2, 2, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 2 * 8 + 1: NAME##_tile(2, 1, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 1 * 8 + 4: NAME##_tile(1, 4, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 1 * 8 + 3: NAME##_tile(1, 3, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    case 1 * 8 + 2: NAME##_tile(1, 2, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break; \
    default: NAME##_tile(1, 1, last, k, A, ars, acs, B, ldb, alpha, beta, C, ldc); break;      \
    }                                                                                       \
}                                                                                           \
                                                                                            \
typedef struct {                                                                            \
    int m, n, k;                                                                            \
    const T *A;                                                                             \
    ptrdiff_t ars, acs;                                                                     \
    const T *B;                                                                             \
    ptrdiff_t ldb;                                                                          \
    T alpha, beta;                                                                          \
    T *C;                                                                                   \
    ptrdiff_t ldc;                                                                          \
    int by_rows;                                                                            \
} NAME##_job;                                                                               \
                                                                                            \
/* part `part` of `parts`: a contiguous range of whole vectors of C's columns, or (with  \
   fewer vectors than parts) of whole tiles of C's rows */                                  \
BPFAST_TILE_TARGET static void NAME##_part(void *arg, int part, int parts)                   \
{                                                                                           \
    const NAME##_job *g = (const NAME##_job *)arg;                                          \
    ptrdiff_t vectors = ((ptrdiff_t)g->n + VL - 1) / VL;                                    \
    ptrdiff_t v0 = 0, v1 = vectors, i0 = 0, i1 = g->m;                                      \
    ptrdiff_t j, i;                                                                         \
    if (g->by_rows) {                                                                       \
        ptrdiff_t tiles = ((ptrdiff_t)g->m + BPFAST_PANEL_MR - 1) / BPFAST_PANEL_MR;        \
        i0 = tiles * part / parts * BPFAST_PANEL_MR;                                        \
        i1 = tiles * (part + 1) / parts * BPFAST_PANEL_MR;                                  \
        if (i1 > g->m)                                                                      \
            i1 = g->m;                                                                      \
    } else {                                                                                \
        v0 = vectors * part / parts;                                                        \
        v1 = vectors * (part + 1) / parts;                                                  \
    }                                                                                       \
    for (j = v0 * VL; j < v1 * VL && j < g->n; j += BPFAST_PANEL_NV * VL) {                 \
        ptrdiff_t cols = g->n - j;                                                          \
        int nv;                                                                             \
        M last;                                                                             \
        if (cols > (v1 * VL - j))                                                           \
            cols = v1 * VL - j;                                                             \
        if (cols > BPFAST_PANEL_NV * VL)                                                    \
            cols = BPFAST_PANEL_NV * VL;                                                    \
        nv = (int)((cols + VL - 1) / VL);                                                   \
        last = (M)(((unsigned long long)1 << (cols - (ptrdiff_t)(nv - 1) * VL)) - 1);       \
        for (i = i0; i < i1; i += BPFAST_PANEL_MR) {                                        \
            int rows = i1 - i < BPFAST_PANEL_MR ? (int)(i1 - i) : BPFAST_PANEL_MR;          \
            NAME##_rows(rows, nv, last, g->k, g->A + i * g->ars, g->ars, g->acs, g->B + j,  \
                        g->ldb, g->alpha, g->beta, g->C + i * g->ldc + j, g->ldc);          \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* C = alpha op(A) B + beta C on up to `threads` threads (beta 0: C is not read) */         \
static void NAME(int trans_a, int m, int n, int k, T alpha, const T *A, int lda,            \
                 const T *B, int ldb, T beta, T *C, int ldc, int threads)                   \
{                                                                                           \
    NAME##_job g;                                                                           \
    ptrdiff_t vectors = ((ptrdiff_t)n + VL - 1) / VL;                                       \
    g.m = m; g.n = n; g.k = k; g.A = A;                                                     \
    g.ars = trans_a ? 1 : lda;                                                              \
    g.acs = trans_a ? lda : 1;                                                              \
    g.B = B; g.ldb = ldb; g.alpha = alpha; g.beta = beta; g.C = C; g.ldc = ldc;             \
    /* columns keep each thread's share of the weights in its own cache from product to \
       product; rows only when there are fewer vectors of columns than threads */          \
    g.by_rows = vectors < (ptrdiff_t)threads;                                               \
    if (g.by_rows && threads > (m + BPFAST_PANEL_MR - 1) / BPFAST_PANEL_MR)                  \
        threads = (m + BPFAST_PANEL_MR - 1) / BPFAST_PANEL_MR;                              \
    __atomic_add_fetch(&bpfast_panel_calls, 1, __ATOMIC_RELAXED);                           \
    bpfast_pool_run(NAME##_part, &g, threads);                                              \
}

#define BPFAST_PANEL_MLOAD_D(mask, p) _mm512_maskz_loadu_pd((__mmask8)(mask), (p))
#define BPFAST_PANEL_MSTORE_D(p, mask, x) _mm512_mask_storeu_pd((p), (__mmask8)(mask), (x))
#define BPFAST_PANEL_MLOAD_F(mask, p) _mm512_maskz_loadu_ps((__mmask16)(mask), (p))
#define BPFAST_PANEL_MSTORE_F(p, mask, x) _mm512_mask_storeu_ps((p), (__mmask16)(mask), (x))

BPFAST_PANEL_DEFINE(bpfast_panel_d, double, __m512d, __mmask8, 8, _mm512_loadu_pd,
                    BPFAST_PANEL_MLOAD_D, BPFAST_PANEL_MSTORE_D, _mm512_set1_pd,
                    _mm512_fmadd_pd, _mm512_mul_pd)
BPFAST_PANEL_DEFINE(bpfast_panel_f, float, __m512, __mmask16, 16, _mm512_loadu_ps,
                    BPFAST_PANEL_MLOAD_F, BPFAST_PANEL_MSTORE_F, _mm512_set1_ps,
                    _mm512_fmadd_ps, _mm512_mul_ps)

#else /* no panel kernel: never called (bpfast_panel_available() is 0) */

static void bpfast_panel_d(int trans_a, int m, int n, int k, double alpha, const double *A,
                           int lda, const double *B, int ldb, double beta, double *C,
                           int ldc, int threads)
{
    (void)trans_a; (void)m; (void)n; (void)k; (void)alpha; (void)A; (void)lda; (void)B;
    (void)ldb; (void)beta; (void)C; (void)ldc; (void)threads;
}

static void bpfast_panel_f(int trans_a, int m, int n, int k, float alpha, const float *A,
                           int lda, const float *B, int ldb, float beta, float *C, int ldc,
                           int threads)
{
    (void)trans_a; (void)m; (void)n; (void)k; (void)alpha; (void)A; (void)lda; (void)B;
    (void)ldb; (void)beta; (void)C; (void)ldc; (void)threads;
}

#endif

#endif
