#!/usr/bin/env bash
# The sdist and the declared floors in one job: build the sdist, unpack it, build its wheel
# with the build-system's minimum versions, install that wheel in a fresh venv with every
# runtime and test minimum pinned (.ci/floors.py reads them from pyproject.toml), and run
# the unpacked sdist's own tests against it. PYTHON chooses the interpreter (default
# python3; it must be one the floors have wheels for, e.g. 3.11 for scipy 1.13).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

work="$(mktemp -d)"
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --upgrade pip build
"$work/tools/bin/python" -m build --sdist --outdir "$work/dist" .

sdist=("$work"/dist/bpfast-*.tar.gz)
tar -xzf "${sdist[0]}" -C "$work"
src=("$work"/bpfast-*/)
src="${src[0]%/}"
# the kernels' own C sources (bpfast/_core/src) belong in it; C generated from a .pyx does not
if find "$src/bpfast" -name '*.c' -not -path '*/_core/src/*' | grep -q .; then
    echo "sdist_floors: the sdist holds generated C files" >&2
    exit 1
fi

"$work/tools/bin/python" "$src/.ci/floors.py" build > "$work/build-floors.txt"
"$work/tools/bin/python" "$src/.ci/floors.py" runtime test > "$work/runtime-floors.txt"
echo "build floors: $(tr '\n' ' ' < "$work/build-floors.txt")"
echo "runtime floors: $(tr '\n' ' ' < "$work/runtime-floors.txt")"

# The build requirements at their floors, installed where the wheel is built: the
# compiled module is built against NumPy 2.0, the runtime floor too.
"$work/tools/bin/python" -m pip install --quiet -r "$work/build-floors.txt" wheel
"$work/tools/bin/python" -m pip list --format=freeze | grep -iE '^(setuptools|cython|numpy)=='
"$work/tools/bin/python" -m pip wheel --no-build-isolation --no-deps \
    --wheel-dir "$work/wheel" "$src"

"$python" -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip
wheel=("$work"/wheel/bpfast-*.whl)
pip install -c "$work/runtime-floors.txt" "${wheel[0]}[test]"
pip list

# From the unpacked sdist: its tests/ (conftest.py included) against the installed wheel.
# pytest exits 5 when no test ran; set -e makes that a failure like any other.
cd "$src"
pytest -q -p no:cacheprovider
