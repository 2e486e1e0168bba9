/* AVX-512 forms of the per-element passes around the products of a training step, for
 * the activations whose derivative comes from A (sigmoid, tanh, exp) and silu:
 *
 *   bias + activation:  Z += 1 b^T,  A = g(Z)                        (one pass, not two)
 *   hidden delta:       Z = dA (.) g'(A),  db = column sums of Z
 *   squared-error delta at the output, unweighted rows:
 *                       Z = (A - Y) / denom (.) g'(A),  db = column sums of Z,
 *                       returns sum (A - Y)^2 in double
 *
 * with g' from A as in _pointwise.h (sigmoid a (1 - a), tanh 1 - a^2, exp a) and g from
 * _vmath_avx512.h, so that A is bitwise what bias_activate's two passes gave.
 *
 * Why: a layer of 10 or 32 units at batch 32 is 320 or 1024 values. _pointwise.h's loops
 * go row by row, paying the ragged tail of every 10-value row and keeping the column sums
 * db in memory, so that each row's sum waits on the previous row's store; the bias add is
 * a pass of its own. Here the m x n block is walked as one flat array of vectors when a
 * row's pattern repeats within a few vectors: with W lanes, the P = lcm(n, W) values
 * starting at any multiple of P cover the columns the same way, so P / W vectors of
 * column sums (and of bias) serve the whole block; they stay in registers and are folded
 * into db at the end. For the deltas, rows of whole vectors, wider layers and single rows
 * go row by row, up to 8 vectors of columns at a time, the sums again in registers (no
 * fold); the bias pass walks rows of whole vectors flat too, b itself being the period.
 *
 * The sums' order differs from _pointwise.h's (partial sums per lane and period, then
 * folded), so db differs at rounding level from the portable route; it is the same on
 * every run and wherever the buffers sit. A division by denom is a multiplication by
 * 1 / denom when that is exact (denom a power of two): the same bits either way.
 *
 * Compiled through function attributes (the build stays portable); callers check
 * bpfast_vmath_avx512() first.
 */
#ifndef BPFAST_POINTWISE512_H
#define BPFAST_POINTWISE512_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "_pointwise.h"
#include "_vmath.h"

/* the activations of the fused bias pass */
enum { BPFAST_ACT_SIGMOID = 0, BPFAST_ACT_TANH = 1, BPFAST_ACT_EXP = 2, BPFAST_ACT_SILU = 3 };

/* Longest row pattern, in vectors, that the flat walk keeps in registers (and widest
 * block of columns of the row walk). */
#define BPFAST_PW_MAX_VECTORS 8

/* Vectors in one period of the row pattern, n / gcd(n, lanes), or 0 when that is more
 * than BPFAST_PW_MAX_VECTORS (then the walk goes row by row). */
static inline int bpfast_pw_period(ptrdiff_t n, int lanes)
{
    ptrdiff_t a = n, b = lanes;
    while (b != 0) {
        ptrdiff_t t = a % b;
        a = b;
        b = t;
    }
    return n / a <= BPFAST_PW_MAX_VECTORS ? (int)(n / a) : 0;
}

/* Whether x is a power of two below 2^99, whose reciprocal is then a normal number in
 * float and double alike: y / x == y * (1 / x) for every y (both are the exact quotient,
 * rounded once). */
static inline int bpfast_pw_exact_reciprocal(double x)
{
    int e;
    return x > 0 && frexp(x, &e) == 0.5 && e < 100;
}

#if BPFAST_VMATH_AVX512

#define BPFAST_PW_ATTR __attribute__((target("avx512f"), always_inline)) static inline

/* double: 8 lanes */
#define PW_T double
#define PW_V __m512d
#define PW_M __mmask8
#define PW_W 8
#define PW_NAME(name) name##_d
#define PW_LOAD(p) _mm512_loadu_pd(p)
#define PW_MLOAD(k, p) _mm512_maskz_loadu_pd(k, p)
#define PW_STORE(p, v) _mm512_storeu_pd(p, v)
#define PW_MSTORE(p, k, v) _mm512_mask_storeu_pd(p, k, v)
#define PW_ADD _mm512_add_pd
#define PW_SUB _mm512_sub_pd
#define PW_MUL _mm512_mul_pd
#define PW_DIV _mm512_div_pd
#define PW_SET1 _mm512_set1_pd
#define PW_ZERO _mm512_setzero_pd
#define PW_SIGMOID bp512_sigmoid_d
#define PW_TANH bp512_tanh_d
#define PW_EXP bp512_exp_d
#define PW_SILU bp512_silu_d
/* sq[0] += r^2 in double (r's lanes are doubles already) */
#define PW_SQUARES(sq, r) ((sq)[0] = _mm512_fmadd_pd(r, r, (sq)[0]))
#include "_pointwise512_body.h"

