"""exp, tanh, sigmoid and silu over one array: vmath_vec.inc's vector versions against the
portable loops (``tuning(vector_math=...)``), side by side in one process.

    python bench/vector_math_rows.py [--size 4096] [--rounds 30] [--calls 200]

Each round times ``--calls`` calls of ``kernels.activation_rows`` with the route on and
with it off, in alternating order, so a change in the machine's load hits both alike;
the medians over the rounds (ns per call) and their ratio on/off are printed (below 1:
the vector versions are faster). Values are standard normal: the common case, in which
no lane needs exp's near-overflow or subnormal steps.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

try:
    import bpfast
except ImportError:  # run from a source tree built in place, without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bpfast
from bpfast._core import kernels as _kernels
from bpfast.activations import activation_codes
from bpfast.benchmarks import cpu_name
from bpfast.engine import tuning


def time_route(code, z, on, calls):
    with tuning(vector_math=on):
        start = time.perf_counter()
        for _ in range(calls):
            _kernels.activation_rows(code, z)
        return (time.perf_counter() - start) / calls * 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="values per call")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200, help="calls per side per round")
    args = parser.parse_args()
    print(f"{cpu_name()}; kernels {_kernels.kernel_target()}; vector math available: "
          f"{_kernels.vector_math()}; {args.size} values per call")
    print(f"{'dtype':8} {'function':8} {'on ns':>9} {'off ns':>9} {'on/off':>7}")
    for dtype in (np.float64, np.float32):
        z = np.random.default_rng(0).standard_normal(args.size).astype(dtype)
        for name in ("exp", "tanh", "sigmoid", "silu"):
            code = int(activation_codes([name])[0])
            times = {True: [], False: []}
            for r in range(args.rounds):
                for on in ((True, False) if r % 2 else (False, True)):
                    times[on].append(time_route(code, z, on, args.calls))
            on, off = statistics.median(times[True]), statistics.median(times[False])
            print(f"{np.dtype(dtype).name:8} {name:8} {on:9.0f} {off:9.0f} {on / off:7.3f}")


if __name__ == "__main__":
    main()
