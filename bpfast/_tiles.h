/* What the register-tile kernels (_grad_update.h, _layer_forward.h) share: the target,
 * the run-time check, the tile shape and the vector types.
 *
 * A tile is 4 rows by 4 vectors of 64 bytes (4 x 32 doubles, 4 x 64 floats): 16
 * accumulators, which needs AVX-512's 32 vector registers. The kernels are compiled for
 * AVX-512 only, through a function attribute, so the build stays portable;
 * bpfast_tiles_available() says whether this processor runs them, and elsewhere (or
 * with another compiler or processor family, where they are not compiled at all) the
 * callers keep BLAS and the separate passes.
 */
#ifndef BPFAST_TILES_H
#define BPFAST_TILES_H

#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER) && \
    !defined(BPFAST_NO_TARGET_CLONES)
#define BPFAST_HAVE_TILES 1
#define BPFAST_TILE_TARGET __attribute__((target("avx512f")))
#include <immintrin.h>
#else
#define BPFAST_HAVE_TILES 0
#define BPFAST_TILE_TARGET
#endif

static int bpfast_tiles_available(void)
{
#if BPFAST_HAVE_TILES
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
#else
    return 0;
#endif
}

#define BPFAST_TILE_NR 4 /* rows per tile */
#define BPFAST_TILE_NV 4 /* vectors of columns per tile */

#if BPFAST_HAVE_TILES
typedef double bpfast_tile_vd __attribute__((vector_size(64)));
typedef float bpfast_tile_vf __attribute__((vector_size(64)));
typedef long long bpfast_tile_md __attribute__((vector_size(64)));  /* lane masks */
typedef int bpfast_tile_mf __attribute__((vector_size(64)));
#endif

#endif
