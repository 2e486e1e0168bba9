"""A fixed number of S32 training epochs (64-32-10, sigmoid, 1797 rows, batch 32, squared
error, SGD, float64), for counting instructions under callgrind in two trees:

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=TREE valgrind --tool=callgrind \\
        --callgrind-out-file=OUT python bench/epoch_instructions.py EPOCHS

Run it with two epoch counts (e.g. 1 and 21) per tree: the difference of the totals is the
instructions of the extra epochs alone, without the import and set-up.
"""
import sys

import numpy as np

import bpfast


def main():
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1797, 64))
    Y = np.eye(10)[rng.integers(0, 10, 1797)]
    net = bpfast.Network((64, 32, 10), activations=["sigmoid", "sigmoid"], seed=0)
    net.fit(X, Y, epochs=epochs, batch_size=32, learning_rate=0.01, optimizer="sgd",
            loss="mse", shuffle=False)
    print(float(np.abs(net.weights[0]).sum()))


if __name__ == "__main__":
    main()
