/* Many panel products in a row, with thread counts and shapes that change from one to
 * the next, each checked against a plain triple loop. Built by tests/test_kernel_paths.py
 * with ThreadSanitizer: the pool's hand-over must have no data race.
 * Linked with the package's C sources (bpfast/_core/src/*.c).
 * Usage: panel_pool_stress ITERATIONS; exit status 0 when every checked entry matched,
 * 1 when one did not, 77 when this processor has no panel kernel (nothing to test). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "kernels.h"

int main(int argc, char **argv)
{
    static double A[64 * 64], B[64 * 64], C[64 * 64];
    long iterations = argc > 1 ? atol(argv[1]) : 100000, it, bad = 0;
    int i;
    bpfast_dispatch_init();
    if (!bpfast_panel_available())
        return 77;
    for (i = 0; i < 64 * 64; i++) {
        A[i] = (i % 11) - 5;
        B[i] = (i % 7) - 3;
    }
    for (it = 0; it < iterations; it++) {
        int m = 1 + it % 13, n = 1 + (it * 7) % 64, k = 1 + (it * 3) % 9;
        int threads = 1 + it % 4, trans_a = (int)(it & 1), r, c, p;
        bpfast_panel_d(trans_a, m, n, k, 1.0, A, 64, B, 64, 0.0, C, 64, threads);
        if (it % 7 == 0)  /* small integers: every sum is exact */
            for (r = 0; r < m; r++)
                for (c = 0; c < n; c++) {
                    double s = 0;
                    for (p = 0; p < k; p++)
                        s += (trans_a ? A[p * 64 + r] : A[r * 64 + p]) * B[p * 64 + c];
                    bad += s != C[r * 64 + c];
                }
        if (it % 20000 == 0)
            usleep(500);  /* let the helpers fall asleep now and then */
    }
    printf("%ld wrong entries\n", bad);
    return bad != 0;
}
