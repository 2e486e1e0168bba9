/* The largest magnitude of a large array (max_abs.inc: the training data's bound
 * and finiteness check) split over the panel kernel's thread pool.
 *
 * Before every fit the trainer takes max |X| over the whole data: a pass from memory that
 * one core cannot pull at the machine's bandwidth. Each thread
 * takes a contiguous range of whole 64-byte lines; the maximum does not depend on how
 * the array is split, so the result is the one-thread result exactly.
 */
#include <stddef.h>
#include "kernels.h"

/* Arrays of fewer bytes stay on one thread; from this size on, the pass costs far more
 * than handing a part to a helper, even one that has to be woken. */
#define BPFAST_PARALLEL_MAX_ABS_BYTES (8LL << 20)

typedef struct {
    const char *x;
    ptrdiff_t n;      /* elements */
    int size;         /* bytes per element: 8 (double) or 4 (float) */
    double top[BPFAST_POOL_MAX];  /* each part's max_abs; 0 for parts not run */
} bpfast_max_abs_job;

static void bpfast_max_abs_part(void *arg, int part, int parts)
{
    bpfast_max_abs_job *job = (bpfast_max_abs_job *)arg;
    ptrdiff_t lanes = 64 / job->size;
    ptrdiff_t lines = (job->n + lanes - 1) / lanes;
    ptrdiff_t k0 = lines * part / parts * lanes;
    ptrdiff_t k1 = lines * (part + 1) / parts * lanes;
    if (k1 > job->n)
        k1 = job->n;
    if (k0 >= k1)
        return;
    if (job->size == 8)
        job->top[part] = bpfast_max_abs_d((const double *)job->x + k0, k1 - k0);
    else
        job->top[part] = bpfast_max_abs_f((const float *)job->x + k0, k1 - k0);
}

/* max_k |x[k]| over n doubles (size 8) or floats (size 4), +inf if any is not finite:
   on the BLAS's thread count for large arrays where the pool runs, else on this
   thread */
double bpfast_max_abs_parallel(const void *x, ptrdiff_t n, int size)
{
    bpfast_max_abs_job job;
    double best = 0;
    int threads = 1, p;
    /* the pool where the panel kernel's route is on (AVX-512 by default): elsewhere its
       helper would be one more thread beside the BLAS's */
    if ((long long)n * size >= BPFAST_PARALLEL_MAX_ABS_BYTES && bpfast_panel_available() &&
        bpfast_panel_allowed)
        threads = bpfast_panel_threads();
    if (threads <= 1)
        return size == 8 ? bpfast_max_abs_d((const double *)x, n)
                         : bpfast_max_abs_f((const float *)x, n);
    if (threads > BPFAST_POOL_MAX)
        threads = BPFAST_POOL_MAX;
    job.x = (const char *)x;
    job.n = n;
    job.size = size;
    for (p = 0; p < BPFAST_POOL_MAX; p++)
        job.top[p] = 0;
    /* with the pool busy (another caller) this is part 0 of 1: the whole array */
    bpfast_pool_run(bpfast_max_abs_part, &job, threads);
    for (p = 0; p < BPFAST_POOL_MAX; p++)
        best = job.top[p] > best ? job.top[p] : best;  /* +inf stays +inf */
    return best;
}
