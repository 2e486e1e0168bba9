"""GridSearchCV over bpfast's MLPClassifier drop-in, with n_jobs=1 and n_jobs=2.

Six candidates (hidden_layer_sizes x alpha) x 3 folds on the 8x8 digits, adam, 50
epochs each. Each setting runs ``--repeats`` times in this one process; the first
parallel run also starts joblib's worker processes, which later runs reuse, so the
table shows the first run beside the median of all runs. Inside joblib workers the
drop-in limits the BLAS (and bpfast's kernel pool, which follows the BLAS's count) to the
worker's share of the cores. Not part of the test suite::

    python bench/gridsearch.py                      # loky worker processes, the default
    python bench/gridsearch.py --backend threading  # worker threads in this process
"""
import argparse
import os
import statistics
import time
import warnings

from joblib import parallel_config
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from bpfast.datasets import load_digits
from bpfast.sklearn import MLPClassifier

GRID = {"hidden_layer_sizes": [(16,), (32,), (64,)], "alpha": [1e-4, 1e-2]}


def search_seconds(X, y, n_jobs, backend):
    """Wall time of one GridSearchCV fit, and its best score."""
    search = GridSearchCV(MLPClassifier(max_iter=50, random_state=0), GRID, cv=3,
                          n_jobs=n_jobs)
    start = time.perf_counter()
    with parallel_config(backend=backend), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    return time.perf_counter() - start, search.best_score_


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", choices=["loky", "threading"], default="loky")
    args = parser.parse_args()
    X, y = load_digits()
    X = X / 16.0
    print(f"{len(GRID['hidden_layer_sizes']) * len(GRID['alpha'])} candidates x 3 folds, "
          f"digits {X.shape}, backend {args.backend}, {os.cpu_count()} CPUs")
    print(f"{'n_jobs':>6} {'first (s)':>10} {'median (s)':>11} {'best score':>11}  all runs (s)")
    for n_jobs in (1, 2):
        runs = [search_seconds(X, y, n_jobs, args.backend) for _ in range(args.repeats)]
        seconds = [s for s, _ in runs]
        print(f"{n_jobs:>6} {seconds[0]:>10.2f} {statistics.median(seconds):>11.2f} "
              f"{runs[0][1]:>11.4f}  {' '.join(f'{s:.2f}' for s in seconds)}")


if __name__ == "__main__":
    main()
