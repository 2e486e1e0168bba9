/* What the kernels written with vectors (grad_update.inc, layer_forward.inc,
 * vector_products.inc, panel_gemm.inc, vmath_vec.inc, pointwise_fused.inc) share: the
 * availability check, the tile shape, the vector types, and loads and stores of partial
 * vectors.
 *
 * A tile is BPFAST_TILE_NR rows by BPFAST_TILE_NV vectors of BPFAST_TILE_BYTES, its
 * accumulators held in registers: 4 x 4 vectors of 64 bytes for AVX-512 (16 of its 32
 * registers), 4 x 2 vectors of 32 bytes for AVX2 (8 of its 16: the shape that measured
 * fastest there, docs/performance.md). The same source is compiled for both targets
 * (dispatch_avx512.c, dispatch_avx2.c), and so is the panel kernel (panel.h), whose
 * tiles are wider; bpfast_tiles_available() says whether either runs
 * here (after BPFAST_DISABLE_CPU_FEATURES). The baseline copy and the portable build have
 * no tiles: their callers keep BLAS and the separate passes.
 *
 * BPFAST_AVX2_TILE_BYTES=64 (a compile definition, e.g. CFLAGS) gives the AVX2 copy the
 * AVX-512 copy's vectors and tile, lowered to pairs of AVX2 instructions: the AVX-512
 * kernels' arithmetic, tails and masks then run, and are tested, on an AVX2 processor.
 */
#ifndef BPFAST_TILES_H
#define BPFAST_TILES_H

#include <stddef.h>
#include <string.h>
#include "platform.h"
#include "cpu.h"
#if BPFAST_X86_DISPATCH
#include <immintrin.h>
#endif

#define BPFAST_HAVE_TILES BPFAST_X86_DISPATCH

static inline int bpfast_tiles_available(void)
{
    return BPFAST_HAVE_TILES && (bpfast_cpu_has(BPFAST_CPU_AVX512F) ||
                                 bpfast_cpu_has(BPFAST_CPU_AVX2 | BPFAST_CPU_FMA));
}

/* Compile definitions for measuring other shapes (docs/performance.md); the defaults are
 * the shipped ones. */
#ifndef BPFAST_AVX2_TILE_BYTES
#define BPFAST_AVX2_TILE_BYTES 32
#endif
#ifndef BPFAST_AVX2_TILE_NV
#define BPFAST_AVX2_TILE_NV 2
#endif
#ifndef BPFAST_TILE_NR
#define BPFAST_TILE_NR 4 /* rows per tile */
#endif

#if defined(BPFAST_TARGET_AVX512)
#define BPFAST_TILE_BYTES 64
#define BPFAST_TILE_NV 4
#elif defined(BPFAST_TARGET_AVX2)
#define BPFAST_TILE_BYTES BPFAST_AVX2_TILE_BYTES
#define BPFAST_TILE_NV (BPFAST_TILE_BYTES == 64 ? 4 : BPFAST_AVX2_TILE_NV)
#endif

#ifdef BPFAST_TILE_BYTES
typedef double bpfast_tile_vd __attribute__((vector_size(BPFAST_TILE_BYTES)));
typedef float bpfast_tile_vf __attribute__((vector_size(BPFAST_TILE_BYTES)));
typedef long long bpfast_tile_md __attribute__((vector_size(BPFAST_TILE_BYTES))); /* masks */
typedef int bpfast_tile_mf __attribute__((vector_size(BPFAST_TILE_BYTES)));
/* half a float vector, widened to a double one (sums of squares are taken in double) */
typedef float bpfast_tile_vf_half __attribute__((vector_size(BPFAST_TILE_BYTES / 2)));

/* lane-wise square roots: a loop the compiler turns into one vector instruction per
 * register (sqrt sets no errno under the build's -fno-math-errno) */
BPFAST_ALWAYS_INLINE bpfast_tile_vd bpfast_tile_sqrt_d(bpfast_tile_vd x)
{
    int i;
    for (i = 0; i < (int)(BPFAST_TILE_BYTES / sizeof(double)); i++)
        x[i] = __builtin_sqrt(x[i]);
    return x;
}

BPFAST_ALWAYS_INLINE bpfast_tile_vf bpfast_tile_sqrt_f(bpfast_tile_vf x)
{
    int i;
    for (i = 0; i < (int)(BPFAST_TILE_BYTES / sizeof(float)); i++)
        x[i] = __builtin_sqrtf(x[i]);
    return x;
}

/* The first `bytes` (a multiple of 4, below BPFAST_TILE_BYTES) of src to dst, in pieces
 * of fixed size: a partial vector's load or store without a call to memcpy. */
