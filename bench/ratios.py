"""Print median-time ratios from a pytest-benchmark JSON file.

Usage: ``python bench/ratios.py bench-backprop.json [baseline]`` (baseline: ``reference``).
For each benchmark group, every implementation's median and the baseline's median divided
by it (the speed-up; above 1 means faster than the baseline).
"""
import json
import sys
from collections import defaultdict


def main(path, baseline="reference"):
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        impl = bench["params"].get("impl", bench["name"])
        groups[bench["group"]][impl] = bench["stats"]["median"]
    print(f"{'group':44s} {'impl':12s} {'median':>12s} {'speed-up vs ' + baseline:>22s}")
    for group, medians in groups.items():
        base = medians.get(baseline)
        for impl, med in sorted(medians.items(), key=lambda kv: kv[1]):
            ratio = f"{base / med:.2f}x" if base else "-"
            print(f"{group:44s} {impl:12s} {med * 1e3:10.3f}ms {ratio:>22s}")


if __name__ == "__main__":
    main(*sys.argv[1:])
