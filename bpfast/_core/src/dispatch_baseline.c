/* The kernel families for the build's baseline (x86-64: SSE2), the copy every processor
 * runs; in a portable build (BPFAST_PORTABLE) the only one. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BPFAST_TABLE_FILL bpfast_fill_table_baseline
#include "dispatch_families.inc"
