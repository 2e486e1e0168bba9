/* The kernel families compiled for AVX2 with FMA (dispatch.c picks this copy where the
 * processor has both but not AVX-512F). Empty unless the build dispatches (platform.h). */
#include "platform.h"

#if BPFAST_X86_DISPATCH

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif

#define BPFAST_TARGET_AVX2 1
#define BPFAST_TABLE_FILL bpfast_fill_table_avx2
#include "dispatch_families.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif

#endif
