/* Bias add with a piecewise-linear activation (identity, relu, leaky relu), and the
 * matching hidden-layer delta, over a whole batch block; the bias add alone (for the
 * activations _vmath.h computes), the hidden-layer delta of the activations whose
 * derivative comes from A (sigmoid, tanh, exp), and the output delta of the squared
 * error.
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

#include <math.h>
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

/* Activations whose derivative is a function of a = g(z) alone:
 *   sigmoid: a (1 - a);  tanh: 1 - a^2;  exp: a */
enum { BPFAST_FROM_A_SIGMOID = 0, BPFAST_FROM_A_TANH = 1, BPFAST_FROM_A_EXP = 2 };

#define BPFAST_GPRIME_FROM_A(kind, a)                                                   \
    ((kind) == BPFAST_FROM_A_SIGMOID ? (a) * (1 - (a))                                  \
     : (kind) == BPFAST_FROM_A_TANH ? 1 - (a) * (a) : (a))

/* The loops below test `kind` outside the inner loop (one copy per kind, each of which
 * vectorises); these expand to that. */
#define BPFAST_FOR_EACH_FROM_A(kind, BODY)                                              \
    do {                                                                                \
        if ((kind) == BPFAST_FROM_A_SIGMOID) {                                          \
            const int K = BPFAST_FROM_A_SIGMOID; BODY                                    \
        } else if ((kind) == BPFAST_FROM_A_TANH) {                                      \
            const int K = BPFAST_FROM_A_TANH; BODY                                       \
        } else {                                                                        \
            const int K = BPFAST_FROM_A_EXP; BODY                                        \
        }                                                                               \
    } while (0)

#define BPFAST_DEFINE_SMOOTH(T, BIAS, DELTA, MSE)                                       \
/* Z += 1 b^T (m x n) */                                                                \
BPFAST_PTARGETS static void BIAS(ptrdiff_t m, ptrdiff_t n, const T *restrict b,         \
                                 T *restrict Z)                                         \
{                                                                                       \
    ptrdiff_t i, j;                                                                     \
    for (i = 0; i < m; i++)                                                             \
        for (j = 0; j < n; j++)                                                         \
            Z[i * n + j] += b[j];                                                       \
}                                                                                       \
                                                                                        \
/* Z = dA (.) g'(A), g' from A (BPFAST_FROM_A_*); db = column sums of the new Z */      \
BPFAST_PTARGETS static void DELTA(int kind, ptrdiff_t m, ptrdiff_t n,                   \
                                  const T *restrict dA, const T *restrict A,            \
                                  T *restrict Z, T *restrict db)                        \
{                                                                                       \
    ptrdiff_t i, j;                                                                     \
    memset(db, 0, (size_t)n * sizeof(T));                                               \
    BPFAST_FOR_EACH_FROM_A(kind,                                                        \
        for (i = 0; i < m; i++) {                                                       \
            const T *restrict d = dA + i * n;                                           \
            const T *restrict a = A + i * n;                                            \
            T *restrict z = Z + i * n;                                                  \
            for (j = 0; j < n; j++) {                                                   \
                T v = d[j] * BPFAST_GPRIME_FROM_A(K, a[j]);                             \
                z[j] = v;                                                               \
                db[j] += v;                                                             \
            }                                                                           \
        });                                                                             \
}                                                                                       \
                                                                                        \
/* The squared error's output delta, for g' from A (BPFAST_FROM_A_*) or the identity    \
 * (kind -1): Z = w_c (A - Y) / denom (.) g', db = column sums of Z; returns            \
 * sum_c w_c sum_j (A - Y)^2 in double (w NULL: every w_c = 1). Columns keep their own  \
 * partial sums, in blocks of 64 columns, so that nothing waits on one running sum. */  \
BPFAST_PTARGETS static double MSE(int kind, ptrdiff_t m, ptrdiff_t n,                   \
                                  const T *restrict A, const T *restrict Y,             \
                                  const T *restrict w, T denom, T *restrict Z,          \
                                  T *restrict db)                                       \
{                                                                                       \
    double sq[64], total = 0;                                                           \
    ptrdiff_t i, j, j0, j1;                                                             \
    memset(db, 0, (size_t)n * sizeof(T));                                               \
    for (j0 = 0; j0 < n; j0 = j1) {                                                     \
        j1 = n - j0 < 64 ? n : j0 + 64;                                                 \
        for (j = j0; j < j1; j++)                                                       \
            sq[j - j0] = 0;                                                             \
        for (i = 0; i < m; i++) {                                                       \
            T wc = w != NULL ? w[i] : (T)1;                                             \
            const T *restrict a = A + i * n;                                            \
            const T *restrict y = Y + i * n;                                            \
            T *restrict z = Z + i * n;                                                  \
            if (kind < 0) {                                                             \
                for (j = j0; j < j1; j++) {                                             \
                    T r = a[j] - y[j];                                                  \
                    sq[j - j0] += (double)wc * ((double)r * r);                         \
                    z[j] = wc * r / denom;                                              \
                    db[j] += z[j];                                                      \
                }                                                                       \
            } else {                                                                    \
                BPFAST_FOR_EACH_FROM_A(kind,                                            \
                    for (j = j0; j < j1; j++) {                                         \
                        T r = a[j] - y[j];                                              \
                        sq[j - j0] += (double)wc * ((double)r * r);                     \
                        z[j] = wc * r / denom * BPFAST_GPRIME_FROM_A(K, a[j]);          \
                        db[j] += z[j];                                                  \
                    });                                                                 \
            }                                                                           \
        }                                                                               \
        for (j = j0; j < j1; j++)                                                       \
            total += sq[j - j0];                                                        \
    }                                                                                   \
    return total;                                                                       \
}

