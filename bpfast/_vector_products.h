/* The products of one-row batches (per-sample SGD), in AVX-512 registers.
 *
 * With a batch of one row every product of back-propagation is a vector against a matrix:
 *   vecmat:  c = alpha a B + beta c          (a: 1 x k, B: k x n, rows of B contiguous)
 *   matvec:  c = alpha a B^T + beta c        (B: n x k; one dot product per row of B)
 *   rank1:   C = alpha x^T y + beta C        (x: 1 x m, y: 1 x n; C: m x n)
 * (the forward product of a transposed or a plain layer, dA = dZ W, and the weight
 * update). OpenBLAS takes these through its small-matrix GEMM kernels, whose set-up per
 * call is most of the time at these sizes: a 64-32-10 network's per-sample step spent
 * about 70% of its time in them. Here each is one pass: the output row (vecmat) or the
 * row of y (rank1) is held in up to four 64-byte registers while the other operand
 * streams past, tails through masked loads and stores. beta = 0 never reads c.
 *
 * Compiled for AVX-512F through a function attribute (the build stays portable); the
 * caller (gemm in _blas.pxd) takes them only where bpfast_tiles_available() says the
 * processor runs them, and for products of at most BPFAST_VECTOR_PRODUCT_LIMIT
 * multiply-adds, where OpenBLAS's threads cannot pay off.
 */
#ifndef BPFAST_VECTOR_PRODUCTS_H
#define BPFAST_VECTOR_PRODUCTS_H

#include <stddef.h>
#include "_tiles.h"

#define BPFAST_VECTOR_PRODUCT_LIMIT 65536

/* 0 sends one-row products back to the general path (tests compare the two). */
static int bpfast_vector_products_allowed = 1;

/* Whether gemm takes the functions below: AVX-512F present (checked once), and allowed. */
static inline int bpfast_vector_products(void)
{
    static int has = -1;
    if (has < 0)
        has = bpfast_tiles_available();
    return has && bpfast_vector_products_allowed;
}

#if BPFAST_HAVE_TILES

/* One vector of a rank-1 row update: c = s y + beta c (MODE as below); WHOLE: plain
 * load and store, else under mask mt. Expanded inside BPFAST_DEFINE_VECTOR_PRODUCTS. */
#define BPFAST_RANK1_STEP(WHOLE, cp, yv, s, be, mode, mt, LOADU, MLOAD, STOREU, MSTORE,  \
                          FMADD, MUL)                                                   \
    do {                                                                                \
        if (WHOLE) {                                                                    \
            if ((mode) == 1) STOREU(cp, FMADD(s, yv, LOADU(cp)));                       \
            else if ((mode) == 0) STOREU(cp, MUL(s, yv));                               \
            else STOREU(cp, FMADD(s, yv, MUL(be, LOADU(cp))));                          \
        } else {                                                                        \
            if ((mode) == 1) MSTORE(cp, mt, FMADD(s, yv, MLOAD(mt, cp)));               \
            else if ((mode) == 0) MSTORE(cp, mt, MUL(s, yv));                           \
            else MSTORE(cp, mt, FMADD(s, yv, MUL(be, MLOAD(mt, cp))));                  \
        }                                                                               \
    } while (0)

/* calls BLOCK with constant nv (1..4), mode (0..2) and full (0, 1: the last vector is
 * whole), so that every copy is straight-line code */
#define BPFAST_DISPATCH_FULL(BLOCK, nv, mode, full, ...)                                 \
    do {                                                                                \
        if (full) BLOCK(nv, mode, 1, __VA_ARGS__);                                      \
        else BLOCK(nv, mode, 0, __VA_ARGS__);                                           \
    } while (0)
#define BPFAST_DISPATCH_MODE(BLOCK, nv, mode, full, ...)                                 \
    do {                                                                                \
        if ((mode) == 1) BPFAST_DISPATCH_FULL(BLOCK, nv, 1, full, __VA_ARGS__);          \
        else if ((mode) == 0) BPFAST_DISPATCH_FULL(BLOCK, nv, 0, full, __VA_ARGS__);     \
        else BPFAST_DISPATCH_FULL(BLOCK, nv, 2, full, __VA_ARGS__);                      \
    } while (0)
