"""Peak resident memory of ``Network.fit`` on the L network, against the speed issue's budget.

    python bench/memory.py [--optimizers sgd,momentum,adam] [--dtypes float64,float32]

Each measurement runs in a fresh Python process: import bpfast, draw L's data (8,192 rows,
784 inputs, 10 outputs), build the 784-1024-1024-10 relu/relu/sigmoid network and fit two
epochs with ``batch_size=256, shuffle=False``. The peak is the process's ``ru_maxrss``,
which counts everything resident at the worst moment, the interpreter and NumPy included.

The budget is data + parameters x (1 + optimizer state) + two batches of activations
+ 50 MB, where the optimizer state is 0 arrays per parameter for sgd, 1 for momentum and
2 for adam, and "two batches of activations" is batch x (sum of the layer widths) x 2
(the products Z and the activations A) x the item size.
"""
import argparse
import json
import subprocess
import sys

SIZES = [784, 1024, 1024, 10]
ROWS, BATCH, EPOCHS = 8192, 256, 2
STATE = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2}

CHILD = r"""
import json, resource, sys
import numpy as np
import bpfast

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

sizes, rows, batch, epochs, dtype, optimizer = json.loads(sys.argv[1])
dtype = np.dtype(dtype)
baseline = peak_mib()
rng = np.random.default_rng(0)
X = rng.standard_normal((rows, sizes[0]), dtype=dtype)
Y = rng.random((rows, sizes[-1]), dtype=dtype)
net = bpfast.Network(sizes, activations=["relu", "relu", "sigmoid"], dtype=dtype, seed=0)
built = peak_mib()
net.fit(X, Y, epochs=epochs, batch_size=batch, learning_rate=1e-3, optimizer=optimizer,
        shuffle=False)
print(json.dumps({"baseline": baseline, "built": built, "peak": peak_mib(),
                  "data": (X.nbytes + Y.nbytes) / 2**20,
                  "params": sum(p.nbytes for p in net.weights + net.biases) / 2**20}))
"""


def measure(dtype, optimizer):
    """One fresh process's figures (MiB) for fitting L in ``dtype`` with ``optimizer``."""
    args = json.dumps([SIZES, ROWS, BATCH, EPOCHS, dtype, optimizer])
    out = subprocess.run([sys.executable, "-c", CHILD, args], check=True,
                         capture_output=True, text=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    itemsize = 8 if dtype == "float64" else 4
    figures["batches"] = 2 * BATCH * sum(SIZES[1:]) * itemsize / 2**20
    figures["budget"] = (figures["data"] + figures["params"] * (1 + STATE[optimizer])
                         + figures["batches"] + 50e6 / 2**20)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="memory.py", description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", default="sgd,momentum,adam")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    rows = []
    print("| dtype | optimizer | import | peak | budget | data | params | 2 batches | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        for optimizer in args.optimizers.split(","):
            f = measure(dtype, optimizer)
            f.update(dtype=dtype, optimizer=optimizer, met=f["peak"] <= f["budget"])
            rows.append(f)
            print(f"| {dtype} | {optimizer} | {f['baseline']:.1f} | {f['peak']:.1f} | "
                  f"{f['budget']:.1f} | {f['data']:.1f} | {f['params']:.1f} | "
                  f"{f['batches']:.1f} | {'yes' if f['met'] else 'no'} |")
    print("(MiB; peak = ru_maxrss of a fresh process; budget = data + params x "
          "(1 + optimizer state) + two batches + 50 MB)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
