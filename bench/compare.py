"""Speed comparison of bpfast against the NumPy reference and the installed peers.

    python bench/compare.py [--quick] [--plot speed.png] [--json out.json] [--threads N]

A thin wrapper around :mod:`bpfast.benchmarks` (the same as ``bpfast bench``); see its
docstring for what is timed and how. Peers (PyTorch, JAX, scikit-learn) are used when
installed and skipped otherwise.
"""
import os
import sys

try:
    from bpfast.benchmarks import main
except ImportError:  # run from a source tree built in place, without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bpfast.benchmarks import main

if __name__ == "__main__":
    sys.exit(main(prog="compare.py"))
