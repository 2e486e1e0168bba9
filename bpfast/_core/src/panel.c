/* The panel kernel's switches and thread pool (see panel.h); plain C, one copy. */
#include <stddef.h>
#include "panel.h"

int bpfast_panel_allowed = 0; /* on by default in the AVX-512 copy (dispatch.c) */
int bpfast_panel_thread_override = 0;
void *bpfast_blas_threads_ptr = NULL;
long long bpfast_panel_calls = 0;
BPFAST_THREAD_LOCAL int bpfast_panel_scope = 0;

int bpfast_panel_threads(void)
{
    int t = 1;
    if (bpfast_panel_thread_override > 0)
        t = bpfast_panel_thread_override;
    else if (bpfast_blas_threads_ptr != NULL)
        t = ((int (*)(void))bpfast_blas_threads_ptr)();
    return t < 1 ? 1 : t;
}

#if BPFAST_HAVE_PANEL && defined(BPFAST_POOL_OPENMP)

/* For measurement only (docs/performance.md, "bpfast's pool against OpenMP"): the same
 * parts run by an OpenMP parallel region instead of the pool below. Build with
 * CFLAGS="-fopenmp -DBPFAST_POOL_OPENMP" LDFLAGS=-fopenmp. */
#include <omp.h>

void bpfast_pool_run(bpfast_pool_fn fn, void *job, int parts)
{
    if (parts > BPFAST_POOL_MAX)
        parts = BPFAST_POOL_MAX;
    if (parts <= 1) {
        fn(job, 0, 1);
        return;
    }
#pragma omp parallel num_threads(parts)
    {
        int n = omp_get_num_threads(), p;
        for (p = omp_get_thread_num(); p < parts; p += n)
            fn(job, p, parts);
    }
}

#elif BPFAST_HAVE_PANEL

#include <pthread.h>
#include <sched.h>
#include <time.h>

/* ---- the thread pool ------------------------------------------------------------ */

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

/* see panel.h */
void bpfast_pool_run(bpfast_pool_fn fn, void *job, int parts)
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

#else /* no pool: the caller runs every task alone */

void bpfast_pool_run(bpfast_pool_fn fn, void *job, int parts)
{
    (void)parts;
    fn(job, 0, 1);
}

#endif
