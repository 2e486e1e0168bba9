/* The C kernels as a shared library loaded by another C library's loader (musl's, in
 * tests/test_cpu_dispatch.py): the dispatch table fills at start-up and a few kernels of
 * each family give the values of the plain formulas. Exit 0 on success, 1 on a wrong
 * value. */
#include <math.h>
#include <stdio.h>

#include "kernels.h"

static int close_to(double got, double want) {
    return fabs(got - want) <= 1e-12 * (1 + fabs(want));
}

int main(void) {
    double z[37], a[37], c[4] = {0, 0, 0, 0};
    const double x[6] = {1, 2, 3, 4, 5, 6}, y[6] = {1, 0, 0, 1, 1, 1};
    int i, bad = 0;
    const char *unknown = bpfast_dispatch_init();
    if (unknown && *unknown) {
        printf("unknown features: %s\n", unknown);
        return 1;
    }
    for (i = 0; i < 37; i++)
        z[i] = -3 + i / 6.0;
    bpfast_exp_row_d(37, z, a);
    for (i = 0; i < 37; i++)
        bad |= !close_to(a[i], exp(z[i]));
    bad |= !close_to(bpfast_max_abs_d(z, 37), 3.0);
    /* C = X Y^T with X, Y 2 x 3 row-major: [[1 2 3],[4 5 6]] [[1 0 0],[1 1 1]]^T */
    bpfast_small_dgemm(0, 1, 2, 2, 3, 1.0, x, 3, y, 3, 0.0, c, 2);
    bad |= !close_to(c[0], 1) || !close_to(c[1], 6) || !close_to(c[2], 4) || !close_to(c[3], 15);
    printf("target %s: %s\n", bpfast_dispatch_target(), bad ? "WRONG" : "ok");
    return bad;
}