#define BPFAST_DISPATCH_NV_MODE(BLOCK, nv, mode, full, ...)                              \
    do {                                                                                \
        switch (nv) {                                                                   \
        case 1: BPFAST_DISPATCH_MODE(BLOCK, 1, mode, full, __VA_ARGS__); break;         \
        case 2: BPFAST_DISPATCH_MODE(BLOCK, 2, mode, full, __VA_ARGS__); break;         \
        case 3: BPFAST_DISPATCH_MODE(BLOCK, 3, mode, full, __VA_ARGS__); break;         \
        default: BPFAST_DISPATCH_MODE(BLOCK, 4, mode, full, __VA_ARGS__); break;        \
        }                                                                               \
    } while (0)

/* NAME_vecmat / NAME_matvec / NAME_rank1 for one element type: W lanes per vector */
#define BPFAST_DEFINE_VECTOR_PRODUCTS(T, NAME, V, W, MASK, SET1, ZERO, LOADU, MLOAD,    \
                                      STOREU, MSTORE, FMADD, MUL, REDUCE)               \
BPFAST_TILE_TARGET static inline MASK NAME##_mask(ptrdiff_t left)                       \
{                                                                                       \
    return left <= 0 ? (MASK)0 : left >= W ? (MASK)~0u : (MASK)((1u << left) - 1u);    \
}                                                                                       \
                                                                                        \
/* vecmat over NV (1..4) vectors of columns from j0, the last under mask mt (whole     \
 * vectors before it): the accumulators stay in registers for all k rows */             \
