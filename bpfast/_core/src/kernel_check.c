/* Which entries of the dispatch table the copy in use left empty (see kernels.h). Apart
 * from dispatch.c because kernels.h, which that includes, makes every kernel's name a
 * call through the table. */
#include <stddef.h>
#include "kernel_table.h"

extern bpfast_kernel_table bpfast_kernels;

int bpfast_missing_kernels(const char **names, int cap);

#define BPFAST_NAME_IF_MISSING(R, NAME, PARAMS)                                         \
    if (bpfast_kernels.NAME == NULL && n < cap)                                         \
        names[n++] = #NAME;

int bpfast_missing_kernels(const char **names, int cap)
{
    int n = 0;
    BPFAST_KERNELS(BPFAST_NAME_IF_MISSING)
    BPFAST_KERNELS_TILES(BPFAST_NAME_IF_MISSING)
    BPFAST_KERNELS_PANEL(BPFAST_NAME_IF_MISSING)
    return n;
}