BPFAST_ALWAYS_INLINE void bpfast_tile_copy_part(void *dst, const void *src, size_t bytes)
{
    size_t at = 0;
#if BPFAST_TILE_BYTES == 64
    if (bytes & 32) {
        memcpy((char *)dst + at, (const char *)src + at, 32);
        at += 32;
    }
#endif
    if (bytes & 16) {
        memcpy((char *)dst + at, (const char *)src + at, 16);
        at += 16;
    }
    if (bytes & 8) {
        memcpy((char *)dst + at, (const char *)src + at, 8);
        at += 8;
    }
    if (bytes & 4)
        memcpy((char *)dst + at, (const char *)src + at, 4);
}

/* A partial vector's load (the other lanes 0) and store: one masked instruction with
 * AVX-512's masks, else the fixed-size pieces above (AVX2's VMASKMOV did not pay:
 * docs/performance.md). */
#if defined(BPFAST_TARGET_AVX512) && BPFAST_TILE_BYTES == 64
#define BPFAST_TILE_MASK_D(lanes) ((__mmask8)((1u << (lanes)) - 1u))
#define BPFAST_TILE_MASK_F(lanes) ((__mmask16)((1u << (lanes)) - 1u))
#define BPFAST_TILE_LOAD_PART_D(p, lanes) \
    ((bpfast_tile_vd)_mm512_maskz_loadu_pd(BPFAST_TILE_MASK_D(lanes), (p)))
#define BPFAST_TILE_LOAD_PART_F(p, lanes) \
    ((bpfast_tile_vf)_mm512_maskz_loadu_ps(BPFAST_TILE_MASK_F(lanes), (p)))
#define BPFAST_TILE_STORE_PART_D(p, v, lanes) \
    _mm512_mask_storeu_pd((p), BPFAST_TILE_MASK_D(lanes), (__m512d)(v))
#define BPFAST_TILE_STORE_PART_F(p, v, lanes) \
    _mm512_mask_storeu_ps((p), BPFAST_TILE_MASK_F(lanes), (__m512)(v))
#endif

#ifdef BPFAST_TILE_LOAD_PART_D
#define BPFAST_TILE_PART_LOAD(U, v, p, lanes) ((v) = BPFAST_TILE_LOAD_PART_##U(p, lanes))
#define BPFAST_TILE_PART_STORE(U, p, v, lanes) BPFAST_TILE_STORE_PART_##U(p, v, lanes)
#else
#define BPFAST_TILE_PART_LOAD(U, v, p, lanes) \
    bpfast_tile_copy_part(&(v), (p), (size_t)(lanes) * sizeof *(p))
#define BPFAST_TILE_PART_STORE(U, p, v, lanes) \
    bpfast_tile_copy_part((p), &(v), (size_t)(lanes) * sizeof *(p))
#endif

/* bpfast_tile_load_lanes_d/f: lanes [0, lanes) of p, the others 0, a whole vector when
 * lanes covers it (a plain move); bpfast_tile_store_lanes_d/f: the same lanes of v to p */
#define BPFAST_DEFINE_TILE_LANES(T, S, U, V)                                            \
BPFAST_ALWAYS_INLINE V bpfast_tile_load_lanes_##S(const T *p, ptrdiff_t lanes)          \
{                                                                                       \
    V v = {0};                                                                          \
    if (lanes >= (ptrdiff_t)(sizeof v / sizeof(T)))                                     \
        memcpy(&v, p, sizeof v);                                                        \
    else                                                                                \
        BPFAST_TILE_PART_LOAD(U, v, p, (int)lanes);                                     \
    return v;                                                                           \
}                                                                                       \
BPFAST_ALWAYS_INLINE void bpfast_tile_store_lanes_##S(T *p, V v, ptrdiff_t lanes)       \
{                                                                                       \
    if (lanes >= (ptrdiff_t)(sizeof v / sizeof(T)))                                     \
        memcpy(p, &v, sizeof v);                                                        \
    else                                                                                \
        BPFAST_TILE_PART_STORE(U, p, v, (int)lanes);                                    \
}
BPFAST_DEFINE_TILE_LANES(double, d, D, bpfast_tile_vd)
BPFAST_DEFINE_TILE_LANES(float, f, F, bpfast_tile_vf)

/* *ss += p^2, lane-wise in double (sums of squares are taken in double) */
BPFAST_ALWAYS_INLINE void bpfast_tile_sq_d(bpfast_tile_vd *ss, const bpfast_tile_vd *p)
{
    *ss += *p * *p;
}

BPFAST_ALWAYS_INLINE void bpfast_tile_sq_f(bpfast_tile_vd *ss, const bpfast_tile_vf *p)
{
    bpfast_tile_vf_half half;
    bpfast_tile_vd wide;
    memcpy(&half, p, sizeof half);
    wide = __builtin_convertvector(half, bpfast_tile_vd);
    *ss += wide * wide;
    memcpy(&half, (const char *)p + sizeof half, sizeof half);
    wide = __builtin_convertvector(half, bpfast_tile_vd);
    *ss += wide * wide;
}
#endif

#endif
