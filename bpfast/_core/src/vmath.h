/* Vectorisable exp, expm1, tanh and sigmoid over arrays, float and double.
 *
 * libm's exp and tanh are scalar calls, and the loops that call them cannot vectorise; these
 * branch-free versions (Cody-Waite range reduction, Taylor polynomials on |r| <= ln2/2,
 * selects instead of branches) can. This header: the scalar functions, inline wherever
 * they are used; vmath_rows.inc: the array functions, compiled per target. Accuracy:
 * within a few units in the last place of the correctly rounded results
 * over the whole range (checked against libm in the tests); subnormal results are built
 * by scaling in two steps (off by at most one unit of the smallest subnormal); +inf past
 * overflow; NaN propagates. On processors with AVX2+FMA or AVX-512F the array functions
 * run vmath_vec.inc's versions of the same steps on whole vectors (the same bits; on
 * AVX-512 wherever the result is a normal number).
 */
#ifndef BPFAST_VMATH_H
#define BPFAST_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include "platform.h"

/* ---- double ---------------------------------------------------------------------- */

static inline double bp_pow2_d(double n)   /* 2^n for integral n in [-1022, 1023] */
{
    /* Adding 1.5 * 2^52 puts n in the low bits of the sum's pattern, whose high bits are
       those of 1.5 * 2^52: integer arithmetic on the pattern then gives 2^n's. (A cast to
       int64_t would do, but without AVX-512DQ it keeps the loops from vectorising.) */
    double shifted = n + 6755399441055744.0;
    uint64_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits - UINT64_C(0x4338000000000000) + 1023) << 52;
    double out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* e^r - 1 for |r| <= 0.3466 (Taylor to r^13; truncation below 1e-17 relative). A macro
   so that vmath_vec.inc's vectors take the same expression (Horner, as written). */
#define BPFAST_EXPM1_POLY_d(r)                                                          \
    ((r) + ((r) * (r)) *                                                                \
     ((((((((((((1.0 / 6227020800.0 * (r) + 1.0 / 479001600.0) * (r)                   \
                + 1.0 / 39916800.0) * (r) + 1.0 / 3628800.0) * (r) + 1.0 / 362880.0)    \
              * (r) + 1.0 / 40320.0) * (r) + 1.0 / 5040.0) * (r) + 1.0 / 720.0) * (r)  \
           + 1.0 / 120.0) * (r) + 1.0 / 24.0) * (r) + 1.0 / 6.0) * (r) + 0.5)))

static inline double bp_expm1_poly_d(double r) { return BPFAST_EXPM1_POLY_d(r); }

