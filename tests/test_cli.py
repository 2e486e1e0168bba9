"""The ``bpfast`` command, run for real: ``python -m bpfast ...`` in a subprocess.

Each subprocess starts in ``tmp_path`` (never the repository root), with ``PYTHONPATH``
pointing at the directory that holds the ``bpfast`` this test process imported: the
source tree in development (``PYTHONPATH=. pytest``), site-packages when installed.
"""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import bpfast

#: The directory whose ``bpfast`` package this test process imported.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))


def _env(extra_path=()):
    env = dict(os.environ)
    paths = [*extra_path, PACKAGE_PARENT]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run(cwd, *args, extra_path=(), timeout=300):
    """``python -m bpfast ARGS`` in ``cwd``: a CompletedProcess with text output."""
    return subprocess.run(
        [sys.executable, "-m", "bpfast", *map(str, args)], check=False, cwd=cwd,
        env=_env(extra_path),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def assert_bad_input(result, *words):
    """Exit status 2 and exactly one line on stderr that names the problem."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bpfast: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def blobs(n=150, seed=0):
    """Three well separated classes in 2-D with text labels, plus a noise column."""
    rng = np.random.default_rng(seed)
    names = np.array(["red", "green", "blue"])
    centres = np.array([[0.0, 4.0], [4.0, 0.0], [-4.0, -4.0]])
    k = rng.integers(0, 3, n)
    X = centres[k] + rng.normal(0, 0.6, (n, 2))
    noise = rng.normal(size=n)
    rows = [[f"{x0:.6f}", f"{x1:.6f}", f"{z:.6f}", names[c]] for (x0, x1), z, c in zip(X, noise, k)]
    return ["x0", "x1", "noise", "colour"], rows, names[k]


@pytest.fixture
def blobs_csv(tmp_path):
    header, rows, labels = blobs()
    return write_csv(tmp_path / "blobs.csv", header, rows), labels


@pytest.fixture
def regression_csv(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (120, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 0.3
    rows = [[*(repr(float(v)) for v in x), repr(float(t))] for x, t in zip(X, y)]
    return write_csv(tmp_path / "reg.csv", ["a", "b", "c", "y"], rows)


@pytest.fixture
def trained_blobs(tmp_path, blobs_csv):
    path, _ = blobs_csv
    r = run(tmp_path, "train", "--data", path, "--target", "colour", "--loss", "cross_entropy",
            "--hidden", "8", "--epochs", "30", "--quiet", "--out", "model.npz")
    assert r.returncode == 0, r.stderr
    return tmp_path / "model.npz", path


# --------------------------------------------------------------------------------------
# the command itself
# --------------------------------------------------------------------------------------

def test_version(tmp_path):
    r = run(tmp_path, "--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"bpfast {bpfast.__version__}"


@pytest.mark.parametrize("command", [None, "check", "demo", "train", "predict", "bench",
                                     "blas"])
def test_help(tmp_path, command):
    r = run(tmp_path, *([command] if command else []), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: bpfast" + (f" {command}" if command else ""))
    assert "--help" in r.stdout


def test_blas_names_the_blas_and_the_kernels_features(tmp_path):
    r = run(tmp_path, "blas")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (f"BLAS: {bpfast.blas_info()['backend']} "
                        f"({bpfast.blas_info().get('library') or 'not found'})")
    features = ", ".join(bpfast.cpu_features()) or "none (portable kernels)"
    assert lines[-1] == f"CPU features: {features}"


def test_no_command_prints_help(tmp_path):
    r = run(tmp_path)
    assert r.returncode == 2
    assert "usage: bpfast" in r.stdout and "demo" in r.stdout


def test_check_still_works(tmp_path):
    r = run(tmp_path, "check", "--samples", "16")
    assert r.returncode == 0, r.stderr
    assert "gradient check: OK" in r.stdout


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------

def test_demo(tmp_path):
    r = run(tmp_path, "demo", "--epochs", "20")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    line = next(l for l in out.splitlines() if l.startswith("held-out accuracy:"))
    assert float(line.split()[2]) >= 0.95, out
    same = next(l for l in out.splitlines() if "same weights to" in l)
    assert float(same.rsplit(" ", 1)[1]) < 1e-10, same  # the reference took the same steps
    assert "speed-up over the NumPy reference:" in out
    assert "\r" not in r.stderr  # stderr is not a terminal: plain progress lines


def test_demo_progress_bar(tmp_path):
    r = run(tmp_path, "demo", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "accuracy=" in r.stderr and "samples/s=" in r.stderr and "2/2" in r.stderr


def test_demo_plot(tmp_path):
    pytest.importorskip("matplotlib")
    r = run(tmp_path, "demo", "--epochs", "2", "--quiet", "--plot", "loss.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def no_matplotlib(tmp_path):
    """A directory to put first on PYTHONPATH in which ``import matplotlib`` fails."""
    d = tmp_path / "hide"
    (d / "matplotlib").mkdir(parents=True)
    (d / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    return [str(d)]


@pytest.mark.parametrize("command", [
    ["demo", "--quiet"],
    ["train", "--data", "blobs.csv", "--target", "colour", "--quiet"],
    ["bench", "--quick"],
])
def test_plot_without_matplotlib(tmp_path, blobs_csv, no_matplotlib, command):
    r = run(tmp_path, *command, "--plot", "x.png", extra_path=no_matplotlib)
    assert_bad_input(r, "pip install 'bpfast[plot]'")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------
# train and predict
# --------------------------------------------------------------------------------------

def test_train_predict_csv_classification(tmp_path, trained_blobs):
    model, data = trained_blobs
    side = json.loads((tmp_path / "model.npz.json").read_text())
    assert side["classes"] == ["blue", "green", "red"]
    assert side["features"] == ["x0", "x1", "noise"] and side["targets"] == ["colour"]
    assert bpfast.load(model).sizes == (3, 8, 3)

    r = run(tmp_path, "predict", "--model", model, "--data", data, "--out", "pred.csv")
    assert r.returncode == 0, r.stderr
    header, rows = read_csv(tmp_path / "pred.csv")
    assert header == ["colour", "p_blue", "p_green", "p_red"]
    assert len(rows) == 150
    _, _, labels = blobs()
    predicted = np.array([row[0] for row in rows])
    assert np.mean(predicted == labels) > 0.9
    P = np.array([[float(v) for v in row[1:]] for row in rows])
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    assert "accuracy on" in r.stdout  # the data held the answers


def test_train_prints_metrics(tmp_path, blobs_csv):
    path, _ = blobs_csv
    r = run(tmp_path, "train", "--data", path, "--target", "colour", "--loss", "cross_entropy",
            "--epochs", "5", "--out", "m.npz")
    assert r.returncode == 0, r.stderr
    train = next(l for l in r.stdout.splitlines() if l.startswith("training:"))
    val = next(l for l in r.stdout.splitlines() if l.startswith("validation:"))
    assert "loss" in train and "accuracy" in train and "(120 rows)" in train
    assert "loss" in val and "accuracy" in val and "(30 rows)" in val
    assert "val_acc=" in r.stderr  # the progress bar


def test_train_reports_wall_time(tmp_path, blobs_csv):
    path, _ = blobs_csv
    r = run(tmp_path, "train", "--data", path, "--target", "colour", "--loss", "cross_entropy",
            "--epochs", "3", "--out", "m.npz")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("time:"))
    m = re.fullmatch(r"time: ([0-9.]+) s wall for 3 epochs, validation and progress included "
                     r"\(([0-9,.]+) samples/s; the epochs' training and validation passes "
                     r"alone ([0-9.]+) s\)", line)
    assert m, line
    wall, passes = float(m.group(1)), float(m.group(3))
    assert wall >= passes  # the wall time holds the epochs' own times


def test_train_predict_csv_regression_matches_api(tmp_path, regression_csv):
    r = run(tmp_path, "train", "--data", regression_csv, "--target", "y", "--hidden", "16",
            "--epochs", "40", "--quiet", "--out", "reg.npz")
    assert r.returncode == 0, r.stderr
    assert "accuracy" not in r.stdout
    r = run(tmp_path, "predict", "--model", "reg.npz", "--data", regression_csv,
            "--out", "pred.csv")
    assert r.returncode == 0, r.stderr
    header, rows = read_csv(tmp_path / "pred.csv")
    assert header == ["y"]
    got = np.array([float(row[0]) for row in rows])
    # the same prediction through the Python API and the sidecar's scaling
    side = json.loads((tmp_path / "reg.npz.json").read_text())
    _, data = read_csv(regression_csv)
    X = np.array([[float(v) for v in row[:3]] for row in data])
    X = (X - np.array(side["scale"]["mean"])) / np.array(side["scale"]["std"])
    want = bpfast.load(tmp_path / "reg.npz").forward(X)[:, 0]
    np.testing.assert_array_equal(got, want)
    y = np.array([float(row[3]) for row in data])
    assert np.mean((got - y) ** 2) < np.var(y)  # it learnt something


def test_train_predict_npz_xy(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 5))
    Y = np.stack([X[:, 0] + X[:, 1], X[:, 2] * 0.5], axis=1)
    np.savez(tmp_path / "xy.npz", X=X, Y=Y)
    r = run(tmp_path, "train", "--data", "xy.npz", "--epochs", "3", "--quiet",
            "--out", "xy_model.npz")  # --target defaults to Y
    assert r.returncode == 0, r.stderr
    assert bpfast.load(tmp_path / "xy_model.npz").sizes == (5, 64, 2)
    r = run(tmp_path, "predict", "--model", "xy_model.npz", "--data", "xy.npz")  # to stdout
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "Y[0],Y[1]" and len(lines) == 81


def test_train_predict_npz_named_columns(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=60), rng.normal(size=60)
    label = (a + b > 0).astype(np.int64)
    np.savez(tmp_path / "cols.npz", a=a, b=b, label=label)
    r = run(tmp_path, "train", "--data", "cols.npz", "--target", "label", "--loss",
            "cross_entropy", "--epochs", "3", "--quiet", "--out", "c.npz", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c.npz.json").read_text())["classes"] == [0, 1]
    # predict on a CSV with the columns in another order and without the label
    write_csv(tmp_path / "new.csv", ["b", "a"],
              [[repr(float(y)), repr(float(x))] for x, y in zip(a, b)])
    r = run(tmp_path, "predict", "--model", "c.npz", "--data", "new.csv", "--out", "p.csv")
    assert r.returncode == 0, r.stderr
    header, rows = read_csv(tmp_path / "p.csv")
    assert header == ["label", "p_0", "p_1"] and len(rows) == 60
    assert {row[0] for row in rows} <= {"0", "1"}


def test_train_plot(tmp_path, blobs_csv):
    pytest.importorskip("matplotlib")
    path, _ = blobs_csv
    r = run(tmp_path, "train", "--data", path, "--target", "colour", "--epochs", "3",
            "--loss", "cross_entropy", "--quiet", "--plot", "curve.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------
# bad input: one line on stderr, exit status 2, no traceback
# --------------------------------------------------------------------------------------

def _train(tmp_path, data, *extra):
    return run(tmp_path, "train", "--data", data, "--target", "y", "--epochs", "1",
               "--quiet", *extra)


def test_missing_data_file(tmp_path):
    assert_bad_input(_train(tmp_path, "nope.csv"), "nope.csv", "no such file")


def test_data_file_is_a_directory(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    assert_bad_input(_train(tmp_path, "dir.csv"), "dir.csv", "directory")


def test_unreadable_data_file(tmp_path):
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    assert_bad_input(_train(tmp_path, "binary.csv"), "binary.csv", "not a UTF-8 text")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their permissions")
def test_data_file_without_read_permission(tmp_path):
    p = write_csv(tmp_path / "locked.csv", ["a", "y"], [["1", "2"]])
    p.chmod(0)
    assert_bad_input(_train(tmp_path, "locked.csv"), "locked.csv", "permission")


def test_malformed_csv_ragged_row(tmp_path):
    (tmp_path / "ragged.csv").write_text("a,b,y\n1,2,3\n4,5\n")
    assert_bad_input(_train(tmp_path, "ragged.csv"), "malformed CSV", "line 3", "2 fields")


def test_malformed_csv_unterminated_quote(tmp_path):
    (tmp_path / "quote.csv").write_text('a,b,y\n1,2,3\n4,"5,6\n')
    assert_bad_input(_train(tmp_path, "quote.csv"), "quote.csv")


def test_non_numeric_cell(tmp_path):
    (tmp_path / "text.csv").write_text("a,b,y\n1,2,3\n4,five,6\n")
    assert_bad_input(_train(tmp_path, "text.csv"), "non-numeric", "'five'", "'b'", "line 3")


def test_non_numeric_target_for_mse(tmp_path):
    (tmp_path / "labels.csv").write_text("a,y\n1,cat\n2,dog\n")
    assert_bad_input(_train(tmp_path, "labels.csv"), "non-numeric", "target column 'y'")


def test_empty_cell(tmp_path):
    (tmp_path / "hole.csv").write_text("a,b,y\n1,,3\n4,5,6\n")
    assert_bad_input(_train(tmp_path, "hole.csv"), "empty cell", "'b'", "line 2")


def test_missing_target_column(tmp_path):
    write_csv(tmp_path / "d.csv", ["a", "b", "z"], [["1", "2", "3"]])
    assert_bad_input(_train(tmp_path, "d.csv"), "target column 'y' not found", "'z'")


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    assert_bad_input(_train(tmp_path, "empty.csv"), "empty file")


def test_header_only(tmp_path):
    (tmp_path / "header.csv").write_text("a,b,y\n")
    assert_bad_input(_train(tmp_path, "header.csv"), "no data rows")


def test_corrupted_npz_data(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    assert_bad_input(_train(tmp_path, "bad.npz"), "bad.npz", ".npz")


def test_npz_that_is_not_a_zip(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    assert_bad_input(_train(tmp_path, "text.npz"), "not an .npz archive")


def test_output_directory_missing(tmp_path, regression_csv):
    r = _train(tmp_path, regression_csv, "--out", "no/such/dir/m.npz")
    assert_bad_input(r, "does not exist")


def test_corrupted_model(tmp_path, trained_blobs):
    model, data = trained_blobs
    blob = model.read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    r = run(tmp_path, "predict", "--model", "cut.npz", "--data", data, "--out", "p.csv")
    assert_bad_input(r, "cut.npz", "not a readable bpfast model")
    assert not (tmp_path / "p.csv").exists()


def test_model_file_not_a_model(tmp_path, blobs_csv):
    data, _ = blobs_csv
    r = run(tmp_path, "predict", "--model", data, "--data", data)
    assert_bad_input(r, "blobs.csv")


def test_missing_model(tmp_path, blobs_csv):
    data, _ = blobs_csv
    r = run(tmp_path, "predict", "--model", "absent.npz", "--data", data)
    assert_bad_input(r, "absent.npz", "does not exist")


def test_model_does_not_fit_data_columns(tmp_path, trained_blobs):
    model, _ = trained_blobs
    write_csv(tmp_path / "other.csv", ["x0", "q"], [["1", "2"]])
    r = run(tmp_path, "predict", "--model", model, "--data", "other.csv")
    assert_bad_input(r, "'x1'", "'noise'", "not found")


def test_model_without_sidecar_does_not_fit_data(tmp_path):
    bpfast.Network([4, 3, 2], seed=0).save(tmp_path / "plain.npz")
    write_csv(tmp_path / "three.csv", ["a", "b", "c"], [["1", "2", "3"]])
    r = run(tmp_path, "predict", "--model", "plain.npz", "--data", "three.csv")
    assert_bad_input(r, "expects 4 inputs", "gives 3")


def test_model_without_sidecar_predicts_raw_columns(tmp_path):
    net = bpfast.Network([2, 3, 1], activations=["tanh", "identity"], seed=0)
    net.save(tmp_path / "plain.npz")
    write_csv(tmp_path / "two.csv", ["a", "b"], [["0.5", "-1"], ["2", "3"]])
    r = run(tmp_path, "predict", "--model", "plain.npz", "--data", "two.csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "y0"
    np.testing.assert_array_equal([float(v) for v in lines[1:]],
                                  net.forward(np.array([[0.5, -1], [2, 3]]))[:, 0])


def test_corrupted_sidecar(tmp_path, trained_blobs):
    model, data = trained_blobs
    (tmp_path / "model.npz.json").write_text("{not json")
    r = run(tmp_path, "predict", "--model", model, "--data", data)
    assert_bad_input(r, "model.npz.json")


def test_stale_sidecar(tmp_path, trained_blobs):
    model, data = trained_blobs
    net = bpfast.load(model)
    net.weights[0] += 1.0
    net.save(model)  # the model changed behind the sidecar's back
    r = run(tmp_path, "predict", "--model", model, "--data", data)
    assert_bad_input(r, "another version")


def test_failed_predict_leaves_old_output(tmp_path, trained_blobs):
    model, _ = trained_blobs
    (tmp_path / "pred.csv").write_text("old\n")
    (tmp_path / "broken.csv").write_text("x0,x1,noise\n1,2\n")
    r = run(tmp_path, "predict", "--model", model, "--data", "broken.csv", "--out", "pred.csv")
    assert_bad_input(r, "malformed CSV")
    assert (tmp_path / "pred.csv").read_text() == "old\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".bpfast-")]


def test_bad_option_value(tmp_path, regression_csv):
    r = _train(tmp_path, regression_csv, "--hidden", "8,x")
    assert_bad_input(r, "--hidden")


# --------------------------------------------------------------------------------------
# bench (a tiny run: one small case, the NumPy reference only)
# --------------------------------------------------------------------------------------

def test_bench_smoke(tmp_path):
    r = run(tmp_path, "bench", "--quick", "--cases", "S32", "--dtypes", "float64",
            "--peers", "reference", "--json", "bench.json")
    assert r.returncode == 0, r.stderr
    assert "S32" in r.stdout and "reference" in r.stdout and "GEMM" in r.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    (entry,) = report["results"]
    assert entry["case"] == "S32" and entry["ratios"]["reference"] > 0
    assert entry["agreement"]["reference"] < 1e-10
