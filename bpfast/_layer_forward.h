/* A small first layer's forward product, read from the rows where they sit, with the
 * bias and a piecewise-linear activation applied as each register tile finishes; and a
 * small hidden layer's backward product with the activation's derivative applied the
 * same way.
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

/* NAME(m, n_in, n, rows, W, ldw, b, Z, A, ldz, kind, store_z): the forward product
 * above, for the n columns that W and Z, A start at (ldw, ldz: their row strides,
 * larger than n for a block of columns of a wider layer). store_z = 0 (kind >= 0
 * only): A alone is written, Z left as it was -- when nothing reads Z but the
 * backward kernel below, which takes the signs it needs from A.
 * NAME##_back(m, n_in, n, dZ, W, ldw, Ap, Zp, ldz, db, kind): the backward one for a
 * hidden layer with a piecewise-linear activation (kind >= 0): dZp = (dZ W) (.) g'(Zp)
 * into Zp (m x n, the layer below's Z buffer), db = column sums of dZp, dZ being
 * m x n_in (the layer above's delta) and W n_in x n (its weights, as stored). g' as in
 * _pointwise.h, with [Zp > 0] read as [Ap > 0] from the layer's activations Ap: relu
 * and leaky relu keep the sign (relu(NaN) = 0 and leaky(NaN) = NaN both give 0, as
 * NaN > 0 does). */
#define BPFAST_DEFINE_LAYER_FORWARD(T, NAME, VEC, MASK)                                 \
typedef VEC NAME##_vec;                                                                 \
typedef MASK NAME##_mask;                                                               \
                                                                                        \
