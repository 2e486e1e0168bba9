"""Each kernel route that a switch of ``bpfast.engine.tuning`` toggles, timed on and off.

    python bench/route_choices.py [--threads 1] [--rounds 7] [--repeats 3]
        [--dtype float32] [--route NAME ...]

The cases are those of the table "Figures behind the kernels' design choices" in
docs/performance.md, one row per route the switches reach. Each case times one training
epoch (``Network.fit``, ``epochs=1``, no shuffle, as bench/ab_epoch.py does) with the
route on and with it off, side by side in one process: every round times both sides
(``--repeats`` fits each), in alternating order, so a change in the machine's load hits
both alike; the medians over all rounds and their ratio on/off are printed (below 1: the
route is faster). A route the processor lacks (the AVX-512-only ones) prints "not
available here" instead of a time.

Each side has its own network, built and warmed up inside its ``tuning`` block, since
some switches are read when a trainer is built. Timing whole epochs dilutes a kernel's
gain with the rest of the step: the ratios say what a route is worth to training.

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE on the command line (``env -u ...``) so
OpenBLAS runs the kernels it would pick on a user's machine.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

try:
    import bpfast
except ImportError:  # run from a source tree built in place, without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bpfast
from bpfast._core import kernels as _kernels
from bpfast.benchmarks import blas_limit, blas_threads, cpu_name
from bpfast.engine import tuning

#: Every product's m * n * k is below this: the plain loops (or the fused kernel) take
#: them all.
EVERYWHERE = 1 << 62


class Case(NamedTuple):
    label: str        # the case as the doc's table names it
    sizes: tuple
    activations: tuple
    rows: int
    batch: int
    optimizer: str = "sgd"
    loss: str = "mse"


class Route(NamedTuple):
    name: str                       # the doc's "choice" column, shortened
    on: dict                        # tuning(**on): the route taken
    off: dict                       # tuning(**off): the route not taken
    available: Callable[[], bool]   # whether this processor and build have the route
    cases: tuple


def _vector_math():
    with tuning(vector_math=True):
        return bool(_kernels.vector_math())


S = ((64, 32, 10), ("sigmoid", "sigmoid"), 1797)
M = ((784, 128, 10), ("tanh", "sigmoid"), 4000)
RELU = ("relu", "softmax")  # scikit-learn's default hidden activation, a classifier's output

ROUTES = (
    Route("panel kernel for mid-sized products", {"panel_gemm": True},
          {"panel_gemm": False}, _kernels.panel_gemm_available,
          (Case("M (784-128-10), batch 64", *M, 64),)),
    # the loops' limit on its own: one-row products kept off their own route (below)
    Route("plain loops for tiny products",
          {"small_gemm_limit": EVERYWHERE, "vector_products": False},
          {"small_gemm_limit": 0, "vector_products": False}, lambda: True,
          (Case("16-16-4, batch 1", (16, 16, 4), ("sigmoid", "sigmoid"), 1797, 1),
           Case("64-32-10, batch 1", *S, 1),
           Case("64-32-10, batch 32", *S, 32))),
    Route("plain loops up to the default 512",
          {"small_gemm_limit": 512, "vector_products": False},
          {"small_gemm_limit": 0, "vector_products": False}, lambda: True,
          (Case("16-16-4, batch 1", (16, 16, 4), ("sigmoid", "sigmoid"), 1797, 1),
           Case("64-32-10, batch 1", *S, 1))),
    Route("one-row products without the BLAS", {"vector_products": True},
          {"vector_products": False}, lambda: True,
          (Case("64-32-10, batch 1", *S, 1),
           Case("64-128-10 relu, batch 1", (64, 128, 10), ("relu", "softmax"), 1797, 1,
                "sgd", "cross_entropy"),
           Case("256-256-10 relu, batch 1", (256, 256, 10), ("relu", "softmax"), 1797, 1,
                "sgd", "cross_entropy"))),
    Route("vector math and fused pointwise passes", {"vector_math": True},
          {"vector_math": False}, _vector_math,
          (Case("S32 (64-32-10 sigmoid), batch 32", *S, 32),
           Case("M (784-128-10 tanh/sigmoid), batch 32", *M, 32))),
    Route("fused gradient-and-update", {"fused_update_limit": EVERYWHERE},
          {"fused_update_limit": 0}, _kernels.fused_update_available,
          (Case("nesterov 32 x 64 x 64", (64, 64, 10), S[1], 1797, 32, "nesterov"),
           Case("nesterov 32 x 128 x 128", (128, 128, 10), S[1], 1797, 32, "nesterov"),
           Case("nesterov 64 x 128 x 128", (128, 128, 10), S[1], 1797, 64, "nesterov"),
           Case("nesterov 64 x 784 x 128", *M, 64, "nesterov"))),
    Route("fused gradient-and-update up to the default 2^19",
          {"fused_update_limit": 1 << 19}, {"fused_update_limit": 0},
          _kernels.fused_update_available,
          (Case("64-32-10 sigmoid, adam, batch 32", *S, 32, "adam"),
           Case("64-32-10 relu, adam, batch 32", (64, 32, 10), RELU, 1797, 32, "adam",
                "cross_entropy"),
           Case("64-100-10 relu, adam, batch 200", (64, 100, 10), RELU, 1797, 200, "adam",
                "cross_entropy"),
           Case("64-128-10 relu, momentum, batch 32", (64, 128, 10), RELU, 1797, 32,
                "momentum", "cross_entropy"))),
    Route("first layer stored transposed when small", {"first_transpose_limit": 1 << 20},
          {"first_transpose_limit": 0}, lambda: True,
          (Case("32 x 64 x 64 first layer (64-64-10), batch 32", (64, 64, 10), S[1],
                1797, 32),)),
)


class Side:
    """One side of a case: its own network, trained within its switches."""

    def __init__(self, case, switches, X, Y):
        self.switches, self.X, self.Y = switches, X, Y
        self.kw = dict(epochs=1, batch_size=case.batch, learning_rate=0.01,
                       optimizer=case.optimizer, loss=case.loss, shuffle=False)
        with tuning(**switches):
            self.net = bpfast.Network(list(case.sizes), activations=list(case.activations),
                                      dtype=X.dtype, seed=0)
            self.net.fit(X, Y, **self.kw)  # warm-up: the trainer, caches, BLAS threads

    def time(self, repeats):
        times = []
        with tuning(**self.switches):
            for _ in range(repeats):
                t0 = time.perf_counter()
                self.net.fit(self.X, self.Y, **self.kw)
                times.append(time.perf_counter() - t0)
        return times


def measure(route, case, dtype, rounds, repeats):
    """Median seconds per epoch with the route on and off, alternating the order."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((case.rows, case.sizes[0])).astype(dtype)
    Y = np.eye(case.sizes[-1], dtype=dtype)[rng.integers(0, case.sizes[-1], case.rows)]
    sides = (Side(case, route.on, X, Y), Side(case, route.off, X, Y))
    samples = ([], [])
    for r in range(rounds):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            samples[k].extend(sides[k].time(repeats))
    return statistics.median(samples[0]), statistics.median(samples[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None,
                   help="hold the BLAS (and so bpfast's own pool) to this many threads")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--repeats", type=int, default=5, help="timed fits per side per round")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--route", action="append", choices=[r.name for r in ROUTES],
                   help="a route (repeatable; default: all)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        p.error("--rounds and --repeats must be positive")
    with blas_limit(args.threads):
        print(f"{cpu_name()}; features {', '.join(bpfast.cpu_features()) or 'none'}; "
              f"kernels {_kernels.kernel_target()}; BLAS threads {blas_threads()}; "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    print(f"{args.dtype}, rounds={args.rounds}, repeats={args.repeats}: median ms per "
          "epoch, route on and off")
    print(f"{'route':50} {'case':48} {'on':>9} {'off':>9} {'on/off':>7}")
    for route in ROUTES:
        if args.route and route.name not in args.route:
            continue
        if not route.available():
            print(f"{route.name:50} {'(every case)':48} not available here", flush=True)
            continue
        for case in route.cases:
            with blas_limit(args.threads):
                on, off = measure(route, case, args.dtype, args.rounds, args.repeats)
            print(f"{route.name:50} {case.label:48} {on * 1e3:9.3f} {off * 1e3:9.3f} "
                  f"{on / off:7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
