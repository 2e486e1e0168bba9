/* Sums of squares accumulated in double, split into independent partial sums (inline
 * in the compiled module, baseline instructions; the largest magnitude is max_abs.inc).
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
#include "platform.h"

/* Eight independent partial sums (vector lanes times unrolling) hide the add latency;
 * the pragma lets the compiler vectorise the lane loop. */
#define BPFAST_DEFINE_SUMSQ(T, NAME)                                                    \
static inline double NAME(const T *x, ptrdiff_t n)                                      \
{                                                                                       \
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0;                                   \
    ptrdiff_t k = 0, j;                                                                 \
    for (; k + 8 <= n; k += 8) {                                                        \
        BPFAST_OMP("omp simd")                                                          \
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

#endif
