/* A layer's weight gradient and its optimizer step in one pass, for small layers.
 *
 * G = A^T B (R x C; A is m x R, B is m x C, row-major with row strides lda, ldb) is
 * computed a register tile at a time: 4 rows of G by 4 vectors of columns (4 x 32 for
 * double, 4 x 64 for float). Each finished tile goes straight through the optimizer step
 * of _update.h -- the same expressions as bpfast_update_*, on vectors -- on the
 * matching block of the parameters P (R x C, row stride ldp) and their optimizer state V,
 * S. So G is never written to memory and read back: for the small layers of a
 * mini-batch step (a 64 x 64 layer and a batch of 32) the gradient array and the
 * separate update pass cost more than the arithmetic around them.
 *
 * Each G entry is the sum over p = 0..m-1 taken in order, one multiply-add per term; so
 * a result depends only on the inputs, never on where the buffers sit. It rounds
 * differently from a BLAS product (which sums in blocks), at the level of rounding only.
 *
 * Tiles and targets: _tiles.h. Where the kernel is unavailable the caller keeps the
 * BLAS product and the separate update pass.
 */
#ifndef BPFAST_GRAD_UPDATE_H
#define BPFAST_GRAD_UPDATE_H

#include <stddef.h>
#include <string.h>
#include "_tiles.h"
#include "_update.h"

#if BPFAST_HAVE_TILES

typedef float bpfast_gu_vf_half __attribute__((vector_size(32)));

BPFAST_TILE_TARGET static inline __attribute__((always_inline)) bpfast_tile_vd
bpfast_gu_sqrt_d(bpfast_tile_vd x)
{
    return (bpfast_tile_vd)_mm512_sqrt_pd((__m512d)x);
}

BPFAST_TILE_TARGET static inline __attribute__((always_inline)) bpfast_tile_vf
bpfast_gu_sqrt_f(bpfast_tile_vf x)
{
    return (bpfast_tile_vf)_mm512_sqrt_ps((__m512)x);
}

/* *ss += p^2, lane-wise in double (the sums of squares are taken in double) */
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void bpfast_gu_sq_d(
    bpfast_tile_vd *ss, const bpfast_tile_vd *p)
{
    *ss += *p * *p;
}

BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void bpfast_gu_sq_f(
    bpfast_tile_vd *ss, const bpfast_tile_vf *p)
{
    bpfast_gu_vf_half half;
    bpfast_tile_vd wide;
    memcpy(&half, p, sizeof half);
    wide = __builtin_convertvector(half, bpfast_tile_vd);
    *ss += wide * wide;
    memcpy(&half, (const char *)p + sizeof half, sizeof half);
    wide = __builtin_convertvector(half, bpfast_tile_vd);
    *ss += wide * wide;
}

/* NAME(m, R, C, A, lda, arows, B, ldb, P, ldp, V, S, <the optimizer arguments of
 * _update.h>) (V and S: row stride ldp too):
 * G = A^T B, then P, V, S stepped with G as in BODY; returns sum P^2 of the new
 * values. Row p of A is A + p lda, or arows[p] when arows is not NULL (the rows of a
 * shuffled batch where they sit). */
#define BPFAST_DEFINE_GRAD_UPDATE(T, NAME, VEC, SQ, VSQRT, BODY)                        \
typedef VEC NAME##_vec;                                                                 \
                                                                                        \
/* BODY's step on one vector of entries, the gradient g in registers; the sum of the    \
 * new P^2 is kept lane-wise in *ss */                                                  \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_step(       \
    T *restrict P, NAME##_vec g, T *restrict V, T *restrict S, int adam, T lr, T mu,    \
    int nesterov, T beta1, T beta2, T eps, T lr_t, T l2, bpfast_tile_vd *ss)            \
{                                                                                       \
    NAME##_vec p, v, sv;                                                                \
    memcpy(&p, P, sizeof p);                                                            \
    if (adam) {                                                                         \
        memcpy(&v, V, sizeof v);                                                        \
        memcpy(&sv, S, sizeof sv);                                                      \
        g = g + l2 * p;                                                                 \
        v = beta1 * v + (1 - beta1) * g;                                                \
        sv = beta2 * sv + (1 - beta2) * (g * g);                                        \
        p = p + (-lr_t * v / (VSQRT(sv) + eps));                                        \
        memcpy(V, &v, sizeof v);                                                        \
        memcpy(S, &sv, sizeof sv);                                                      \
    } else if (V == NULL) {                                                             \
        p = p - lr * (g + l2 * p);                                                      \
    } else {                                                                            \
        memcpy(&v, V, sizeof v);                                                        \
        g = g + l2 * p;                                                                 \
        v = mu * v - lr * g;                                                            \
        p = nesterov ? p + (mu * v - lr * g) : p + v;                                   \
        memcpy(V, &v, sizeof v);                                                        \
    }                                                                                   \
    memcpy(P, &p, sizeof p);                                                            \
    SQ(ss, &p);                                                                         \
}                                                                                       \
                                                                                        \
