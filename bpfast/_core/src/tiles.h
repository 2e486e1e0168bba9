/* What the register-tile kernels (grad_update.inc, layer_forward.inc) share: the
 * availability check, the tile shape and the vector types.
 *
 * A tile is 4 rows by 4 vectors of 64 bytes (4 x 32 doubles, 4 x 64 floats): 16
 * accumulators, which needs AVX-512's 32 vector registers. The kernels are compiled for
 * AVX-512 only (dispatch_avx512.c); bpfast_tiles_available() says whether they run here
 * (the processor has AVX-512F and BPFAST_DISABLE_CPU_FEATURES leaves it), and elsewhere
 * (or in a portable build, where they are not compiled at all) the callers keep BLAS and
 * the separate passes.
 */
#ifndef BPFAST_TILES_H
#define BPFAST_TILES_H

#include <stddef.h>
#include <string.h>
#include "platform.h"
#include "cpu.h"

#define BPFAST_HAVE_TILES BPFAST_X86_DISPATCH

static inline int bpfast_tiles_available(void)
{
    return BPFAST_HAVE_TILES && bpfast_cpu_has(BPFAST_CPU_AVX512F);
}

#define BPFAST_TILE_NR 4 /* rows per tile */
#define BPFAST_TILE_NV 4 /* vectors of columns per tile */

#ifdef BPFAST_TARGET_AVX512
typedef double bpfast_tile_vd __attribute__((vector_size(64)));
typedef float bpfast_tile_vf __attribute__((vector_size(64)));
typedef long long bpfast_tile_md __attribute__((vector_size(64)));  /* lane masks */
typedef int bpfast_tile_mf __attribute__((vector_size(64)));
#endif

#endif
