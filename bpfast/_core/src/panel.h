/* Mid-sized products without packing, split over threads in a grid of blocks.
 *
 * C = alpha op(A) B + beta C, row-major, op(A) = A or A^T (m x k), B k x n. For the
 * products of a mini-batch step on a layer whose weights fit in the level-2 caches (a
 * 784 x 128 layer at a batch of 64: the forward product X W and the update W += a X^T D,
 * W stored n^0 x n^1), OpenBLAS spends a third of its time packing operands that change
 * every batch and synchronising its threads (docs/performance.md has the figures). This
 * kernel reads the operands where they lie: a register tile of 6 rows by a few vectors
 * of columns (tiles.h's vectors; 4 on AVX-512, 2 on AVX2: 24 or 12 accumulators) takes,
 * for every p, one load of row p of B per vector and one broadcast of op(A) per row, and
 * the same tile serves op(A) = A and A^T through the element strides. op(B) = B^T (a
 * hidden layer's forward product, W stored n^l x n^(l-1)) is left to BLAS: a tile of dot
 * products along k needs its sums reduced across lanes at the end, which made it slower
 * than the BLAS.
 *
 * Threads split C into a grid of blocks (bpfast_panel_plan): contiguous ranges of column
 * tiles first, so that a layer's weights (C of the update, B of the forward product) keep
 * the same share in the same core's cache from batch to batch, then ranges of row tiles
 * when there are more threads than column tiles (a 128-wide layer has 4 column tiles on
 * AVX-512; 16 threads then take 4 x 4 blocks). Every entry is one thread's sum over
 * p = 0..k-1 in order, one multiply-add per term: the result does not depend on the
 * thread count or the buffers' alignment.
 *
 * The helpers are a process-wide pool (bpfast_pool_*), started at the first parallel call:
 * each spins briefly after a task (the next product of the same batch follows within
 * microseconds), then yields, then sleeps on a condition variable. The caller runs the
 * parts no helper has started, so a helper that is asleep, or descheduled before it
 * starts, costs no wait (one descheduled inside its part still does).
 * One caller at a time uses the pool; a second, concurrent caller runs its product on
 * its own thread. A forked child starts a new pool. OpenMP in its place ran these
 * products slower, slowed the OpenBLAS products after them by spinning, and hung in a
 * forked child (docs/performance.md, "bpfast's pool against OpenMP").
 *
 * This header: the routing (which products take the kernel) and the pool's interface;
 * panel.c: the switches and the pool; panel_gemm.inc: the kernel, compiled for every
 * target with register tiles (tiles.h: AVX2 and AVX-512). Where unavailable,
 * bpfast_panel_available() is 0 and the callers keep BLAS.
 */
#ifndef BPFAST_PANEL_H
#define BPFAST_PANEL_H

#include <stddef.h>
#include "platform.h"
#include "tiles.h"

#if BPFAST_HAVE_TILES && defined(__linux__)
#define BPFAST_HAVE_PANEL 1
#else
#define BPFAST_HAVE_PANEL 0
#endif

#define BPFAST_PANEL_MR 6     /* rows of a register tile */
#ifdef BPFAST_TILE_NV
#define BPFAST_PANEL_NV BPFAST_TILE_NV  /* vectors of columns of a register tile */
#endif
#define BPFAST_POOL_MAX 128   /* threads at most, the caller included */
/* Multiply-adds a thread's block gets at least: below it, a block costs about as much to
   hand to a helper as to compute. */
#define BPFAST_PANEL_PART_MIN (1LL << 16)

static inline int bpfast_panel_available(void)
{
    return BPFAST_HAVE_PANEL && bpfast_tiles_available();
}

/* How a product is cut for the threads: col_groups ranges of column tiles by row_groups
   ranges of row tiles. */
typedef struct {
    int col_groups, row_groups;
} bpfast_panel_split;

/* The grid for C (m x n) on at most `threads` threads, for tiles of
   BPFAST_PANEL_MR rows by nv vectors of vl lanes: column ranges first (each thread keeps
   its share of the weights), then row ranges. */
static inline bpfast_panel_split bpfast_panel_plan(int m, int n, int vl, int nv,
                                                   int threads)
{
    bpfast_panel_split s;
    long long units = ((long long)(n / vl) + nv - 1) / nv;
    long long tiles = ((long long)m + BPFAST_PANEL_MR - 1) / BPFAST_PANEL_MR;
    long long t = threads;
    if (t > BPFAST_POOL_MAX)
        t = BPFAST_POOL_MAX;
    if (t < 1)
        t = 1;
    s.col_groups = (int)(units < 1 ? 1 : units < t ? units : t);
    s.row_groups = (int)(t / s.col_groups);
    if (s.row_groups > tiles)
        s.row_groups = (int)tiles;
    if (s.row_groups < 1)
        s.row_groups = 1;
    return s;
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

/* 0 keeps every product with BLAS (tests compare the routes); 1 by default where the
   AVX-512 copy runs, 0 elsewhere (dispatch.c) */
extern int bpfast_panel_allowed;
/* threads for a product: this many when > 0 (tests), else the BLAS's own thread count */
extern int bpfast_panel_thread_override;
/* int (*)(void): the BLAS's current thread count (openblas_get_num_threads), which
   follows OPENBLAS_NUM_THREADS and threadpoolctl's limits. Without it (a BLAS that does
   not say) products stay with the BLAS, unless a test sets the count. */
extern void *bpfast_blas_threads_ptr;

/* products the kernel has taken (a diagnostic for tests) */
extern long long bpfast_panel_calls;

/* threads a mid-sized product takes now */
int bpfast_panel_threads(void);

/* threads for a product of m n k multiply-adds: the count above, but no more than it
   has blocks of BPFAST_PANEL_PART_MIN */
static inline int bpfast_panel_threads_for(int m, int n, int k)
{
    long long most = (long long)m * n * k / BPFAST_PANEL_PART_MIN;
    int t = bpfast_panel_threads();
    return most < 1 ? 1 : t > most ? (int)most : t;
}

/* Nonzero while this thread runs the steps of a network whose every product above
 * BPFAST_PANEL_MIN fits the panel kernel (set by the trainer for its epoch). Elsewhere
 * the kernel is not used: OpenBLAS threads products above that size itself, and its
 * workers keep spinning for a while after each one; with the pool's helper spinning
 * too, the two would take turns on the cores. */
extern BPFAST_THREAD_LOCAL int bpfast_panel_scope;

static inline void bpfast_set_panel_scope(int on)
{
    bpfast_panel_scope = on;
}

/* Whether C (m x n) = alpha op(A) op(B) + beta C, elements of `size` bytes, fits the
   panel kernel: op(B) = B only, and the size rules above */
static inline int bpfast_panel_fits(int trans_b, int m, int n, int k, int size)
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
static inline int bpfast_panel_route(int trans_b, int m, int n, int k, int size)
{
    return bpfast_panel_scope && bpfast_panel_fits(trans_b, m, n, k, size);
}

/* ---- the thread pool (panel.c) --------------------------------------------------- */

typedef void (*bpfast_pool_fn)(void *job, int part, int parts);

/* fn(job, part, parts) for part = 0..parts-1, part 0 on the calling thread; returns
   when all are done. Falls back to fn(job, 0, 1) on the caller alone when the pool is
   busy with another caller or no helper can be started, and always without
   BPFAST_HAVE_PANEL. */
void bpfast_pool_run(bpfast_pool_fn fn, void *job, int parts);

#endif