/* x = n ln2 + r, |r| <= ln2/2, k = n (round to nearest via 1.5 * 2^52); vectors too */
#define BPFAST_REDUCE_d(x, k)                                                           \
    ((k) = ((x) * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0,        \
     ((x) - (k) * 6.93147180369123816490e-01) - (k) * 1.90821492927058770002e-10)

static inline double bp_reduce_d(double x, double *n)
{
    double k;
    double r = BPFAST_REDUCE_d(x, k);
    *n = k;
    return r;
}

static inline double bp_exp_d(double x)
{
    double xc = x < -745.2 ? -745.2 : x;
    xc = xc > 709.782712893384 ? 709.782712893384 : xc;
    double n, r = bp_reduce_d(xc, &n);
    /* 2^n as 2^(n - shift) 2^shift so that it stays a normal number while being built:
       shift 1 near overflow (n = 1024), -64 for subnormal results (n < -1022) */
    double up = (n > 1000.0) ? 1.0 : 0.0;
    double down = (n < -1000.0) ? 1.0 : 0.0;
    double y = (1.0 + bp_expm1_poly_d(r)) * bp_pow2_d(n - up + 64.0 * down);
    y = up > 0.0 ? y * 2.0 : y;
    y = down > 0.0 ? y * 5.421010862427522e-20 : y;   /* 2^-64 */
    y = x < -745.2 ? 0.0 : y;
    y = x > 709.782712893384 ? INFINITY : y;
    return x != x ? x : y;
}

/* ---- float ----------------------------------------------------------------------- */

static inline float bp_pow2_f(float n)     /* 2^n for integral n in [-126, 127] */
{
    int32_t bits = ((int32_t)n + 127) << 23;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* |r| <= 0.3466, Taylor to r^8 */
#define BPFAST_EXPM1_POLY_f(r)                                                          \
    ((r) + ((r) * (r)) *                                                                \
     (((((((1.0f / 40320.0f * (r) + 1.0f / 5040.0f) * (r) + 1.0f / 720.0f) * (r)        \
          + 1.0f / 120.0f) * (r) + 1.0f / 24.0f) * (r) + 1.0f / 6.0f) * (r) + 0.5f)))

static inline float bp_expm1_poly_f(float r) { return BPFAST_EXPM1_POLY_f(r); }

#define BPFAST_REDUCE_f(x, k)                                                           \
    ((k) = ((x) * 1.44269504f + 12582912.0f) - 12582912.0f,                             \
     ((x) - (k) * 0.693145751953125f) - (k) * 1.428606765330187e-06f)

static inline float bp_reduce_f(float x, float *n)
{
    float k;
    float r = BPFAST_REDUCE_f(x, k);
    *n = k;
    return r;
}

static inline float bp_exp_f(float x)
{
    float xc = x < -104.0f ? -104.0f : x;
    xc = xc > 88.72283905f ? 88.72283905f : xc;
    float n, r = bp_reduce_f(xc, &n);
    float up = (n > 120.0f) ? 1.0f : 0.0f;
    float down = (n < -120.0f) ? 1.0f : 0.0f;
    float y = (1.0f + bp_expm1_poly_f(r)) * bp_pow2_f(n - up + 32.0f * down);
    y = up > 0.0f ? y * 2.0f : y;
    y = down > 0.0f ? y * 2.3283064365386963e-10f : y;   /* 2^-32 */
    y = x < -104.0f ? 0.0f : y;
    y = x > 88.72283905f ? INFINITY : y;
    return x != x ? x : y;
}

/* ---- both: the functions built on exp, written once --------------------------------- */

/* bp_expm1_neg: e^y - 1 for y <= 0, accurate near 0 (relative error a few ulp
 * everywhere; below FLOOR, e^y - 1 rounds to -1); bp_tanh, bp_sigmoid, bp_silu */
#define BPFAST_DEFINE_VMATH_FROM_EXP(T, SFX, FLOOR)                                     \
static inline T bp_expm1_neg_##SFX(T y)                                                 \
{                                                                                       \
    T yc = y < (T)(FLOOR) ? (T)(FLOOR) : y;                                             \
    T n, r = bp_reduce_##SFX(yc, &n);                                                   \
    T s = bp_pow2_##SFX(n);                                                             \
    T out = s * bp_expm1_poly_##SFX(r) + (s - (T)1);                                    \
    return y != y ? y : out;                                                            \
}                                                                                       \
                                                                                        \
static inline T bp_tanh_##SFX(T x)                                                      \
{                                                                                       \
    T ax = x < 0 ? -x : x;                                                              \
    T e = bp_expm1_neg_##SFX((T)-2 * ax);         /* e^-2|x| - 1, in (-1, 0] */         \
    T t = -e / ((T)2 + e);                                                              \
    return x < 0 ? -t : t;                                                              \
}                                                                                       \
                                                                                        \
static inline T bp_sigmoid_##SFX(T x)                                                   \
{                                                                                       \
    T ax = x < 0 ? -x : x;                                                              \
    T e = bp_exp_##SFX(-ax);                                                            \
    return (x >= 0 ? (T)1 : e) / ((T)1 + e);                                            \
}                                                                                       \
                                                                                        \
static inline T bp_silu_##SFX(T x) { return x * bp_sigmoid_##SFX(x); }

BPFAST_DEFINE_VMATH_FROM_EXP(double, d, -40.0)
BPFAST_DEFINE_VMATH_FROM_EXP(float, f, -20.0f)

#endif
