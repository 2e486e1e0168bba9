/* Sums of squares accumulated in double, split into independent partial sums; and
 * the largest magnitude, which also tells whether every value is finite (the trainer's
 * overflow bound, see ``update_is_safe`` in _kernels.pyx, and its finiteness checks).
 *
 * A plain `s += x[k] * x[k]` loop is latency-bound (one dependent add per element) and the
 * compiler may not split the sum by itself; splitting it here changes the result at
 * rounding level only.
 */
#ifndef BPFAST_REDUCE_H
#define BPFAST_REDUCE_H

#include <math.h>
#include <stddef.h>

/* Eight independent partial sums (vector lanes times unrolling) hide the add latency;
 * the pragma lets the compiler vectorise the lane loop. */
#define BPFAST_DEFINE_SUMSQ(T, NAME)                                                     \
static inline double NAME(const T *x, ptrdiff_t n)                                      \
{                                                                                       \
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0;                                   \
    ptrdiff_t k = 0, j;                                                                 \
    for (; k + 8 <= n; k += 8) {                                                        \
        _Pragma("omp simd")                                                             \
        for (j = 0; j < 8; j++)                                                         \
            part[j] += (double)x[k + j] * (double)x[k + j];                             \
    }                                                                                   \
    for (; k < n; k++)                                                                  \
        s += (double)x[k] * (double)x[k];                                               \
    for (j = 0; j < 8; j++)                                                             \
        s += part[j];                                                                   \
    return s;                                                                           \
}

BPFAST_DEFINE_SUMSQ(double, bpfast_sumsq_d)
BPFAST_DEFINE_SUMSQ(float, bpfast_sumsq_f)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    !defined(BPFAST_NO_TARGET_CLONES)
#define BPFAST_RTARGETS __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define BPFAST_RTARGETS
#endif

/* max_k |x[k]| if every x[k] is finite, else +inf (NaN counts as not finite). 32
 * independent lanes (four AVX-512 vectors of doubles) so that no lane waits on the
 * latency of its own max and add; the result does not depend on the order. */
#define BPFAST_DEFINE_MAX_ABS(T, NAME)                                                  \
BPFAST_RTARGETS static double NAME(const T *x, ptrdiff_t n)                             \
{                                                                                       \
    T top[32], s[32], best = 0, sum = 0;                                                \
    ptrdiff_t k = 0, j;                                                                 \
    for (j = 0; j < 32; j++) {                                                          \
        top[j] = 0;                                                                     \
        s[j] = 0;                                                                       \
    }                                                                                   \
    for (; k + 32 <= n; k += 32) {                                                      \
        _Pragma("omp simd")                                                             \
        for (j = 0; j < 32; j++) {                                                      \
            T a = x[k + j] < 0 ? -x[k + j] : x[k + j];                                  \
            top[j] = a > top[j] ? a : top[j];                                           \
            s[j] += x[k + j] * (T)0;                                                    \
        }                                                                               \
    }                                                                                   \
    for (; k < n; k++) {                                                                \
        T a = x[k] < 0 ? -x[k] : x[k];                                                  \
        best = a > best ? a : best;                                                     \
        sum += x[k] * (T)0;                                                             \
    }                                                                                   \
    for (j = 0; j < 32; j++) {                                                          \
        best = top[j] > best ? top[j] : best;                                           \
        sum += s[j];                                                                    \
    }                                                                                   \
    return sum == 0 ? (double)best : HUGE_VAL;                                          \
}

BPFAST_DEFINE_MAX_ABS(double, bpfast_max_abs_d)
BPFAST_DEFINE_MAX_ABS(float, bpfast_max_abs_f)

#endif
