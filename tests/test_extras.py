"""A missing optional dependency raises an ImportError that names the extra to install.

Each check runs in a fresh interpreter in which the dependency cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ImportError), started in
``tmp_path`` so that ``python -c`` never imports an unbuilt source tree from the
working directory.
"""
import os
import subprocess
import sys

import bpfast

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))


def run_without(cwd, modules, code):
    hide = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", "import sys\n" + hide + code],
                          capture_output=True, text=True, env=env, timeout=120, check=False,
                          cwd=cwd)


def test_import_bpfast_needs_no_extra(tmp_path):
    r = run_without(tmp_path, ["sklearn", "dask", "distributed", "matplotlib", "threadpoolctl"],
                    "import bpfast, bpfast.cli, bpfast.benchmarks, bpfast.datasets")
    assert r.returncode == 0, r.stderr


def test_distributed_without_dask_names_the_extra(tmp_path):
    r = run_without(tmp_path, ["dask", "dask.array"], "import bpfast.distributed")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "pip install 'bpfast[dask]'" in last, last


def test_plot_speedups_without_matplotlib_names_the_extra(tmp_path):
    r = run_without(tmp_path, ["matplotlib"],
                    "from bpfast import benchmarks\nbenchmarks.plot_speedups({}, 'x.png')")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "pip install 'bpfast[plot]'" in last, last
