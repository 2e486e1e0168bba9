/* Row-major GEMM for small matrices, as plain loops the compiler vectorises.
 *
 * C = alpha op(A) op(B) + beta C, C is m x n, op(A) m x k, op(B) k x n; lda, ldb, ldc are
 * row strides. For small products a BLAS call costs more than its arithmetic. The loop
 * orders keep the innermost loop contiguous: the "axpy" form (C row += a * B row) for
 * op(B) = B, and a dot product with an explicit SIMD reduction for op(B) = B^T. The
 * reduction pragma lets the compiler reorder that one sum (results change at rounding
 * level only); nothing else is reassociated (no -ffast-math).
 *
 * C never overlaps A or B (restrict), and that matters for more than speed: without it the
 * compiler versions each loop on a run-time overlap test, and its scalar fallback does not round
 * like the vector loop (it multiplies and adds separately). Which one ran then depended on
 * where the allocator happened to put the buffers: two identical fits could differ in
 * the last bits when C sat right next to B (about one full test run in five).
 */
#ifndef BPFAST_SMALL_GEMM_H
#define BPFAST_SMALL_GEMM_H

#include <stddef.h>

#if defined(_OPENMP) || defined(__GNUC__) || defined(__clang__)
#define BPFAST_SIMD_REDUCTION _Pragma("omp simd reduction(+:s)")
#else
#define BPFAST_SIMD_REDUCTION
#endif

/* Wider vectors where the processor has them, chosen at run time (GCC/clang function
 * multi-versioning): the default build stays portable to any x86-64. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    !defined(BPFAST_NO_TARGET_CLONES)
#define BPFAST_TARGETS __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define BPFAST_TARGETS
#endif

#define BPFAST_DEFINE_SMALL_GEMM(T, NAME)                                               \
BPFAST_TARGETS static void NAME(int trans_a, int trans_b, int m, int n, int k, T alpha,        \
                        const T *restrict a, int lda, const T *restrict b, int ldb,    \
                        T beta, T *restrict c, int ldc)                                \
{                                                                                      \
    ptrdiff_t i, j, p;                                                                 \
    if (trans_b && !trans_a) {                                                         \
        /* C[i,j] = alpha sum_p A[i,p] B[j,p] + beta C[i,j]: dot products */           \
        for (i = 0; i < m; i++) {                                                      \
            const T *ai = a + i * lda;                                                 \
            T *ci = c + i * ldc;                                                       \
            for (j = 0; j < n; j++) {                                                  \
                const T *bj = b + j * ldb;                                             \
                T s = 0;                                                               \
                BPFAST_SIMD_REDUCTION                                                  \
                for (p = 0; p < k; p++)                                                \
                    s += ai[p] * bj[p];                                                \
                ci[j] = (beta == 0) ? alpha * s : alpha * s + beta * ci[j];            \
            }                                                                          \
        }                                                                              \
        return;                                                                        \
    }                                                                                  \
    /* the other forms accumulate rows of B into rows of C */                          \
    for (i = 0; i < m; i++) {                                                          \
        T *ci = c + i * ldc;                                                           \
        if (beta == 0)                                                                 \
            for (j = 0; j < n; j++) ci[j] = 0;                                         \
        else if (beta != 1)                                                            \
            for (j = 0; j < n; j++) ci[j] *= beta;                                     \
    }                                                                                  \
    if (!trans_b && !trans_a) {                                                        \
        /* C[i,:] += alpha A[i,p] B[p,:] */                                            \
        for (i = 0; i < m; i++) {                                                      \
            T *ci = c + i * ldc;                                                       \
            for (p = 0; p < k; p++) {                                                  \
                const T *bp = b + p * ldb;                                             \
                T s = alpha * a[i * lda + p];                                          \
                for (j = 0; j < n; j++) ci[j] += s * bp[j];                            \
            }                                                                          \
        }                                                                              \
    } else if (trans_a && !trans_b) {                                                  \
        /* C[i,:] += alpha A[p,i] B[p,:] */                                            \
        for (p = 0; p < k; p++) {                                                      \
            const T *ap = a + p * lda;                                                 \
            const T *bp = b + p * ldb;                                                 \
            for (i = 0; i < m; i++) {                                                  \
                T *ci = c + i * ldc;                                                   \
                T s = alpha * ap[i];                                                   \
                for (j = 0; j < n; j++) ci[j] += s * bp[j];                            \
            }                                                                          \
        }                                                                              \
    } else {                                                                           \
        /* C[i,j] += alpha sum_p A[p,i] B[j,p] (not used by bpfast's kernels) */       \
        for (i = 0; i < m; i++) {                                                      \
            T *ci = c + i * ldc;                                                       \
            for (j = 0; j < n; j++) {                                                  \
                T s = 0;                                                               \
                for (p = 0; p < k; p++) s += a[p * lda + i] * b[j * ldb + p];          \
                ci[j] += alpha * s;                                                    \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}

BPFAST_DEFINE_SMALL_GEMM(double, bpfast_small_dgemm)
BPFAST_DEFINE_SMALL_GEMM(float, bpfast_small_sgemm)

#endif
