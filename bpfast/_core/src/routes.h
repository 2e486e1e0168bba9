/* The switches that send calls one route or another (tests and benchmarks set them from
 * Python through _kernels' set_* functions), defined once in routes.c, and the
 * availability checks that combine them with the processor's features (cpu.h).
 */
#ifndef BPFAST_ROUTES_H
#define BPFAST_ROUTES_H

#include "tiles.h"

/* Products with m * n * k up to this many multiply-adds take the plain-loop path
 * (small_gemm.inc): OpenBLAS's small-matrix kernels win above it (docs/performance.md). */
extern long long bpfast_small_gemm_limit;

/* 0 sends every array exp, tanh, sigmoid and silu, and the fused pointwise passes, to
 * the portable loops (tests compare the two routes). */
extern int bpfast_vector_math_allowed;

/* 0 sends one-row products back to the general path (tests compare the two). */
extern int bpfast_vector_products_allowed;

/* Whether the array functions and the fused passes run vmath_vec.inc's and
 * pointwise_fused.inc's vector versions. */
static inline int bpfast_vector_math(void)
{
    return bpfast_tiles_available() && bpfast_vector_math_allowed;
}

/* Whether gemm takes the vector-product kernels (vector_products.inc). */
static inline int bpfast_vector_products(void)
{
    return bpfast_tiles_available() && bpfast_vector_products_allowed;
}

#endif