/* acc[r][j] = sum_k x[r][k] W[k, j-th vector], r < nr, j < nv */                      \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_acc(       \
    const int nr, const int nv, ptrdiff_t n_in, ptrdiff_t ldw, const T *const *x,       \
    const T *restrict W, NAME##_vec acc[BPFAST_TILE_NR][BPFAST_TILE_NV])                \
{                                                                                       \
    const int VL = (int)(64 / sizeof(T));                                               \
    NAME##_vec w[BPFAST_TILE_NV];                                                       \
    ptrdiff_t k;                                                                        \
    int r, j;                                                                           \
    _Pragma("GCC unroll 4")                                                             \
    for (r = 0; r < nr; r++)                                                            \
        _Pragma("GCC unroll 4")                                                         \
        for (j = 0; j < nv; j++)                                                        \
            acc[r][j] = (NAME##_vec){0};                                                \
    for (k = 0; k < n_in; k++) {                                                        \
        _Pragma("GCC unroll 4")                                                         \
        for (j = 0; j < nv; j++)                                                        \
            memcpy(&w[j], W + k * ldw + j * VL, sizeof(NAME##_vec));                    \
        _Pragma("GCC unroll 4")                                                         \
        for (r = 0; r < nr; r++) {                                                      \
            const T xv = x[r][k];                                                       \
            _Pragma("GCC unroll 4")                                                     \
            for (j = 0; j < nv; j++)                                                    \
                acc[r][j] += xv * w[j];                                                 \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* forward tile: rows p0..p0+nr-1 (rows[0..nr)), nv vectors of columns from c0 */      \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_tile(      \
    const int nr, const int nv, ptrdiff_t n_in, ptrdiff_t ldw, ptrdiff_t ldz,           \
    const T *const *rows, const T *restrict W, const T *restrict b, T *restrict Z,      \
    T *restrict A, int kind, int store_z)                                               \
{                                                                                       \
    const int VL = (int)(64 / sizeof(T));                                               \
    NAME##_vec acc[BPFAST_TILE_NR][BPFAST_TILE_NV];                                     \
    int r, j;                                                                           \
    NAME##_acc(nr, nv, n_in, ldw, rows, W, acc);                                        \
    _Pragma("GCC unroll 4")                                                             \
    for (j = 0; j < nv; j++) {                                                          \
        NAME##_vec bv, one = (NAME##_vec){0} + 1;                                       \
        memcpy(&bv, b + j * VL, sizeof bv);                                             \
        _Pragma("GCC unroll 4")                                                         \
        for (r = 0; r < nr; r++) {                                                      \
            NAME##_vec v = acc[r][j], a, c;                                             \
            if (kind < 0) {                                                             \
                memcpy(Z + r * ldz + j * VL, &v, sizeof v);                             \
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
            if (store_z)                                                                \
                memcpy(Z + r * ldz + j * VL, &v, sizeof v);                             \
            memcpy(A + r * ldz + j * VL, &a, sizeof a);                                 \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* backward tile: dZp = acc (.) g'(Zp) into Zp's block, its column sums added to db;   \
 * [Zp > 0] read from the activations Ap, which have the same sign */                  \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_back_tile( \
    const int nr, const int nv, ptrdiff_t n_in, ptrdiff_t ldw, ptrdiff_t ldz,           \
    const T *const *rows, const T *restrict W, const T *restrict Ap,                    \
    T *restrict Zp, T *restrict db, int kind)                                           \
{                                                                                       \
    const int VL = (int)(64 / sizeof(T));                                               \
    NAME##_vec acc[BPFAST_TILE_NR][BPFAST_TILE_NV];                                     \
    int r, j;                                                                           \
    NAME##_acc(nr, nv, n_in, ldw, rows, W, acc);                                        \
    _Pragma("GCC unroll 4")                                                             \
    for (j = 0; j < nv; j++) {                                                          \
        NAME##_vec sum, one = (NAME##_vec){0} + 1;                                      \
        memcpy(&sum, db + j * VL, sizeof sum);                                          \
        _Pragma("GCC unroll 4")                                                         \
        for (r = 0; r < nr; r++) {                                                      \
            NAME##_vec z, c, v;                                                         \
            memcpy(&z, Ap + r * ldz + j * VL, sizeof z);                                \
            c = (NAME##_vec)((NAME##_mask)one & (NAME##_mask)(z > 0));                  \
            if (kind == BPFAST_PWL_RELU)                                                \
                v = acc[r][j] * c;                                                      \
            else if (kind == BPFAST_PWL_LEAKY)                                          \
                v = acc[r][j] * (c + (1 - c) * (T)0.01);                                \
            else                                                                        \
                v = acc[r][j];                                                          \
            memcpy(Zp + r * ldz + j * VL, &v, sizeof v);                                \
            sum += v;                                                                   \
        }                                                                               \
        memcpy(db + j * VL, &sum, sizeof sum);                                          \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* the scalar column tail of either pass: columns c0..c0+width-1 of rows p0.. */        \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_tail(      \
    int back, int nr, int width, ptrdiff_t n_in, ptrdiff_t ldw, ptrdiff_t ldz,          \
    const T *const *rows,                                                               \
    const T *restrict W, const T *restrict b, T *restrict Z, T *restrict A,             \
    T *restrict db, int kind, int store_z)                                              \
{                                                                                       \
    int r, c;                                                                           \
    ptrdiff_t k;                                                                        \
    for (r = 0; r < nr; r++)                                                            \
        for (c = 0; c < width; c++) {                                                   \
            T acc = 0, v, cz;                                                           \
            for (k = 0; k < n_in; k++)                                                  \
                acc += rows[r][k] * W[k * ldw + c];                                     \
            if (back) {                                                                 \
                cz = A[r * ldz + c] > 0 ? (T)1 : (T)0;                                  \
                v = kind == BPFAST_PWL_RELU ? acc * cz                                  \
                  : kind == BPFAST_PWL_LEAKY ? acc * (cz + (1 - cz) * (T)0.01) : acc;   \
                Z[r * ldz + c] = v;                                                     \
                db[c] += v;                                                             \
                continue;                                                               \
            }                                                                           \
            if (kind < 0) {                                                             \
                Z[r * ldz + c] = acc;                                                   \
                continue;                                                               \
            }                                                                           \
            v = acc + b[c];                                                             \
            cz = v > 0 ? (T)1 : (T)0;                                                   \
            if (store_z)                                                                \
                Z[r * ldz + c] = v;                                                     \
            A[r * ldz + c] = kind == BPFAST_PWL_RELU ? (v > 0 ? v : (T)0)               \
                         : kind == BPFAST_PWL_LEAKY ? cz * v + (1 - cz) * ((T)0.01 * v) \
                         : v;                                                           \
        }                                                                               \
}                                                                                       \
                                                                                        \
/* both passes: tiles over rows of 4 (then 1) and columns of CT, VL, then the tail */   \
BPFAST_TILE_TARGET static inline __attribute__((always_inline)) void NAME##_run(       \
    const int back, int m, int n_in, int n, const T *const *rows, const T *dZ,          \
    const T *restrict W, ptrdiff_t ldw, const T *restrict b, T *restrict Z,             \
    T *restrict A, ptrdiff_t ldz, T *restrict db, int kind, int store_z)                \
{                                                                                       \
    enum { VL = 64 / sizeof(T), CT = BPFAST_TILE_NV * (64 / sizeof(T)) };               \
    const T *own[BPFAST_TILE_NR];                                                       \
    int p0, c0, nr, r, width;                                                           \
    if (back)                                                                           \
        memset(db, 0, (size_t)n * sizeof(T));                                           \
    for (p0 = 0; p0 < m; p0 += nr) {                                                    \
        const T *const *rp = rows + p0;                                                 \
        nr = m - p0 >= BPFAST_TILE_NR ? BPFAST_TILE_NR : 1;                             \
        if (back) { /* the rows of dZ */                                                \
            for (r = 0; r < nr; r++)                                                    \
                own[r] = dZ + (ptrdiff_t)(p0 + r) * n_in;                               \
            rp = own;                                                                   \
        }                                                                               \
        for (c0 = 0; c0 < n; c0 += width) {                                             \
            T *Zt = Z + (ptrdiff_t)p0 * ldz + c0;                                       \
            T *At = A + (ptrdiff_t)p0 * ldz + c0;                                       \
            width = n - c0 >= CT ? CT : n - c0 >= VL ? VL : n - c0;                     \
            if (back && width == CT && nr == BPFAST_TILE_NR)                            \
                NAME##_back_tile(BPFAST_TILE_NR, BPFAST_TILE_NV, n_in, ldw, ldz, rp,    \
                                 W + c0, At, Zt, db + c0, kind);                        \
            else if (back && width == CT)                                               \
                NAME##_back_tile(1, BPFAST_TILE_NV, n_in, ldw, ldz, rp, W + c0, At, Zt, \
                                 db + c0, kind);                                        \
            else if (back && width == VL && nr == BPFAST_TILE_NR)                       \
                NAME##_back_tile(BPFAST_TILE_NR, 1, n_in, ldw, ldz, rp, W + c0, At, Zt, \
                                 db + c0, kind);                                        \
            else if (back && width == VL)                                               \
                NAME##_back_tile(1, 1, n_in, ldw, ldz, rp, W + c0, At, Zt, db + c0,     \
                                 kind);                                                 \
            else if (!back && width == CT && nr == BPFAST_TILE_NR)                      \
                NAME##_tile(BPFAST_TILE_NR, BPFAST_TILE_NV, n_in, ldw, ldz, rp, W + c0, \
                            b + c0, Zt, At, kind, store_z);                             \
            else if (!back && width == CT)                                              \
                NAME##_tile(1, BPFAST_TILE_NV, n_in, ldw, ldz, rp, W + c0, b + c0, Zt,  \
                            At, kind, store_z);                                         \
            else if (!back && width == VL && nr == BPFAST_TILE_NR)                      \
                NAME##_tile(BPFAST_TILE_NR, 1, n_in, ldw, ldz, rp, W + c0, b + c0, Zt,  \
                            At, kind, store_z);                                         \
            else if (!back && width == VL)                                              \
                NAME##_tile(1, 1, n_in, ldw, ldz, rp, W + c0, b + c0, Zt, At, kind,     \
                            store_z);                                                   \
            else                                                                        \
                NAME##_tail(back, nr, width, n_in, ldw, ldz, rp, W + c0,                \
                            back ? NULL : b + c0, Zt, At, back ? db + c0 : NULL, kind,  \
                            store_z);                                                   \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static void NAME(int m, int n_in, int n, const T *const *rows,      \
                                    const T *restrict W, ptrdiff_t ldw,                 \
                                    const T *restrict b, T *restrict Z, T *restrict A,  \
                                    ptrdiff_t ldz, int kind, int store_z)               \
{                                                                                       \
    NAME##_run(0, m, n_in, n, rows, NULL, W, ldw, b, Z, A, ldz, NULL, kind, store_z);   \
}                                                                                       \
                                                                                        \
BPFAST_TILE_TARGET static void NAME##_back(int m, int n_in, int n, const T *dZ,        \
                                           const T *restrict W, ptrdiff_t ldw,          \
                                           const T *Ap, T *restrict Zp, ptrdiff_t ldz,  \
                                           T *restrict db, int kind)                    \
{                                                                                       \
    NAME##_run(1, m, n_in, n, NULL, dZ, W, ldw, NULL, Zp, (T *)Ap, ldz, db, kind, 1);   \
}

BPFAST_DEFINE_LAYER_FORWARD(double, bpfast_layer_forward_d, bpfast_tile_vd,
                            bpfast_tile_md)
BPFAST_DEFINE_LAYER_FORWARD(float, bpfast_layer_forward_f, bpfast_tile_vf,
                            bpfast_tile_mf)

#else /* not compiled: never called, bpfast_tiles_available() is 0 */

#define BPFAST_DEFINE_LAYER_FORWARD_STUB(T, NAME)                                       \
static void NAME(int m, int n_in, int n, const T *const *rows, const T *W,             \
                 ptrdiff_t ldw, const T *b, T *Z, T *A, ptrdiff_t ldz, int kind,        \
                 int store_z)                                                           \
{                                                                                       \
}                                                                                       \
static void NAME##_back(int m, int n_in, int n, const T *dZ, const T *W, ptrdiff_t ldw, \
                        const T *Ap, T *Zp, ptrdiff_t ldz, T *db, int kind)             \
{                                                                                       \
}
BPFAST_DEFINE_LAYER_FORWARD_STUB(double, bpfast_layer_forward_d)
BPFAST_DEFINE_LAYER_FORWARD_STUB(float, bpfast_layer_forward_f)

#endif

#endif
