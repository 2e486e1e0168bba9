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
#include <stdint.h>
#include <string.h>

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

/* max_k |x[k]| if every x[k] is finite, else +inf (NaN counts as not finite).
 *
 * Taken over bit patterns: with the sign bit cleared, a float's pattern read as a
 * (non-negative) integer orders exactly as its magnitude, and the patterns of inf and NaN
 * lie above every finite one (exponent all ones). So one AND and one integer max per
 * element give both the bound and the finiteness, where the floating-point form needed an
 * abs, a max and an add of x * 0 to catch NaN. 16 independent lanes
 * (two AVX-512 vectors of 64-bit patterns); the result does not depend on the order. */
#define BPFAST_DEFINE_MAX_ABS(T, I, NAME, ABS_BITS, INF_BITS)                           \
BPFAST_RTARGETS static double NAME(const T *x, ptrdiff_t n)                             \
{                                                                                       \
    I top[16], best = 0;                                                                \
    T value;                                                                            \
    ptrdiff_t k = 0, j;                                                                 \
    for (j = 0; j < 16; j++)                                                            \
        top[j] = 0;                                                                     \
    for (; k + 16 <= n; k += 16) {                                                      \
        _Pragma("omp simd")                                                             \
        for (j = 0; j < 16; j++) {                                                      \
            I u;                                                                        \
            memcpy(&u, x + k + j, sizeof u);                                            \
            u &= ABS_BITS;                                                              \
            top[j] = u > top[j] ? u : top[j];                                           \
        }                                                                               \
    }                                                                                   \
    for (; k < n; k++) {                                                                \
        I u;                                                                            \
        memcpy(&u, x + k, sizeof u);                                                    \
        u &= ABS_BITS;                                                                  \
        best = u > best ? u : best;                                                     \
    }                                                                                   \
    for (j = 0; j < 16; j++)                                                            \
        best = top[j] > best ? top[j] : best;                                           \
    if (best >= INF_BITS)                                                               \
        return HUGE_VAL;                                                                \
    memcpy(&value, &best, sizeof value);                                                \
    return (double)value;                                                               \
}

BPFAST_DEFINE_MAX_ABS(double, int64_t, bpfast_max_abs_d, INT64_MAX, 0x7ff0000000000000LL)
BPFAST_DEFINE_MAX_ABS(float, int32_t, bpfast_max_abs_f, INT32_MAX, 0x7f800000)

#endif
