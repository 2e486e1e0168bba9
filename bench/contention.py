"""Do thread pools fight? bpfast's calls beside other libraries' and other processes' work.

    python bench/contention.py [--repeats 30] [--neighbours 0,1,2] [--json out.json]
    python bench/contention.py --ab BEFORE_TREE AFTER_TREE [--repeats 30]

The scenarios of issue 18, each timed call by call (medians over ``--repeats``):

- ``forward alone``: ``net.forward`` on the 359 held-out digits (the demo's 64-64-10
  relu/softmax network), called back to back;
- ``forward after epoch``: the same call right after a one-epoch ``fit`` (batch 32) returns;
- ``forward in callback``: the same call from ``fit``'s per-epoch callback, as the command
  line does to show validation accuracy;
- ``forward after pause``: the same call after sleeping as long as an epoch takes, with no
  other work: what any call pays for not following another one at once (cold caches,
  the scheduler), which no thread pool causes;
- ``backprop alone`` / ``numpy alone``: ``bpfast.backprop`` of the 784-128-10 network on
  256 rows, and a NumPy product (256x784 @ 784x512), each called back to back;
- ``backprop after numpy`` / ``numpy after backprop``: the two alternating;
- ``reference forward after its epoch``: the NumPy reference's forward after
  ``reference.fit``, for scale.

Each scenario runs with 0, 1 and 2 neighbour processes that keep the cores busy with
their own NumPy products (1024-square, NumPy's default thread count). For every row the
table gives the median call time, its ratio to the same call alone beside the same
neighbours (``vs alone``: what interleaving costs) and to the call alone on a quiet
machine (``vs quiet``).

``--ab`` runs the harness on two source trees (each with its extension built in place),
in fresh subprocesses, in the order before, after, after, before, and prints each row's
medians side by side; compare ratios within that one run.

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

NEIGHBOUR = (
    "import numpy as np, sys\n"
    "a = np.random.default_rng(0).standard_normal((1024, 1024))\n"
    "a @ a\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    a @ a\n"
)

#: scenario -> the call it times (the "alone" row of that call)
ALONE = {
    "forward alone": "forward alone",
    "forward after epoch": "forward alone",
    "forward in callback": "forward alone",
    "forward after pause": "forward alone",
    "backprop alone": "backprop alone",
    "backprop after numpy": "backprop alone",
    "numpy alone": "numpy alone",
    "numpy after backprop": "numpy alone",
    "reference forward after its epoch": "reference forward alone",
    "reference forward alone": "reference forward alone",
}


class Neighbours:
    """``n`` processes multiplying NumPy matrices until the block ends."""

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        for _ in range(self.n):
            p = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], stdout=subprocess.PIPE,
                                 text=True)
            self.procs.append(p)
        for p in self.procs:
            p.stdout.readline()  # "ready": its first product is done
        time.sleep(0.5 if self.n else 0.0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        return False


def _timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def measure(repeats):
    """``{scenario: [seconds per call, ...]}`` in this process, in the current conditions."""
    import numpy as np

    import bpfast
    from bpfast import reference
    from bpfast.datasets import load_digits

    X8, y = load_digits()
    X = X8 / 16.0
    Y = np.eye(10)[y]
    order = np.random.default_rng(0).permutation(len(X))
    test, train = order[:359], order[359:]
    Xtr, Ytr, Xv = X[train], Y[train], X[test]
    fit = dict(batch_size=32, learning_rate=0.1, loss="cross_entropy", shuffle=False)
    net = bpfast.Network([64, 64, 10], activations=["relu", "softmax"], seed=0)
    rng = np.random.default_rng(1)
    Wm = [rng.standard_normal((128, 784)) * 0.05, rng.standard_normal((10, 128)) * 0.1]
    bm = [np.zeros(128), np.zeros(10)]
    Xb, Yb = rng.standard_normal((256, 784)), rng.uniform(size=(256, 10))
    P, Q = rng.standard_normal((256, 784)), rng.standard_normal((784, 512))

    def forward():
        net.forward(Xv)

    def backprop():
        bpfast.backprop(Wm, bm, ["tanh", "sigmoid"], Xb, Yb)

    def product():
        P @ Q

    out = {k: [] for k in ALONE}
    for f in (forward, backprop, product):  # warm-up: buffers, pools, first-call costs
        f()
    net.fit(Xtr, Ytr, epochs=1, **fit)
    for _ in range(repeats):
        out["forward alone"].append(_timed(forward))
    for _ in range(repeats):
        net.fit(Xtr, Ytr, epochs=1, **fit)
        out["forward after epoch"].append(_timed(forward))
    net.fit(Xtr, Ytr, epochs=repeats, callback=lambda *a: out["forward in callback"].append(
        _timed(forward)), **fit)
    epoch = statistics.median(_timed(lambda: net.fit(Xtr, Ytr, epochs=1, **fit))
                              for _ in range(5))
    for _ in range(repeats):
        time.sleep(epoch)
        out["forward after pause"].append(_timed(forward))
    for _ in range(repeats):
        out["backprop alone"].append(_timed(backprop))
    for _ in range(repeats):
        out["numpy alone"].append(_timed(product))
    for _ in range(repeats):
        out["numpy after backprop"].append(_timed(product))
        out["backprop after numpy"].append(_timed(backprop))
    W, b = [w.copy() for w in net.weights], [c.copy() for c in net.biases]
    acts = list(net.activations)
    for _ in range(repeats):
        out["reference forward alone"].append(
            _timed(lambda: reference.forward(W, b, acts, Xv)))
    for _ in range(max(3, repeats // 5)):  # the reference's epoch takes far longer
        W1, b1, _ = reference.fit(W, b, acts, Xtr, Ytr, epochs=1, batch_size=32,
                                  learning_rate=0.1, loss="cross_entropy")
        out["reference forward after its epoch"].append(
            _timed(lambda: reference.forward(W1, b1, acts, Xv)))
    return out


def run(repeats, neighbours):
    """``{neighbour count: {scenario: median seconds}}``, plus every sample."""
    result = {}
    for n in neighbours:
        with Neighbours(n):
            times = measure(repeats)
        result[str(n)] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                              "repeats": v} for k, v in times.items()}
    return result


def _us(seconds):
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-2 else f"{seconds * 1e3:.1f} ms"


def table(result):
    quiet = result.get("0")
    lines = ["| scenario | neighbours | median | vs alone | vs quiet |", "|---|---|---|---|---|"]
    for n, rows in result.items():
        for k, v in rows.items():
            alone = rows[ALONE[k]]["median"]
            q = quiet[ALONE[k]]["median"] if quiet else None
            lines.append(f"| {k} | {n} | {_us(v['median'])} | {v['median'] / alone:.2f}x | "
                         + (f"{v['median'] / q:.2f}x |" if q else "- |"))
    return "\n".join(lines)


def ab(before, after, repeats, neighbours):
    """Both trees in fresh subprocesses, before-after-after-before; medians side by side."""
    runs = {"before": [], "after": []}
    for label in ("before", "after", "after", "before"):
        tree = before if label == "before" else after
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        cmd = [sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
               "--neighbours", ",".join(map(str, neighbours)), "--json", "-"]
        print(f"running {label}: {tree}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        runs[label].append(json.loads(proc.stdout))
    lines = ["| scenario | neighbours | before | after | before vs alone | after vs alone |",
             "|---|---|---|---|---|---|"]
    for n in map(str, neighbours):
        for k in ALONE:
            med = {}
            for label in runs:
                ts = [r[n][k]["median"] for r in runs[label]]
                al = [r[n][ALONE[k]]["median"] for r in runs[label]]
                med[label] = (statistics.median(ts), statistics.median(ts) / statistics.median(al))
            lines.append(f"| {k} | {n} | {_us(med['before'][0])} | {_us(med['after'][0])} | "
                         f"{med['before'][1]:.2f}x | {med['after'][1]:.2f}x |")
    return "\n".join(lines), runs


def main(argv=None):
    parser = argparse.ArgumentParser(prog="contention.py", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--neighbours", default="0,1,2",
                        help="neighbour process counts, comma-separated (default: 0,1,2)")
    parser.add_argument("--json", metavar="FILE", help="write every sample ('-': stdout)")
    parser.add_argument("--ab", nargs=2, metavar=("BEFORE_TREE", "AFTER_TREE"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: expected a positive number")
    try:
        neighbours = [int(n) for n in args.neighbours.split(",")]
    except ValueError:
        parser.error(f"--neighbours: expected counts like 0,1,2, got {args.neighbours!r}")
    if "0" not in map(str, neighbours):
        neighbours = [0] + neighbours
    if args.ab:
        text, runs = ab(*args.ab, args.repeats, neighbours)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs, f, indent=1)
        return 0
    result = run(args.repeats, neighbours)
    if args.json == "-":
        json.dump(result, sys.stdout)
        return 0
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
