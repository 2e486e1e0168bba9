/* A small first layer's forward product, read from the rows where they sit, with the
 * bias and a piecewise-linear activation applied as each register tile finishes.
 *
 * Z = X W (m x n; W is n_in x n, row-major, the first layer as the trainer keeps it
 * during epochs), row p of X being rows[p] (n_in entries): a shuffled batch needs no
 * gathered copy. With kind >= 0 (_pointwise.h's identity, relu, leaky relu), then
 * Z += 1 b^T and A = g(Z) in the same pass, by _pointwise.h's branch-free formulas;
 * with kind < 0, Z = X W only and the caller adds the bias and activates.
 *
 * Tiles of 4 rows of Z by 4 vectors of columns (_tiles.h). Each entry is the sum over
 * k = 0..n_in-1 in order, one multiply-add per term, then the bias: like a BLAS product
 * to rounding, and independent of where the buffers sit.
 */
#ifndef BPFAST_LAYER_FORWARD_H
#define BPFAST_LAYER_FORWARD_H

#include <stddef.h>
#include <string.h>
#include "_tiles.h"
#include "_pointwise.h"

#if BPFAST_HAVE_TILES

/* NAME(m, n_in, n, rows, W, b, Z, A, kind) */
#define BPFAST_DEFINE_LAYER_FORWARD(T, NAME, VEC, MASK)                                 \
typedef VEC NAME##_vec;                                                                 \
typedef MASK NAME##_mask;                                                               \
                                                                                        \
