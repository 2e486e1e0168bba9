/* Bias add with a piecewise-linear activation (identity, relu, leaky relu), and the
 * matching hidden-layer delta, over a whole batch block.
 *
 * Cython's own loops are compiled for the portable x86-64 baseline (two doubles per
 * instruction); these pick AVX-512 or AVX2 at run time, like _vmath.h. The formulas are
 * those of _activation_math.pxd, written branch-free so that they vectorise:
 *   forward:  Z += 1 b^T;  A = g(Z)
 *   delta:    Z = dA (.) g'(Z);  db = column sums of the new Z
 * with relu(z) = [z > 0] z, relu'(z) = [z > 0], leaky(z) = c z + (1 - c) 0.01 z and
 * leaky'(z) = c + (1 - c) 0.01 with c = [z > 0] (so NaN behaves as in the scalar code).
 */
#ifndef BPFAST_POINTWISE_H
#define BPFAST_POINTWISE_H

#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    !defined(BPFAST_NO_TARGET_CLONES)
#define BPFAST_PTARGETS __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define BPFAST_PTARGETS
#endif

enum { BPFAST_PWL_IDENTITY = 0, BPFAST_PWL_RELU = 1, BPFAST_PWL_LEAKY = 2 };

#define BPFAST_DEFINE_POINTWISE(T, FWD, DELTA)                                          \
BPFAST_PTARGETS static void FWD(int kind, ptrdiff_t m, ptrdiff_t n,                     \
                                const T *restrict b, T *Z, T *A)                        \
{                                                                                       \
    ptrdiff_t i, j;                                                                     \
    for (i = 0; i < m; i++) {                                                           \
        T *z = Z + i * n;  /* A may be Z itself: an in-place forward pass */            \
        T *a = A + i * n;                                                               \
        if (kind == BPFAST_PWL_RELU) {                                                  \
            for (j = 0; j < n; j++) {                                                   \
                T v = z[j] + b[j];                                                      \
                z[j] = v;                                                               \
                a[j] = v > 0 ? v : (T)0;                                                \
            }                                                                           \
        } else if (kind == BPFAST_PWL_LEAKY) {                                          \
            for (j = 0; j < n; j++) {                                                   \
                T v = z[j] + b[j];                                                      \
                T c = v > 0 ? (T)1 : (T)0;                                              \
                z[j] = v;                                                               \
                a[j] = c * v + (1 - c) * ((T)0.01 * v);                                 \
            }                                                                           \
        } else {                                                                        \
            for (j = 0; j < n; j++) {                                                   \
                T v = z[j] + b[j];                                                      \
                z[j] = v;                                                               \
                a[j] = v;                                                               \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
BPFAST_PTARGETS static void DELTA(int kind, ptrdiff_t m, ptrdiff_t n,                   \
                                  const T *restrict dA, T *restrict Z, T *restrict db)  \
{                                                                                       \
    ptrdiff_t i, j;                                                                     \
    memset(db, 0, (size_t)n * sizeof(T));                                               \
    for (i = 0; i < m; i++) {                                                           \
        const T *restrict d = dA + i * n;                                               \
        T *restrict z = Z + i * n;                                                      \
        if (kind == BPFAST_PWL_RELU) {                                                  \
            for (j = 0; j < n; j++) {                                                   \
                T v = d[j] * (z[j] > 0 ? (T)1 : (T)0);                                  \
                z[j] = v;                                                               \
                db[j] += v;                                                             \
            }                                                                           \
        } else if (kind == BPFAST_PWL_LEAKY) {                                          \
            for (j = 0; j < n; j++) {                                                   \
                T c = z[j] > 0 ? (T)1 : (T)0;                                           \
                T v = d[j] * (c + (1 - c) * (T)0.01);                                   \
                z[j] = v;                                                               \
                db[j] += v;                                                             \
            }                                                                           \
        } else {                                                                        \
            for (j = 0; j < n; j++) {                                                   \
                z[j] = d[j];                                                            \
                db[j] += d[j];                                                          \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
}

BPFAST_DEFINE_POINTWISE(double, bpfast_bias_pwl_d, bpfast_delta_pwl_d)
BPFAST_DEFINE_POINTWISE(float, bpfast_bias_pwl_f, bpfast_delta_pwl_f)

#endif
