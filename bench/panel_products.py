"""The panel kernel against the BLAS, one product at a time, on a given thread count.

    python bench/panel_products.py [--threads 2] [--rounds 25] [--dtype float32]

The products are those of a 784-128-10 step at a batch of 64 (the M case) and their
shapes with the layer stored the other way round: C = op(A) B + C, op(A) = A or A^T,
timed through the compiled core's gemm with the panel kernel switched on (on
``--threads`` threads) and off (the BLAS, held to as many threads by threadpoolctl),
alternating, 20 calls per timing; medians of ``--rounds`` timings and their ratio
(panel / BLAS; below 1: the panel kernel is faster). Where the processor has no panel
kernel it says so. Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE on the command line
(``env -u ...``) so OpenBLAS runs the kernels it would pick on a user's machine.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

try:
    import bpfast  # noqa: F401
except ImportError:  # run from a source tree built in place, without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bpfast._core import kernels as _kernels
from bpfast.benchmarks import blas_limit, cpu_name
from bpfast.engine import tuning

#: (m, n, k, op(A) = A^T): the forward product X W, the update X^T D, and both again
#: with the layer stored transposed
PRODUCTS = ((64, 128, 784, False), (784, 128, 64, True),
            (128, 784, 64, True), (64, 784, 128, False))
CALLS = 20


def _time(A, B, C, trans_a):
    start = time.perf_counter()
    for _ in range(CALLS):
        _kernels.gemm_call(trans_a, False, 1.0, A, B, 1.0, C)
    return (time.perf_counter() - start) / CALLS


def measure(shape, dtype, threads, rounds):
    """Median seconds per product with the panel kernel and with the BLAS."""
    m, n, k, trans_a = shape
    rng = np.random.default_rng(0)
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    C = np.zeros((m, n), dtype)
    sides = {"panel": [], "blas": []}
    for r in range(rounds):
        for side in (("panel", "blas") if r % 2 == 0 else ("blas", "panel")):
            with tuning(panel_gemm=side == "panel", panel_threads=threads):
                sides[side].append(_time(A, B, C, trans_a))
    return statistics.median(sides["panel"]), statistics.median(sides["blas"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = p.parse_args(argv)
    print(f"{cpu_name()}; kernels {_kernels.kernel_target()}; {args.threads} thread(s); "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    if not _kernels.panel_gemm_available():
        print("panel kernel: not available here")
        return
    print(f"{args.dtype}, medians of {args.rounds} x {CALLS} products")
    print(f"{'m x n x k':<18}{'op(A)':<7}{'panel us':>10}{'GFLOP/s':>9}"
          f"{'BLAS us':>10}{'GFLOP/s':>9}{'panel/BLAS':>12}")
    with blas_limit(args.threads):
        for shape in PRODUCTS:
            m, n, k, trans_a = shape
            on, off = measure(shape, np.dtype(args.dtype), args.threads, args.rounds)
            gf = 2 * m * n * k / 1e9
            print(f"{f'{m} x {n} x {k}':<18}{'A^T' if trans_a else 'A':<7}{on * 1e6:>10.0f}"
                  f"{gf / on:>9.1f}{off * 1e6:>10.0f}{gf / off:>9.1f}{on / off:>12.2f}")


if __name__ == "__main__":
    main()
