/* One optimizer step over an array of parameters, fused with the L2 term and the sum of
 * squares of the new values, in one pass.
 *
 * Per element, with g = G[k] + l2 P[k] (l2 = alpha / batch weight, 0 for biases):
 *   sgd:       P -= lr g
 *   momentum:  V = mu V - lr g;  P += V             (nesterov: P += mu V - lr g)
 *   adam:      M = b1 M + (1 - b1) g;  S = b2 S + (1 - b2) g^2;
 *              P += -lr_t M / (sqrt(S) + eps)
 * scikit-learn's update rules. Returns sum P^2 over the new values (in double): the L2
 * term of the next batch's loss, so that no separate pass over the weights is needed.
 *
 * The sum is split across vector lanes (the simd reduction pragma), which changes it at
 * rounding level only; the updates themselves are evaluated exactly as written. Vector
 * width is chosen at run time, as in _vmath.h.
 */
#ifndef BPFAST_UPDATE_H
#define BPFAST_UPDATE_H

#include <math.h>
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    !defined(BPFAST_NO_TARGET_CLONES)
#define BPFAST_UTARGETS __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define BPFAST_UTARGETS
#endif

/* The loops, always inlined: into the run-time-dispatched NAME below and into the fused
 * gradient-and-update kernel of _grad_update.h, so both evaluate the same expressions. */
#define BPFAST_DEFINE_UPDATE_BODY(T, NAME, SQRT)                                        \
static inline __attribute__((always_inline)) double NAME(                               \
    ptrdiff_t n, T *restrict P, const T *restrict G, T *restrict V, T *restrict S,      \
    int adam, T lr, T mu, int nesterov, T beta1, T beta2, T eps, T lr_t, T l2)          \
{                                                                                       \
    ptrdiff_t k;                                                                        \
    double s = 0;                                                                       \
    if (adam) {                                                                         \
        _Pragma("omp simd reduction(+:s)")                                              \
        for (k = 0; k < n; k++) {                                                       \
            T g = G[k] + l2 * P[k];                                                     \
            T m = beta1 * V[k] + (1 - beta1) * g;                                       \
            T v = beta2 * S[k] + (1 - beta2) * (g * g);                                 \
            T p = P[k] + (-lr_t * m / (SQRT(v) + eps));                                 \
            V[k] = m;                                                                   \
            S[k] = v;                                                                   \
            P[k] = p;                                                                   \
            s += (double)p * p;                                                         \
        }                                                                               \
    } else if (V == NULL) {                                                             \
        _Pragma("omp simd reduction(+:s)")                                              \
        for (k = 0; k < n; k++) {                                                       \
            T p = P[k] - lr * (G[k] + l2 * P[k]);                                       \
            P[k] = p;                                                                   \
            s += (double)p * p;                                                         \
        }                                                                               \
    } else if (nesterov) {                                                              \
        _Pragma("omp simd reduction(+:s)")                                              \
        for (k = 0; k < n; k++) {                                                       \
            T g = G[k] + l2 * P[k];                                                     \
            T v = mu * V[k] - lr * g;                                                   \
            T p = P[k] + (mu * v - lr * g);                                             \
            V[k] = v;                                                                   \
            P[k] = p;                                                                   \
            s += (double)p * p;                                                         \
        }                                                                               \
    } else {                                                                            \
        _Pragma("omp simd reduction(+:s)")                                              \
        for (k = 0; k < n; k++) {                                                       \
            T v = mu * V[k] - lr * (G[k] + l2 * P[k]);                                  \
            T p = P[k] + v;                                                             \
            V[k] = v;                                                                   \
            P[k] = p;                                                                   \
            s += (double)p * p;                                                         \
        }                                                                               \
    }                                                                                   \
    return s;                                                                           \
}

#define BPFAST_DEFINE_UPDATE(T, NAME, BODY)                                             \
BPFAST_UTARGETS static double NAME(                                                     \
    ptrdiff_t n, T *restrict P, const T *restrict G, T *restrict V, T *restrict S,      \
    int adam, T lr, T mu, int nesterov, T beta1, T beta2, T eps, T lr_t, T l2)          \
{                                                                                       \
    return BODY(n, P, G, V, S, adam, lr, mu, nesterov, beta1, beta2, eps, lr_t, l2);    \
}

BPFAST_DEFINE_UPDATE_BODY(double, bpfast_update_body_d, sqrt)
BPFAST_DEFINE_UPDATE_BODY(float, bpfast_update_body_f, sqrtf)
BPFAST_DEFINE_UPDATE(double, bpfast_update_d, bpfast_update_body_d)
BPFAST_DEFINE_UPDATE(float, bpfast_update_f, bpfast_update_body_f)

#endif