BPFAST_DEFINE_SMOOTH(double, bpfast_bias_add_d, bpfast_delta_from_a_d, bpfast_mse_delta_d)
BPFAST_DEFINE_SMOOTH(float, bpfast_bias_add_f, bpfast_delta_from_a_f, bpfast_mse_delta_f)

/* The cross-entropy loss over unweighted rows (N values of A and Y), in double:
 * -sum y log p, and for the binary loss also -sum (1 - y) log(1 - p), p = A clipped to
 * [eps, 1 - eps] as in _kernels.pyx's output_delta. One-hot entries (y = 1, and y = 0 for
 * the binary loss) multiply their factor p (1 - p) into one of 8 running products, each
 * renormalised to mantissa and exponent every 16 factors (each factor is at least eps,
 * so nothing underflows) and logged once at the end, instead of one log per value; other
 * labels take their logs one by one. */
/* p = a clipped to [eps, 1 - eps] (NaN gives eps), as output_delta clips it */
#define BPFAST_XENT_P(a, eps) ((a) > (eps) ? ((a) < 1 - (eps) ? (a) : 1 - (eps)) : (eps))

/* value k + j of BPFAST_DEFINE_XENT's loop: its one-hot factor into prod[j], and whether
 * its label is neither 0 nor 1 into `other` */
#define BPFAST_XENT_STEP(T)                                                             \
    do {                                                                                \
        T y_ = Y[k + j], p_ = BPFAST_XENT_P(A[k + j], eps);                             \
        prod[j] *= y_ == 1 ? (double)p_ : binary && y_ == 0 ? (double)(1 - p_) : 1.0;   \
        other |= y_ != 0 && y_ != 1;                                                    \
    } while (0)

#define BPFAST_DEFINE_XENT(T, NAME, LOG)                                                \
BPFAST_PTARGETS static double NAME(int binary, ptrdiff_t N, const T *restrict A,        \
                                   const T *restrict Y, T eps)                          \
{                                                                                       \
    double prod[8] = {1, 1, 1, 1, 1, 1, 1, 1}, soft = 0, total = 0;                     \
    long long exponent = 0;                                                             \
    ptrdiff_t k = 0, j;                                                                 \
    int rounds = 0, e;                                                                  \
    for (; k < N; k += 8) {                                                             \
        int other = 0;                                                                  \
        ptrdiff_t width = N - k < 8 ? N - k : 8;                                        \
        if (width == 8) {                                                               \
            _Pragma("omp simd reduction(|:other)")                                      \
            for (j = 0; j < 8; j++)                                                     \
                BPFAST_XENT_STEP(T);                                                    \
        } else {                                                                        \
            for (j = 0; j < width; j++)                                                 \
                BPFAST_XENT_STEP(T);                                                    \
        }                                                                               \
        if (other)  /* labels other than 0 and 1: their terms one by one */            \
            for (j = 0; j < width; j++) {                                               \
                T y = Y[k + j], p = BPFAST_XENT_P(A[k + j], eps);                       \
                if (y == 0 || y == 1)                                                   \
                    continue;                                                           \
                soft -= (double)y * LOG(p);                                             \
                if (binary)                                                             \
                    soft -= (double)(1 - y) * LOG(1 - p);                               \
            }                                                                           \
        if (++rounds == 16) {                                                           \
            for (j = 0; j < 8; j++) {                                                   \
                prod[j] = frexp(prod[j], &e);                                           \
                exponent += e;                                                          \
            }                                                                           \
            rounds = 0;                                                                 \
        }                                                                               \
    }                                                                                   \
    for (j = 0; j < 8; j++)                                                             \
        total += log(prod[j]);                                                          \
    return soft - (total + (double)exponent * 0.69314718055994530942);                  \
}

BPFAST_DEFINE_XENT(double, bpfast_xent_loss_d, log)
BPFAST_DEFINE_XENT(float, bpfast_xent_loss_f, logf)

#endif