/* rows r0..r0+nr-1, nv vectors of columns from c0: G's tile = sum_p a_p^T b_p, then    \
 * the step on P's block (ld = ldp). Row p of A is arows[p] + r0 (indirect) or        \
 * a + p lda                                                                            \
 * (a = A + r0). */                                                                     \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_tile(       \
    const int nr, const int nv, const int indirect, ptrdiff_t m, const T *restrict a,   \
    ptrdiff_t lda, const T *const *arows, int r0, const T *restrict b, ptrdiff_t ldb,   \
    ptrdiff_t ldp, T *restrict P, T *restrict V,                                        \
    T *restrict S, int adam, T lr, T mu, int nesterov, T beta1, T beta2, T eps,         \
    T lr_t, T l2, bpfast_tile_vd *ss)                                                   \
{                                                                                       \
    const int VL = (int)(64 / sizeof(T));                                               \
    NAME##_vec acc[BPFAST_TILE_NR][BPFAST_TILE_NV];                                     \
    NAME##_vec bv[BPFAST_TILE_NV];                                                      \
    ptrdiff_t p;                                                                        \
    int r, k;                                                                           \
    _Pragma("GCC unroll 4")                                                             \
    for (r = 0; r < nr; r++)                                                            \
        _Pragma("GCC unroll 4")                                                         \
        for (k = 0; k < nv; k++)                                                        \
            acc[r][k] = (NAME##_vec){0};                                                \
    for (p = 0; p < m; p++) {                                                           \
        const T *ap = indirect ? arows[p] + r0 : a + p * lda;                           \
        const T *bp = b + p * ldb;                                                      \
        _Pragma("GCC unroll 4")                                                         \
        for (k = 0; k < nv; k++)                                                        \
            memcpy(&bv[k], bp + k * VL, sizeof(NAME##_vec));                            \
        _Pragma("GCC unroll 4")                                                         \
        for (r = 0; r < nr; r++) {                                                      \
            const T x = ap[r];                                                          \
            _Pragma("GCC unroll 4")                                                     \
            for (k = 0; k < nv; k++)                                                    \
                acc[r][k] += x * bv[k];                                                 \
        }                                                                               \
    }                                                                                   \
    _Pragma("GCC unroll 4")                                                             \
    for (r = 0; r < nr; r++) {                                                          \
        _Pragma("GCC unroll 4")                                                         \
        for (k = 0; k < nv; k++) {                                                      \
            ptrdiff_t at = r * ldp + k * VL;                                            \
            NAME##_step(P + at, acc[r][k], V ? V + at : NULL, S ? S + at : NULL, adam,  \
                        lr, mu, nesterov, beta1, beta2, eps, lr_t, l2, ss);             \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) double NAME##_run(      \
    const int indirect, int m, int R, int C, const T *restrict A, ptrdiff_t lda,        \
    const T *const *arows, const T *restrict B, ptrdiff_t ldb, T *restrict P,           \
    ptrdiff_t ldp, T *restrict V, T *restrict S, int adam, T lr, T mu, int nesterov,    \
    T beta1, T beta2,                                                                   \
    T eps, T lr_t, T l2)                                                                \
{                                                                                       \
    enum { VL = 64 / sizeof(T), CT = BPFAST_TILE_NV * (64 / sizeof(T)) };               \
    T g[CT] __attribute__((aligned(64)));                                               \
    double s = 0;                                                                       \
    bpfast_tile_vd ss = {0};                                                            \
    int r0, c0, nr, r, c, width;                                                        \
    ptrdiff_t p;                                                                        \
    for (r0 = 0; r0 < R; r0 += nr) {                                                    \
        nr = R - r0 >= BPFAST_TILE_NR ? BPFAST_TILE_NR : 1;                             \
        for (c0 = 0; c0 < C; c0 += width) {                                             \
            const T *a = indirect ? NULL : A + r0;                                      \
            const T *b = B + c0;                                                        \
            ptrdiff_t at = (ptrdiff_t)r0 * ldp + c0;                                    \
            T *Pt = P + at, *Vt = V ? V + at : NULL, *St = S ? S + at : NULL;           \
            width = C - c0 >= CT ? CT : C - c0 >= VL ? VL : C - c0;                     \
            if (width == CT && nr == BPFAST_TILE_NR)                                    \
                NAME##_tile(BPFAST_TILE_NR, BPFAST_TILE_NV, indirect, m, a, lda, arows, \
                            r0, b, ldb, ldp, Pt, Vt, St, adam, lr, mu, nesterov, beta1, \
                            beta2, eps, lr_t, l2, &ss);                                 \
            else if (width == CT)                                                       \
                NAME##_tile(1, BPFAST_TILE_NV, indirect, m, a, lda, arows, r0, b, ldb,  \
                            ldp, Pt, Vt, St, adam, lr, mu, nesterov, beta1, beta2, eps, \
                            lr_t, l2, &ss);                                             \
            else if (width == VL && nr == BPFAST_TILE_NR)                               \
                NAME##_tile(BPFAST_TILE_NR, 1, indirect, m, a, lda, arows, r0, b, ldb,  \
                            ldp, Pt, Vt, St, adam, lr, mu, nesterov, beta1, beta2, eps, \
                            lr_t, l2, &ss);                                             \
            else if (width == VL)                                                       \
                NAME##_tile(1, 1, indirect, m, a, lda, arows, r0, b, ldb, ldp, Pt, Vt,  \
                            St, adam, lr, mu, nesterov, beta1, beta2, eps, lr_t, l2,    \
                            &ss);                                                       \
            else                                                                        \
                /* fewer columns than a vector: sums in the same order, then BODY */    \
                for (r = 0; r < nr; r++) {                                              \
                    for (c = 0; c < width; c++) {                                       \
                        T acc = 0;                                                      \
                        for (p = 0; p < m; p++)                                         \
                            acc += (indirect ? arows[p] + r0 : a + p * lda)[r]          \
                                   * b[p * ldb + c];                                    \
                        g[c] = acc;                                                     \
                    }                                                                   \
                    s += BODY(width, Pt + r * ldp, g, Vt ? Vt + r * ldp : NULL,         \
                              St ? St + r * ldp : NULL, adam, lr, mu, nesterov, beta1,  \
                              beta2, eps, lr_t, l2);                                    \
                }                                                                       \
        }                                                                               \
    }                                                                                   \
    for (r = 0; r < 8; r++)                                                             \
        s += ss[r];                                                                     \
    return s;                                                                           \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static double NAME(                                                  \
    int m, int R, int C, const T *restrict A, ptrdiff_t lda, const T *const *arows,     \
    const T *restrict B, ptrdiff_t ldb, T *restrict P, ptrdiff_t ldp, T *restrict V,    \
    T *restrict S, int adam, T lr, T mu, int nesterov, T beta1, T beta2, T eps,         \
    T lr_t, T l2)                                                                       \
{                                                                                       \
    if (arows != NULL)                                                                  \
        return NAME##_run(1, m, R, C, NULL, 0, arows, B, ldb, P, ldp, V, S, adam, lr,   \
                          mu, nesterov, beta1, beta2, eps, lr_t, l2);                   \
    return NAME##_run(0, m, R, C, A, lda, NULL, B, ldb, P, ldp, V, S, adam, lr, mu,     \
                      nesterov, beta1, beta2, eps, lr_t, l2);                           \
}

