"""Before/after timing of training epochs for two builds of bpfast, side by side.

    python bench/ab_epoch.py BEFORE_TREE AFTER_TREE [--rounds 5] [--threads 1]

Each tree is a source tree with its extension built in place (``python setup.py
build_ext --inplace``). Rounds alternate the two trees, each in a fresh subprocess that
imports bpfast from that tree and times ``Network.fit`` for one epoch per call, so a
change in the machine's load hits both alike. Prints, per case, the median epoch time of
each tree over all rounds and the ratio after/before.

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE on the command line (``env -u ...``) so
OpenBLAS runs the kernels it would pick on a user's machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

#: name -> (sizes, activations, rows, batch, loss, optimizer)
CASES = {
    "S1": ((64, 32, 10), ("sigmoid", "sigmoid"), 1797, 1, "mse", "sgd"),
    "S32": ((64, 32, 10), ("sigmoid", "sigmoid"), 1797, 32, "mse", "sgd"),
    "S32 softmax/CE": ((64, 32, 10), ("tanh", "softmax"), 1797, 32, "cross_entropy", "sgd"),
    "S32 adam": ((64, 32, 10), ("sigmoid", "sigmoid"), 1797, 32, "mse", "adam"),
    "M": ((784, 128, 10), ("tanh", "sigmoid"), 10000, 64, "mse", "sgd"),
    "M softmax/CE": ((784, 128, 10), ("relu", "softmax"), 10000, 64, "cross_entropy", "sgd"),
    # scikit-learn's defaults (relu, Adam): the register-tile kernels' routes
    "S32 relu adam": ((64, 32, 10), ("relu", "softmax"), 1797, 32, "cross_entropy", "adam"),
    "digits relu adam": ((64, 100, 10), ("relu", "softmax"), 1797, 200, "cross_entropy",
                         "adam"),
    "M relu adam": ((784, 128, 10), ("relu", "softmax"), 10000, 64, "cross_entropy", "adam"),
}


def _worker(dtype, repeats, cases):
    """Time the cases in this process; print {case: [seconds per epoch, ...]}."""
    import numpy as np

    import bpfast

    rng = np.random.default_rng(0)
    out = {}
    for name in cases:
        sizes, acts, rows, batch, loss, opt = CASES[name]
        X = rng.standard_normal((rows, sizes[0])).astype(dtype)
        Y = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], rows)]
        net = bpfast.Network(sizes, activations=list(acts), dtype=dtype, seed=0)
        kw = dict(epochs=1, batch_size=batch, learning_rate=0.01, optimizer=opt, loss=loss,
                  shuffle=False)
        net.fit(X, Y, **kw)  # warm-up: trainer, BLAS threads, caches
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            net.fit(X, Y, **kw)
            times.append(time.perf_counter() - t)
        out[name] = times
    print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs=2, metavar="TREE", help="before and after source trees")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="timed fits per case per round")
    p.add_argument("--threads", type=int, default=None, help="OPENBLAS_NUM_THREADS")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--case", action="append", choices=list(CASES),
                   help="a case (repeatable; default: all)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cases = args.case or list(CASES)
    if args.worker:
        return _worker(args.dtype, args.repeats, cases)
    env = dict(os.environ)
    if args.threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(args.threads)
    samples = ({}, {})
    for _ in range(args.rounds):
        for side, tree in enumerate(args.trees):
            run_env = dict(env, PYTHONPATH=os.path.abspath(tree))
            res = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *args.trees, "--worker",
                 "--dtype", args.dtype, "--repeats", str(args.repeats),
                 *[a for c in cases for a in ("--case", c)]],
                env=run_env, cwd=os.path.abspath(tree), capture_output=True, text=True,
                check=True)
            for case, times in json.loads(res.stdout.splitlines()[-1]).items():
                samples[side].setdefault(case, []).extend(times)
    print(f"{args.dtype}, threads={args.threads or 'default'}, rounds={args.rounds}, "
          f"repeats={args.repeats}: median ms per epoch")
    print(f"{'case':16} {'before':>10} {'after':>10} {'after/before':>13}")
    for case in cases:
        b = statistics.median(samples[0][case]) * 1e3
        a = statistics.median(samples[1][case]) * 1e3
        print(f"{case:16} {b:10.3f} {a:10.3f} {a / b:13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
