/* AVX-512 versions of _vmath.h's array functions: exp, tanh, sigmoid and silu.
 *
 * The same range reduction and polynomials as _vmath.h, with 2^n applied by one
 * VSCALEFPD/PS instead of building it from bits: scalef multiplies by 2^n exactly and
 * rounds once, to a subnormal or to infinity where the result is one, so the branch-free
 * selects that the portable code needs near overflow and underflow are gone. That about
 * halves the instructions per vector; on Zen 4, where a 512-bit operation takes two of
 * the 256-bit pipes, instructions are what an exponential costs. Results: bitwise those
 * of _vmath.h wherever the result is a normal number; in the subnormal range one
 * rounding instead of two (never less accurate). NaN propagates.
 *
 * Compiled through a function attribute (the build stays portable); _vmath.h calls
 * these only where bpfast_vmath_avx512() says the processor has AVX-512F.
 */
#ifndef BPFAST_VMATH_AVX512_H
#define BPFAST_VMATH_AVX512_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    !defined(BPFAST_NO_TARGET_CLONES)
#define BPFAST_VMATH_AVX512 1
#include <immintrin.h>
#define BPFAST_V512 __attribute__((target("avx512f"))) static inline
#else
#define BPFAST_VMATH_AVX512 0
#endif

/* 0 sends every call to the portable loops (tests compare the two routes). */
static int bpfast_vmath_avx512_allowed = 1;

/* Whether the functions below run: the processor has AVX-512F (checked once), and
 * they are allowed. */
static int bpfast_vmath_avx512(void)
{
#if BPFAST_VMATH_AVX512
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") != 0;
    }
    return has && bpfast_vmath_avx512_allowed;
#else
    return 0;
#endif
}

#if BPFAST_VMATH_AVX512

/* ---- double: 8 lanes ------------------------------------------------------------- */

/* e^r - 1 for |r| <= 0.3466: bp_expm1_poly_d's Taylor polynomial to r^13 */
BPFAST_V512 __m512d bp512_expm1_poly_d(__m512d r)
{
    __m512d p = _mm512_set1_pd(1.0 / 6227020800.0);
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 479001600.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 39916800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 3628800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 362880.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 40320.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 5040.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 720.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 120.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 24.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 6.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
    return _mm512_fmadd_pd(_mm512_mul_pd(r, r), p, r);
}

/* x = k ln2 + r, |r| <= ln2/2 (bp_reduce_d's steps); k returned in *k */
BPFAST_V512 __m512d bp512_reduce_d(__m512d x, __m512d *k)
{
    const __m512d shift = _mm512_set1_pd(6755399441055744.0);   /* 1.5 * 2^52 */
    __m512d n = _mm512_sub_pd(
        _mm512_fmadd_pd(x, _mm512_set1_pd(1.4426950408889634), shift), shift);
    *k = n;
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
    return _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
}

/* e^x; x is clamped to [-746, 710] first (beyond: 0 and +inf after scaling) */
BPFAST_V512 __m512d bp512_exp_d(__m512d x)
{
    /* max/min return their second operand when one is NaN: x's NaN is kept */
    __m512d xc = _mm512_min_pd(_mm512_set1_pd(710.0),
                               _mm512_max_pd(_mm512_set1_pd(-746.0), x));
    __m512d k, r = bp512_reduce_d(xc, &k);
    __m512d y = _mm512_add_pd(_mm512_set1_pd(1.0), bp512_expm1_poly_d(r));
    return _mm512_scalef_pd(y, k);
}

/* e^y - 1 for y <= 0 (bp_expm1_neg_d) */
BPFAST_V512 __m512d bp512_expm1_neg_d(__m512d y)
{
    __m512d yc = _mm512_max_pd(_mm512_set1_pd(-40.0), y);
    __m512d k, r = bp512_reduce_d(yc, &k);
    __m512d s = _mm512_scalef_pd(_mm512_set1_pd(1.0), k);
    return _mm512_fmadd_pd(s, bp512_expm1_poly_d(r), _mm512_sub_pd(s, _mm512_set1_pd(1.0)));
}

/* bit operations through the integer forms (the floating ones need AVX-512DQ) */
BPFAST_V512 __m512d bp512_or_d(__m512d a, __m512d b)
{
    return _mm512_castsi512_pd(_mm512_or_epi64(_mm512_castpd_si512(a), _mm512_castpd_si512(b)));
}

BPFAST_V512 __m512d bp512_sign_d(__m512d x)   /* the sign bit of x, as a double */
{
    return _mm512_castsi512_pd(_mm512_and_epi64(_mm512_castpd_si512(x),
                                                _mm512_set1_epi64(INT64_MIN)));
}

BPFAST_V512 __m512d bp512_xor_d(__m512d a, __m512d b)
{
    return _mm512_castsi512_pd(_mm512_xor_epi64(_mm512_castpd_si512(a), _mm512_castpd_si512(b)));
}

/* tanh |x| = -e / (2 + e), e = e^(-2|x|) - 1, with the sign of x */
BPFAST_V512 __m512d bp512_tanh_d(__m512d x)
{
    __m512d nax = bp512_or_d(x, _mm512_set1_pd(-0.0));                      /* -|x| */
    __m512d e = bp512_expm1_neg_d(_mm512_add_pd(nax, nax));
    __m512d t = _mm512_div_pd(_mm512_sub_pd(_mm512_setzero_pd(), e),
                              _mm512_add_pd(_mm512_set1_pd(2.0), e));
    return bp512_xor_d(t, bp512_sign_d(x));
}