BPFAST_DEFINE_GRAD_UPDATE(double, bpfast_grad_update_d, bpfast_tile_vd, bpfast_gu_sq_d,
                          bpfast_gu_sqrt_d, bpfast_update_body_d)
BPFAST_DEFINE_GRAD_UPDATE(float, bpfast_grad_update_f, bpfast_tile_vf, bpfast_gu_sq_f,
                          bpfast_gu_sqrt_f, bpfast_update_body_f)

#else /* not compiled: never called, bpfast_tiles_available() is 0 */

#define BPFAST_DEFINE_GRAD_UPDATE_STUB(T, NAME)                                         \
static double NAME(int m, int R, int C, const T *A, ptrdiff_t lda,                       \
                   const T *const *arows, const T *B, ptrdiff_t ldb, T *P,              \
                   ptrdiff_t ldp, T *V, T *S,                                           \
                   int adam, T lr, T mu, int nesterov,                                  \
                   T beta1, T beta2, T eps, T lr_t, T l2)                               \
{                                                                                       \
    return 0;                                                                           \
}
BPFAST_DEFINE_GRAD_UPDATE_STUB(double, bpfast_grad_update_d)
BPFAST_DEFINE_GRAD_UPDATE_STUB(float, bpfast_grad_update_f)

#endif

#endif
