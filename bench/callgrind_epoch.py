"""Instruction counts of training epochs for two builds of bpfast, under callgrind.

    python bench/callgrind_epoch.py BEFORE_TREE AFTER_TREE [--case S32] [--epochs 3]
        [--dtype float32]

Timings on a shared machine are noisy; the instructions executed are not. Each tree (a
source tree with its extension built in place) runs, under ``valgrind --tool=callgrind``
with one BLAS thread, a script that builds the case's network and data, fits once to
warm up, then fits ``--epochs`` more epochs; and once more without those epochs. The
difference of the two totals is the epochs' instructions (Python start-up, imports and
set-up cancel out). Prints both and the ratio after/before.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

from ab_epoch import CASES as TIMED_CASES  # this folder's timing harness

#: name -> (sizes, activations, rows, batch, loss, optimizer): ab_epoch.py's small cases,
#: and M on fewer rows (callgrind runs some fifty times slower than the processor)
CASES = {
    **{name: TIMED_CASES[name] for name in ("S1", "S32", "S32 adam")},
    "M small": ((784, 128, 10), ("tanh", "sigmoid"), 1000, 64, "mse", "sgd"),
    "M small momentum": ((784, 128, 10), ("relu", "softmax"), 1000, 64, "cross_entropy",
                         "momentum"),
}

SCRIPT = """
import numpy as np, bpfast
sizes, acts, rows, batch, loss, opt = {case!r}
rng = np.random.default_rng(0)
X = rng.standard_normal((rows, sizes[0])).astype({dtype!r})
Y = np.eye(sizes[-1], dtype={dtype!r})[rng.integers(0, sizes[-1], rows)]
net = bpfast.Network(sizes, activations=list(acts), dtype={dtype!r}, seed=0)
kw = dict(batch_size=batch, learning_rate=0.01, optimizer=opt, loss=loss, shuffle=False)
net.fit(X, Y, epochs=1, **kw)
if {epochs}:
    net.fit(X, Y, epochs={epochs}, **kw)
"""


def instructions(tree, case, epochs, dtype):
    """Total instructions of the script under callgrind, importing bpfast from tree."""
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "run.py")
        with open(script, "w") as f:
            f.write(SCRIPT.format(case=CASES[case], epochs=epochs, dtype=dtype))
        env = dict(os.environ, PYTHONPATH=tree, OPENBLAS_NUM_THREADS="1")
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
             sys.executable, script],
            env=env, cwd=tmp, capture_output=True, text=True, check=True)
        return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs=2, metavar="TREE", help="before and after source trees")
    p.add_argument("--case", action="append", choices=sorted(CASES),
                   help="a case (repeatable; default: all)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = p.parse_args(argv)
    for case in args.case or list(CASES):
        counts = []
        for tree in args.trees:
            counts.append(instructions(tree, case, args.epochs, args.dtype)
                          - instructions(tree, case, 0, args.dtype))
        print(f"{case:18s} before {counts[0]:>14,d}  after {counts[1]:>14,d}  "
              f"after/before {counts[1] / counts[0]:.4f}", flush=True)


if __name__ == "__main__":
    main()
