"""Which loops of the kernels the compiler vectorised, per compiled copy and source file.

    python bench/vector_report.py [--log build.log]

Builds the extension from this source tree into a temporary folder (the tree's own
in-place build is left alone), with GCC's vectoriser report added to CFLAGS
(``-fopt-info-vec-optimized``) after Python's own CFLAGS, as the real build has them,
and counts the loops it reports vectorised in each kernel family source
(``bpfast/_core/src/*.inc`` and ``*.h``),
separately for each copy of the families (``dispatch_baseline.c``, and on x86-64
``dispatch_avx2.c`` and ``dispatch_avx512.c``) and by vector width. On ARM64 the
baseline copy is the NEON one (Advanced SIMD is part of the AArch64 baseline), so its
column says which passes run with 16-byte NEON vectors there.

A count is of loops, not of time: a loop can be vectorised and still run in a version
the compiler keeps for possible aliasing, and code written with vector types
(``tiles.h``) needs no vectoriser and is not counted.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = re.compile(r"-c \S*?(dispatch_\w+\.c)\b")
# "bpfast/_core/src/pointwise.inc:43:1: optimized: loop vectorized using 16 byte vectors"
GCC = re.compile(r"(?:^|/)([\w.]+):\d+:\d+: optimized: loop vectorized using (\d+) byte")


def build_log(log_path=None):
    """The build's output with the vectoriser's report, from a fresh temporary build."""
    report = "-fopt-info-vec-optimized"
    # CFLAGS in the environment replaces Python's own (-fwrapv, ...), which the real
    # build keeps and which change what vectorises: they go first
    flags = [sysconfig.get_config_var("CFLAGS") or "", os.environ.get("CFLAGS", ""), report]
    env = dict(os.environ, CFLAGS=" ".join(f for f in flags if f))
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--force",
             "--build-temp", os.path.join(tmp, "temp"), "--build-lib", os.path.join(tmp, "lib")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log_path:
        with open(log_path, "w") as f:
            f.write(done.stdout)
    if done.returncode != 0:
        sys.exit(f"the build failed (exit {done.returncode}); see --log for its output")
    return done.stdout


def count(log):
    """{copy: {family source: Counter(vector bytes or lanes -> loops)}}"""
    table = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    copy = None
    for line in log.splitlines():
        m = SOURCE.search(line)
        if m:
            copy = m.group(1)
            continue
        m = GCC.search(line)
        if m and copy is not None and m.group(1).endswith((".inc", ".h")):
            table[copy][m.group(1)][int(m.group(2))] += 1
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--log", help="also write the whole build output here")
    args = p.parse_args(argv)
    table = count(build_log(args.log))
    if not table:
        sys.exit("no vectorised loops reported: the report needs GCC (CC=gcc)")
    copies = sorted(table)
    sources = sorted({s for c in copies for s in table[c]})
    print("loops vectorised (count x vector bytes)")
    print("| source | " + " | ".join(copies) + " |")
    print("|---" * (len(copies) + 1) + "|")
    for s in sources:
        cells = [", ".join(f"{n} x {w}" for w, n in sorted(table[c][s].items())) or "-"
                 for c in copies]
        print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