BPFAST_TILE_TARGET static inline void NAME##_vecmat_block(                              \
    int nv, MASK mt, int k, T alpha, const T *restrict a, const T *restrict B,          \
    int ldb, T beta, T *restrict c)                                                     \
{                                                                                       \
    ptrdiff_t p;                                                                        \
    V s0 = ZERO(), s1 = ZERO(), s2 = ZERO(), s3 = ZERO();                               \
    MASK f = (MASK)~0u;                                                                 \
    MASK k0 = nv == 1 ? mt : f, k1 = nv == 2 ? mt : f, k2 = nv == 3 ? mt : f;           \
    for (p = 0; p < k; p++) {                                                           \
        const T *bp = B + p * (ptrdiff_t)ldb;                                           \
        V ap = SET1(a[p]);                                                              \
        if (nv == 1) {                                                                  \
            s0 = FMADD(ap, MLOAD(mt, bp), s0);                                          \
        } else if (nv == 2) {                                                           \
            s0 = FMADD(ap, LOADU(bp), s0);                                              \
            s1 = FMADD(ap, MLOAD(mt, bp + W), s1);                                      \
        } else if (nv == 3) {                                                           \
            s0 = FMADD(ap, LOADU(bp), s0);                                              \
            s1 = FMADD(ap, LOADU(bp + W), s1);                                          \
            s2 = FMADD(ap, MLOAD(mt, bp + 2 * W), s2);                                  \
        } else {                                                                        \
            s0 = FMADD(ap, LOADU(bp), s0);                                              \
            s1 = FMADD(ap, LOADU(bp + W), s1);                                          \
            s2 = FMADD(ap, LOADU(bp + 2 * W), s2);                                      \
            s3 = FMADD(ap, MLOAD(mt, bp + 3 * W), s3);                                  \
        }                                                                               \
    }                                                                                   \
    V al = SET1(alpha), be = SET1(beta);                                                \
    V r[4] = {MUL(al, s0), MUL(al, s1), MUL(al, s2), MUL(al, s3)};                      \
    MASK km[4] = {k0, k1, k2, mt};                                                      \
    int v;                                                                              \
    for (v = 0; v < nv; v++) {                                                          \
        T *cv = c + v * W;                                                              \
        if (beta != 0)                                                                  \
            r[v] = FMADD(al, v == 0 ? s0 : v == 1 ? s1 : v == 2 ? s2 : s3,              \
                         MUL(be, MLOAD(km[v], cv)));                                    \
        if (km[v] == f)                                                                 \
            STOREU(cv, r[v]);                                                           \
        else                                                                            \
            MSTORE(cv, km[v], r[v]);                                                    \
    }                                                                                   \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static void NAME##_vecmat(int n, int k, T alpha,                     \
                                             const T *restrict a,                       \
                                             const T *restrict B, int ldb, T beta,      \
                                             T *restrict c)                             \
{                                                                                       \
    ptrdiff_t j0;                                                                       \
    for (j0 = 0; j0 < n; j0 += 4 * W) {                                                 \
        ptrdiff_t left = n - j0;                                                        \
        int nv = left >= 4 * W ? 4 : (int)((left + W - 1) / W);                         \
        MASK mt = NAME##_mask(left - (nv - 1) * W);                                     \
        /* constant nv in each call, so that each copy keeps only its live vectors */   \
        if (nv == 4)                                                                    \
            NAME##_vecmat_block(4, mt, k, alpha, a, B + j0, ldb, beta, c + j0);         \
        else if (nv == 3)                                                               \
            NAME##_vecmat_block(3, mt, k, alpha, a, B + j0, ldb, beta, c + j0);         \
        else if (nv == 2)                                                               \
            NAME##_vecmat_block(2, mt, k, alpha, a, B + j0, ldb, beta, c + j0);         \
        else                                                                            \
            NAME##_vecmat_block(1, mt, k, alpha, a, B + j0, ldb, beta, c + j0);         \
    }                                                                                   \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static void NAME##_matvec(int n, int k, T alpha,                     \
                                             const T *restrict a,                       \
                                             const T *restrict B, int ldb, T beta,      \
                                             T *restrict c)                             \
{                                                                                       \
    ptrdiff_t j, p;                                                                     \
    for (j = 0; j < n; j++) {                                                           \
        const T *bj = B + j * (ptrdiff_t)ldb;                                           \
        V s0 = ZERO(), s1 = ZERO();                                                     \
        for (p = 0; p + 2 * W <= k; p += 2 * W) {                                       \
            s0 = FMADD(LOADU(a + p), LOADU(bj + p), s0);                                \
            s1 = FMADD(LOADU(a + p + W), LOADU(bj + p + W), s1);                        \
        }                                                                               \
        for (; p < k; p += W) {                                                         \
            MASK mk = NAME##_mask(k - p);                                               \
            s0 = FMADD(MLOAD(mk, a + p), MLOAD(mk, bj + p), s0);                        \
        }                                                                               \
        T s = REDUCE(s0) + REDUCE(s1);                                                  \
        c[j] = beta == 0 ? alpha * s : alpha * s + beta * c[j];                         \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* rank1 over rows of NV (1..4) vectors, the last under mask mt, y in registers; MODE   \
 * 1: beta = 1, 0: beta = 0, 2: any other beta; full: mt covers the whole vector (all  \
 * three constant at each call) */                                                      \
BPFAST_TILE_TARGET static inline void NAME##_rank1_block(                               \
    int nv, int mode, int full, MASK mt, int m, T alpha, const T *restrict x,           \
    const T *restrict y, T beta, T *restrict C, int ldc)                                \
{                                                                                       \
    ptrdiff_t i;                                                                        \
    V y0 = nv == 1 ? MLOAD(mt, y) : LOADU(y);                                           \
    V y1 = nv == 2 ? MLOAD(mt, y + W) : nv > 2 ? LOADU(y + W) : ZERO();                 \
    V y2 = nv == 3 ? MLOAD(mt, y + 2 * W) : nv > 3 ? LOADU(y + 2 * W) : ZERO();         \
    V y3 = nv == 4 ? MLOAD(mt, y + 3 * W) : ZERO();                                     \
    V be = SET1(beta);                                                                  \
    for (i = 0; i < m; i++) {                                                           \
        T *ci = C + i * (ptrdiff_t)ldc;                                                 \
        V s = SET1(alpha * x[i]);                                                       \
        /* the whole vectors, then the last one masked */                               \
        BPFAST_RANK1_STEP(nv > 1 || full, ci, y0, s, be, mode, mt, LOADU, MLOAD, STOREU, MSTORE, FMADD, MUL);                             \
        if (nv > 1) BPFAST_RANK1_STEP(nv > 2 || full, ci + W, y1, s, be, mode, mt, LOADU, MLOAD, STOREU, MSTORE, FMADD, MUL);             \
        if (nv > 2) BPFAST_RANK1_STEP(nv > 3 || full, ci + 2 * W, y2, s, be, mode, mt, LOADU, MLOAD, STOREU, MSTORE, FMADD, MUL);         \
        if (nv > 3) BPFAST_RANK1_STEP(full, ci + 3 * W, y3, s, be, mode, mt, LOADU, MLOAD, STOREU, MSTORE, FMADD, MUL);              \
    }                                                                                   \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static void NAME##_rank1(int m, int n, T alpha,                      \
                                            const T *restrict x, const T *restrict y,   \
                                            T beta, T *restrict C, int ldc)             \
{                                                                                       \
    ptrdiff_t j0;                                                                       \
    int mode = beta == 1 ? 1 : beta == 0 ? 0 : 2;                                       \
    for (j0 = 0; j0 < n; j0 += 4 * W) {                                                 \
        ptrdiff_t left = n - j0;                                                        \
        int nv = left >= 4 * W ? 4 : (int)((left + W - 1) / W);                         \
        MASK mt = NAME##_mask(left - (nv - 1) * W);                                     \
        BPFAST_DISPATCH_NV_MODE(NAME##_rank1_block, nv, mode, mt == (MASK)~0u, mt, m, alpha, x, y + j0, beta, C + j0, ldc);    \
    }                                                                                   \
}

BPFAST_DEFINE_VECTOR_PRODUCTS(double, bpfast_vp_d, __m512d, 8, __mmask8, _mm512_set1_pd,
                              _mm512_setzero_pd, _mm512_loadu_pd, _mm512_maskz_loadu_pd,
                              _mm512_storeu_pd, _mm512_mask_storeu_pd, _mm512_fmadd_pd,
                              _mm512_mul_pd, _mm512_reduce_add_pd)
BPFAST_DEFINE_VECTOR_PRODUCTS(float, bpfast_vp_f, __m512, 16, __mmask16, _mm512_set1_ps,
                              _mm512_setzero_ps, _mm512_loadu_ps, _mm512_maskz_loadu_ps,
                              _mm512_storeu_ps, _mm512_mask_storeu_ps, _mm512_fmadd_ps,
                              _mm512_mul_ps, _mm512_reduce_add_ps)

#else /* stubs: never called (bpfast_tiles_available() is 0) */

#define BPFAST_DEFINE_VECTOR_PRODUCT_STUBS(T, NAME)                                     \
static void NAME##_vecmat(int n, int k, T alpha, const T *a, const T *B, int ldb,       \
                          T beta, T *c)                                                 \
{ (void)n; (void)k; (void)alpha; (void)a; (void)B; (void)ldb; (void)beta; (void)c; }    \
static void NAME##_matvec(int n, int k, T alpha, const T *a, const T *B, int ldb,       \
                          T beta, T *c)                                                 \
{ (void)n; (void)k; (void)alpha; (void)a; (void)B; (void)ldb; (void)beta; (void)c; }    \
static void NAME##_rank1(int m, int n, T alpha, const T *x, const T *y, T beta, T *C,   \
                         int ldc)                                                       \
{ (void)m; (void)n; (void)alpha; (void)x; (void)y; (void)beta; (void)C; (void)ldc; }

BPFAST_DEFINE_VECTOR_PRODUCT_STUBS(double, bpfast_vp_d)
BPFAST_DEFINE_VECTOR_PRODUCT_STUBS(float, bpfast_vp_f)

#endif

#endif