/* (x >= 0 ? 1 : e) / (1 + e), e = e^-|x| */
BPFAST_V512 __m512d bp512_sigmoid_d(__m512d x)
{
    __m512d e = bp512_exp_d(bp512_or_d(x, _mm512_set1_pd(-0.0)));
    __mmask8 pos = _mm512_cmp_pd_mask(x, _mm512_setzero_pd(), _CMP_GE_OQ);
    __m512d num = _mm512_mask_blend_pd(pos, e, _mm512_set1_pd(1.0));
    return _mm512_div_pd(num, _mm512_add_pd(_mm512_set1_pd(1.0), e));
}

BPFAST_V512 __m512d bp512_silu_d(__m512d x) { return _mm512_mul_pd(x, bp512_sigmoid_d(x)); }

/* ---- float: 16 lanes ------------------------------------------------------------- */

BPFAST_V512 __m512 bp512_expm1_poly_f(__m512 r)   /* bp_expm1_poly_f: Taylor to r^8 */
{
    __m512 p = _mm512_set1_ps(1.0f / 40320.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 5040.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    return _mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r);
}

BPFAST_V512 __m512 bp512_reduce_f(__m512 x, __m512 *k)
{
    const __m512 shift = _mm512_set1_ps(12582912.0f);             /* 1.5 * 2^23 */
    __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), shift), shift);
    *k = n;
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    return _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
}

BPFAST_V512 __m512 bp512_exp_f(__m512 x)
{
    __m512 xc = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    __m512 k, r = bp512_reduce_f(xc, &k);
    __m512 y = _mm512_add_ps(_mm512_set1_ps(1.0f), bp512_expm1_poly_f(r));
    return _mm512_scalef_ps(y, k);
}

BPFAST_V512 __m512 bp512_expm1_neg_f(__m512 y)
{
    __m512 yc = _mm512_max_ps(_mm512_set1_ps(-20.0f), y);
    __m512 k, r = bp512_reduce_f(yc, &k);
    __m512 s = _mm512_scalef_ps(_mm512_set1_ps(1.0f), k);
    return _mm512_fmadd_ps(s, bp512_expm1_poly_f(r), _mm512_sub_ps(s, _mm512_set1_ps(1.0f)));
}

BPFAST_V512 __m512 bp512_or_f(__m512 a, __m512 b)
{
    return _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

BPFAST_V512 __m512 bp512_sign_f(__m512 x)
{
    return _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(x),
                                                _mm512_set1_epi32(INT32_MIN)));
}

BPFAST_V512 __m512 bp512_xor_f(__m512 a, __m512 b)
{
    return _mm512_castsi512_ps(_mm512_xor_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

BPFAST_V512 __m512 bp512_tanh_f(__m512 x)
{
    __m512 nax = bp512_or_f(x, _mm512_set1_ps(-0.0f));
    __m512 e = bp512_expm1_neg_f(_mm512_add_ps(nax, nax));
    __m512 t = _mm512_div_ps(_mm512_sub_ps(_mm512_setzero_ps(), e),
                             _mm512_add_ps(_mm512_set1_ps(2.0f), e));
    return bp512_xor_f(t, bp512_sign_f(x));
}

BPFAST_V512 __m512 bp512_sigmoid_f(__m512 x)
{
    __m512 e = bp512_exp_f(bp512_or_f(x, _mm512_set1_ps(-0.0f)));
    __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    __m512 num = _mm512_mask_blend_ps(pos, e, _mm512_set1_ps(1.0f));
    return _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

BPFAST_V512 __m512 bp512_silu_f(__m512 x) { return _mm512_mul_ps(x, bp512_sigmoid_f(x)); }

/* ---- array versions: a[j] = f(z[j]), the tail through masked loads and stores ----- */

#define BPFAST_DEFINE_ROW512(NAME, F, VEC, W, MASK, LOAD, STORE, MLOAD, MSTORE, T)     \
__attribute__((target("avx512f"))) static void NAME(ptrdiff_t n, const T *z, T *a)    \
{                                                                                       \
    ptrdiff_t j = 0;                                                                    \
    for (; j + W <= n; j += W)                                                          \
        STORE(a + j, F(LOAD(z + j)));                                                   \
    if (j < n) {                                                                        \
        MASK k = (MASK)((1u << (n - j)) - 1u);                                          \
        MSTORE(a + j, k, F(MLOAD(k, z + j)));                                           \
    }                                                                                   \
}

#define BPFAST_ROW512_D(NAME, F) \
    BPFAST_DEFINE_ROW512(NAME, F, __m512d, 8, __mmask8, _mm512_loadu_pd, _mm512_storeu_pd, \
                         _mm512_maskz_loadu_pd, _mm512_mask_storeu_pd, double)
#define BPFAST_ROW512_F(NAME, F) \
    BPFAST_DEFINE_ROW512(NAME, F, __m512, 16, __mmask16, _mm512_loadu_ps, _mm512_storeu_ps, \
                         _mm512_maskz_loadu_ps, _mm512_mask_storeu_ps, float)

BPFAST_ROW512_D(bpfast_exp_row512_d, bp512_exp_d)
BPFAST_ROW512_F(bpfast_exp_row512_f, bp512_exp_f)
BPFAST_ROW512_D(bpfast_tanh_row512_d, bp512_tanh_d)
BPFAST_ROW512_F(bpfast_tanh_row512_f, bp512_tanh_f)
BPFAST_ROW512_D(bpfast_sigmoid_row512_d, bp512_sigmoid_d)
BPFAST_ROW512_F(bpfast_sigmoid_row512_f, bp512_sigmoid_f)
BPFAST_ROW512_D(bpfast_silu_row512_d, bp512_silu_d)
BPFAST_ROW512_F(bpfast_silu_row512_f, bp512_silu_f)

#endif /* BPFAST_VMATH_AVX512 */

#endif
