/* Softmax over narrow rows (a classifier's output layer), vectorised across rows.
 *
 * For A = softmax(Z + 1 b^T) with, say, ten classes, the row-by-row loops are chains of
 * dependent operations ten long (the running maximum, the sum) and vectors of ten
 * entries fit no vector width. Here a block of up to 32 rows is transposed into a small
 * buffer, so that every step -- maximum, exponential, sum, division -- runs across the
 * rows, 32 independent lanes, and transposed back. The same operations in the same
 * order per row as bias_activate's row loops, exponentials by _vmath.h; the compiler
 * may fuse a multiply-add of the exponential differently in this loop, so a result can
 * differ from those loops' by an ulp (seen only in results below 1e-19). For rows of
 * at most BPFAST_SOFTMAX_MAX_N entries (the caller checks).
 */
#ifndef BPFAST_SOFTMAX_H
#define BPFAST_SOFTMAX_H

#include <stddef.h>
#include "_vmath.h"

#define BPFAST_SOFTMAX_MAX_N 16
#define BPFAST_SOFTMAX_ROWS 32

#define BPFAST_DEFINE_SOFTMAX(T, NAME, EXP)                                             \
BPFAST_VTARGETS static void NAME(ptrdiff_t m, ptrdiff_t n, const T *restrict b,         \
                                 T *restrict Z, T *restrict A)                          \
{                                                                                       \
    enum { R = BPFAST_SOFTMAX_ROWS };                                                   \
    T t[BPFAST_SOFTMAX_MAX_N * BPFAST_SOFTMAX_ROWS], top[R], total[R];                  \
    ptrdiff_t i0, i, j, c;                                                              \
    for (i0 = 0; i0 < m; i0 += R) {                                                     \
        c = m - i0 < R ? m - i0 : R;                                                    \
        for (i = 0; i < c; i++) {  /* z += b, kept in Z and transposed into t */        \
            T *z = Z + (i0 + i) * n;                                                    \
            for (j = 0; j < n; j++) {                                                   \
                T v = z[j] + b[j];                                                      \
                z[j] = v;                                                               \
                t[j * R + i] = v;                                                       \
            }                                                                           \
        }                                                                               \
        for (i = 0; i < c; i++)                                                         \
            top[i] = t[i];                                                              \
        for (j = 1; j < n; j++)                                                         \
            for (i = 0; i < c; i++)                                                     \
                top[i] = t[j * R + i] > top[i] ? t[j * R + i] : top[i];                 \
        for (j = 0; j < n; j++)                                                         \
            for (i = 0; i < c; i++)                                                     \
                t[j * R + i] = EXP(t[j * R + i] - top[i]);                              \
        for (i = 0; i < c; i++)                                                         \
            total[i] = 0;                                                               \
        for (j = 0; j < n; j++)                                                         \
            for (i = 0; i < c; i++)                                                     \
                total[i] = total[i] + t[j * R + i];                                     \
        for (j = 0; j < n; j++)                                                         \
            for (i = 0; i < c; i++)                                                     \
                t[j * R + i] = t[j * R + i] / total[i];                                 \
        for (i = 0; i < c; i++)                                                         \
            for (j = 0; j < n; j++)                                                     \
                A[(i0 + i) * n + j] = t[j * R + i];                                     \
    }                                                                                   \
}

BPFAST_DEFINE_SOFTMAX(double, bpfast_softmax_rows_d, bp_exp_d)
BPFAST_DEFINE_SOFTMAX(float, bpfast_softmax_rows_f, bp_exp_f)

#endif