/* float: 16 lanes; squares summed in double, the low and the high 8 lanes apart */
#define PW_T float
#define PW_V __m512
#define PW_M __mmask16
#define PW_W 16
#define PW_NAME(name) name##_f
#define PW_LOAD(p) _mm512_loadu_ps(p)
#define PW_MLOAD(k, p) _mm512_maskz_loadu_ps(k, p)
#define PW_STORE(p, v) _mm512_storeu_ps(p, v)
#define PW_MSTORE(p, k, v) _mm512_mask_storeu_ps(p, k, v)
#define PW_ADD _mm512_add_ps
#define PW_SUB _mm512_sub_ps
#define PW_MUL _mm512_mul_ps
#define PW_DIV _mm512_div_ps
#define PW_SET1 _mm512_set1_ps
#define PW_ZERO _mm512_setzero_ps
#define PW_SIGMOID bp512_sigmoid_f
#define PW_TANH bp512_tanh_f
#define PW_EXP bp512_exp_f
#define PW_SILU bp512_silu_f
#define PW_SQUARES(sq, r)                                                                \
    do {                                                                                 \
        __m512d lo_ = _mm512_cvtps_pd(_mm512_castps512_ps256(r));                        \
        __m512d hi_ = _mm512_cvtps_pd(                                                   \
            _mm512_castps512_ps256(_mm512_shuffle_f32x4(r, r, 0xEE)));                   \
        (sq)[0] = _mm512_fmadd_pd(lo_, lo_, (sq)[0]);                                    \
        (sq)[1] = _mm512_fmadd_pd(hi_, hi_, (sq)[1]);                                    \
    } while (0)
#include "_pointwise512_body.h"

#endif /* BPFAST_VMATH_AVX512 */

/* The entry points: the AVX-512 passes where bpfast_vmath_avx512() allows them (the
 * weighted output delta always excepted), else _pointwise.h's and _vmath.h's loops. */
#if BPFAST_VMATH_AVX512
#define BPFAST_PW_FAST(call) do { if (bpfast_vmath_avx512()) { call; } } while (0)
#else
#define BPFAST_PW_FAST(call) do { } while (0)
#endif

#define BPFAST_DEFINE_PW_ENTRIES(T, S)                                                  \
static void bpfast_pw_bias_act_##S(int act, ptrdiff_t m, ptrdiff_t n, const T *b,       \
                                   T *Z, T *A)                                          \
{                                                                                       \
    BPFAST_PW_FAST(bpfast_bias_act512_##S(act, m, n, b, Z, A); return);                 \
    bpfast_bias_add_##S(m, n, b, Z);                                                    \
    if (act == BPFAST_ACT_SIGMOID)                                                      \
        bpfast_sigmoid_row_##S(m * n, Z, A);                                            \
    else if (act == BPFAST_ACT_TANH)                                                    \
        bpfast_tanh_row_##S(m * n, Z, A);                                               \
    else if (act == BPFAST_ACT_EXP)                                                     \
        bpfast_exp_row_##S(m * n, Z, A);                                                \
    else                                                                                \
        bpfast_silu_row_##S(m * n, Z, A);                                               \
}                                                                                       \
                                                                                        \
static void bpfast_pw_delta_from_a_##S(int kind, ptrdiff_t m, ptrdiff_t n, const T *dA, \
                                       const T *A, T *Z, T *db)                         \
{                                                                                       \
    BPFAST_PW_FAST(bpfast_delta_from_a512_##S(kind, m, n, dA, A, Z, db); return);       \
    bpfast_delta_from_a_##S(kind, m, n, dA, A, Z, db);                                  \
}                                                                                       \
                                                                                        \
static double bpfast_pw_mse_delta_##S(int kind, ptrdiff_t m, ptrdiff_t n, const T *A,   \
                                      const T *Y, const T *w, T denom, T *Z, T *db)     \
{                                                                                       \
    if (w == NULL)                                                                      \
        BPFAST_PW_FAST(return bpfast_mse_delta512_##S(kind, m, n, A, Y, denom, Z, db)); \
    return bpfast_mse_delta_##S(kind, m, n, A, Y, w, denom, Z, db);                     \
}

BPFAST_DEFINE_PW_ENTRIES(double, d)
BPFAST_DEFINE_PW_ENTRIES(float, f)

#endif
