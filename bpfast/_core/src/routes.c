/* The route switches of routes.h: one definition each. */
#include "routes.h"

long long bpfast_small_gemm_limit = 512;
int bpfast_vector_math_allowed = 1;
int bpfast_vector_products_allowed = 1;
