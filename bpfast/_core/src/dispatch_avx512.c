/* The kernel families compiled for AVX-512F, with 64-byte vectors (tiles.h) and the
 * instructions only this target has where the sources ask for them (VSCALEF in
 * vmath_vec.inc, masked partial vectors in tiles.h). dispatch.c picks this copy where the
 * processor has AVX-512F. Empty unless the build dispatches (platform.h). */
#include "platform.h"

#if BPFAST_X86_DISPATCH

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC target("avx512f")
#endif

#define BPFAST_TARGET_AVX512 1
#define BPFAST_TABLE_FILL bpfast_fill_table_avx512
#include "dispatch_families.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif

#endif
