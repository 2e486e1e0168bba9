/* The one table of kernels (kernel_table.h), filled once at import with the widest copy
 * this processor runs, as cpu.h reports it (BPFAST_DISABLE_CPU_FEATURES included). An
 * ordinary function-pointer table rather than GCC's target_clones, whose IFUNC
 * relocations only glibc's loader resolves (musl's rejects the module). */
#include "kernels.h"

bpfast_kernel_table bpfast_kernels;

static const char *bpfast_target = "baseline";

const char *bpfast_dispatch_init(void)
{
    static int done = 0;
    const char *unknown = bpfast_cpu_init();
    if (done)
        return unknown;
    done = 1;
    bpfast_fill_table_baseline(&bpfast_kernels);
#if BPFAST_X86_DISPATCH
    if (bpfast_cpu_has(BPFAST_CPU_AVX512F)) {
        bpfast_fill_table_avx512(&bpfast_kernels);
        bpfast_target = "avx512f";
        /* the panel kernel beats the BLAS's packed products only with AVX-512's
           registers (docs/performance.md); elsewhere it runs when a test or a tuning
           switch turns it on */
        bpfast_panel_allowed = 1;
    } else if (bpfast_cpu_has(BPFAST_CPU_AVX2 | BPFAST_CPU_FMA)) {
        bpfast_fill_table_avx2(&bpfast_kernels);
        bpfast_target = "avx2";
    }
#endif
    return unknown;
}

const char *bpfast_dispatch_target(void)
{
    return bpfast_target;
}