/* rows p0..p0+nr-1, nv vectors of columns from c0 */                                   \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_tile(      \
    const int nr, const int nv, ptrdiff_t n_in, ptrdiff_t n, const T *const *rows,      \
    const T *restrict W, const T *restrict b, T *restrict Z, T *restrict A, int kind)   \
{                                                                                       \
    const int VL = (int)(64 / sizeof(T));                                               \
    NAME##_vec acc[BPFAST_TILE_NR][BPFAST_TILE_NV];                                     \
    NAME##_vec w[BPFAST_TILE_NV];                                                       \
    const T *x[BPFAST_TILE_NR];                                                         \
    ptrdiff_t k;                                                                        \
    int r, j;                                                                           \
    _Pragma("GCC unroll 4")                                                             \
    for (r = 0; r < nr; r++) {                                                          \
        x[r] = rows[r];                                                                 \
        _Pragma("GCC unroll 4")                                                         \
        for (j = 0; j < nv; j++)                                                        \
            acc[r][j] = (NAME##_vec){0};                                                \
    }                                                                                   \
    for (k = 0; k < n_in; k++) {                                                        \
        _Pragma("GCC unroll 4")                                                         \
        for (j = 0; j < nv; j++)                                                        \
            memcpy(&w[j], W + k * n + j * VL, sizeof(NAME##_vec));                      \
        _Pragma("GCC unroll 4")                                                         \
        for (r = 0; r < nr; r++) {                                                      \
            const T xv = x[r][k];                                                       \
            _Pragma("GCC unroll 4")                                                     \
            for (j = 0; j < nv; j++)                                                    \
                acc[r][j] += xv * w[j];                                                 \
        }                                                                               \
    }                                                                                   \
    _Pragma("GCC unroll 4")                                                             \
    for (j = 0; j < nv; j++) {                                                          \
        NAME##_vec bv, one = (NAME##_vec){0} + 1;                                       \
        memcpy(&bv, b + j * VL, sizeof bv);                                             \
        _Pragma("GCC unroll 4")                                                         \
        for (r = 0; r < nr; r++) {                                                      \
            NAME##_vec v = acc[r][j], a, c;                                             \
            if (kind < 0) {                                                             \
                memcpy(Z + r * n + j * VL, &v, sizeof v);                               \
                continue;                                                               \
            }                                                                           \
            v = v + bv;                                                                 \
            /* c = [v > 0] as 1 or 0; NaN gives 0, as in _pointwise.h */               \
            c = (NAME##_vec)((NAME##_mask)one & (NAME##_mask)(v > 0));                  \
            if (kind == BPFAST_PWL_RELU)                                                \
                a = (NAME##_vec)((NAME##_mask)v & (NAME##_mask)(v > 0));                \
            else if (kind == BPFAST_PWL_LEAKY)                                          \
                a = c * v + (1 - c) * ((T)0.01 * v);                                    \
            else                                                                        \
                a = v;                                                                  \
            memcpy(Z + r * n + j * VL, &v, sizeof v);                                   \
            memcpy(A + r * n + j * VL, &a, sizeof a);                                   \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static void NAME(int m, int n_in, int n, const T *const *rows,      \
                                    const T *restrict W, const T *restrict b,           \
                                    T *restrict Z, T *restrict A, int kind)             \
{                                                                                       \
    enum { VL = 64 / sizeof(T), CT = BPFAST_TILE_NV * (64 / sizeof(T)) };               \
    int p0, c0, nr, r, c, width;                                                        \
    ptrdiff_t k;                                                                        \
    for (p0 = 0; p0 < m; p0 += nr) {                                                    \
        const T *const *rp = rows + p0;                                                 \
        nr = m - p0 >= BPFAST_TILE_NR ? BPFAST_TILE_NR : 1;                             \
        for (c0 = 0; c0 < n; c0 += width) {                                             \
            T *Zt = Z + (ptrdiff_t)p0 * n + c0, *At = A + (ptrdiff_t)p0 * n + c0;       \
            width = n - c0 >= CT ? CT : n - c0 >= VL ? VL : n - c0;                     \
            if (width == CT && nr == BPFAST_TILE_NR)                                    \
                NAME##_tile(BPFAST_TILE_NR, BPFAST_TILE_NV, n_in, n, rp, W + c0,        \
                            b + c0, Zt, At, kind);                                      \
            else if (width == CT)                                                       \
                NAME##_tile(1, BPFAST_TILE_NV, n_in, n, rp, W + c0, b + c0, Zt, At,     \
                            kind);                                                      \
            else if (width == VL && nr == BPFAST_TILE_NR)                               \
                NAME##_tile(BPFAST_TILE_NR, 1, n_in, n, rp, W + c0, b + c0, Zt, At,     \
                            kind);                                                      \
            else if (width == VL)                                                       \
                NAME##_tile(1, 1, n_in, n, rp, W + c0, b + c0, Zt, At, kind);           \
            else                                                                        \
                /* fewer columns than a vector: the same sums, one by one */            \
                for (r = 0; r < nr; r++)                                                \
                    for (c = 0; c < width; c++) {                                       \
                        T acc = 0, v, cz;                                               \
                        for (k = 0; k < n_in; k++)                                      \
                            acc += rp[r][k] * W[k * n + c0 + c];                        \
                        if (kind < 0) {                                                 \
                            Zt[r * n + c] = acc;                                        \
                            continue;                                                   \
                        }                                                               \
                        v = acc + b[c0 + c];                                            \
                        cz = v > 0 ? (T)1 : (T)0;                                       \
                        Zt[r * n + c] = v;                                              \
                        At[r * n + c] = kind == BPFAST_PWL_RELU ? (v > 0 ? v : (T)0)    \
                                      : kind == BPFAST_PWL_LEAKY                        \
                                      ? cz * v + (1 - cz) * ((T)0.01 * v) : v;          \
                    }                                                                   \
        }                                                                               \
    }                                                                                   \
}

BPFAST_DEFINE_LAYER_FORWARD(double, bpfast_layer_forward_d, bpfast_tile_vd,
                            bpfast_tile_md)
BPFAST_DEFINE_LAYER_FORWARD(float, bpfast_layer_forward_f, bpfast_tile_vf,
                            bpfast_tile_mf)

#else /* not compiled: never called, bpfast_tiles_available() is 0 */

#define BPFAST_DEFINE_LAYER_FORWARD_STUB(T, NAME)                                       \
static void NAME(int m, int n_in, int n, const T *const *rows, const T *W, const T *b,  \
                 T *Z, T *A, int kind)                                                  \
{                                                                                       \
}
BPFAST_DEFINE_LAYER_FORWARD_STUB(double, bpfast_layer_forward_d)
BPFAST_DEFINE_LAYER_FORWARD_STUB(float, bpfast_layer_forward_f)

#endif

#endif
