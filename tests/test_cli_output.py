"""What the ``bpfast`` command prints: progress in a log, ``--quiet``, the metrics of
``train`` and ``predict`` and the names of the losses.

The commands run as ``python -m bpfast`` in a subprocess whose stderr is a file or a pipe
(not a terminal), as in ``bpfast train ... > log 2>&1``.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bpfast
from bpfast import cli

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))


def run(cwd, *args, stderr=subprocess.PIPE):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "bpfast", *map(str, args)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                          text=True, timeout=300, check=False)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_predictions(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array([[float(v) for v in row] for row in rows[1:]])


@pytest.fixture
def regression(tmp_path):
    """Two targets (one of them constant) of three inputs, in a CSV: (path, X, Y)."""
    rng = np.random.default_rng(4)
    X = rng.uniform(-1, 1, (150, 3))
    Y = np.stack([X @ np.array([1.5, -2.0, 0.5]) + 0.3, np.sin(X[:, 0])], axis=1)
    rows = [[repr(float(v)) for v in (*x, *y)] for x, y in zip(X, Y)]
    return write_csv(tmp_path / "reg.csv", ["a", "b", "c", "y", "z"], rows), X, Y


def scaled_inputs(tmp_path, model, X):
    side = json.loads((tmp_path / (model + ".json")).read_text())
    return (X - np.array(side["scale"]["mean"])) / np.array(side["scale"]["std"])


def line_starting(text, prefix):
    return next(line for line in text.splitlines() if line.startswith(prefix))


# --------------------------------------------------------------------------------------
# progress when stderr is not a terminal
# --------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_plain_progress_prints_a_line_per_interval_and_one_at_the_end(capsys):
    clock = FakeClock()
    bar = cli.PlainProgress(10, "training", sys.stderr, interval=5.0, clock=clock)
    for epoch in range(10):
        clock.now += 1.5  # an epoch takes 1.5 s: a line after epochs 4 and 8
        bar.set_postfix({"half_mse": f"{1.0 / (epoch + 1):.4g}"})
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["training: epoch 4/10, half_mse=0.25 (6.0 s)",
                     "training: epoch 8/10, half_mse=0.125 (12.0 s)",
                     "training: epoch 10/10, half_mse=0.1 (15.0 s)"]


def test_plain_progress_final_line_not_repeated(capsys):
    clock = FakeClock()
    bar = cli.PlainProgress(2, "training", sys.stderr, interval=1.0, clock=clock)
    bar.update(1)
    clock.now += 2.0
    bar.update(1)  # prints the line for epoch 2
    bar.close()   # nothing new since
    assert capsys.readouterr().err.splitlines() == ["training: epoch 2/2 (2.0 s)"]


def test_train_into_a_log_has_no_carriage_returns(tmp_path, regression):
    path, _, _ = regression
    with open(tmp_path / "log", "w") as log:
        r = run(tmp_path, "train", "--data", path, "--target", "y,z", "--epochs", "1500",
                "--hidden", "4", "--batch-size", "150", "--out", "m.npz", stderr=log)
    err = (tmp_path / "log").read_text()
    assert r.returncode == 0, err
    assert "\r" not in err and "\x1b" not in err
    progress = [line for line in err.splitlines() if line.startswith("training: epoch ")]
    assert progress, err
    assert progress[-1].startswith("training: epoch 1500/1500, half_mse=")
    # one line per PROGRESS_INTERVAL seconds of training at most, plus the last
    seconds = float(progress[-1].rsplit("(", 1)[1].split()[0])
    assert len(progress) <= seconds / cli.PROGRESS_INTERVAL + 2, progress


def test_a_terminal_still_gets_the_bar(tmp_path):
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    # a terminal of 24 x 120 characters (a new pty has none, and tqdm sizes its bar by it)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        r = run(tmp_path, "demo", "--epochs", "3", stderr=follower)
        os.close(follower)
        follower = None
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # Linux: EIO once the follower side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    assert r.returncode == 0
    err = b"".join(chunks).decode("utf-8", "replace")
    assert "\r" in err and "3/3" in err and "samples/s=" in err  # tqdm's bar


# --------------------------------------------------------------------------------------
# --quiet: nothing but errors and the requested output
# --------------------------------------------------------------------------------------

def test_quiet_train_prints_nothing_and_writes_the_model(tmp_path, regression):
    path, _, _ = regression
    r = run(tmp_path, "train", "--data", path, "--target", "y,z", "--epochs", "5",
            "--quiet", "--out", "m.npz")
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", "")
    assert bpfast.load(tmp_path / "m.npz").sizes == (3, 64, 2)


def test_quiet_demo_prints_nothing(tmp_path):
    r = run(tmp_path, "demo", "--epochs", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", "")


def test_quiet_predict_prints_only_the_predictions(tmp_path, regression):
    path, _, _ = regression
    assert run(tmp_path, "train", "--data", path, "--target", "y,z", "--epochs", "5",
               "--quiet", "--out", "m.npz").returncode == 0
    r = run(tmp_path, "predict", "--model", "m.npz", "--data", path, "--out", "p.csv",
            "--quiet")
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("", "")
    r = run(tmp_path, "predict", "--model", "m.npz", "--data", path, "--quiet")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == "y,z" and len(lines) == 151


def test_quiet_still_reports_errors(tmp_path):
    r = run(tmp_path, "train", "--data", "missing.csv", "--target", "y", "--quiet")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("bpfast: error: ") and "missing.csv" in r.stderr


# --------------------------------------------------------------------------------------
# metrics and the names of the losses
# --------------------------------------------------------------------------------------

def r2_mae_mse(A, Y):
    """R^2 averaged over the columns (every column here varies), MAE and MSE."""
    r2 = 1 - ((Y - A) ** 2).sum(axis=0) / ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    return r2.mean(), np.abs(Y - A).mean(), ((Y - A) ** 2).mean()


def test_predict_reports_r2_and_mae_for_regression(tmp_path, regression):
    path, X, Y = regression
    assert run(tmp_path, "train", "--data", path, "--target", "y,z", "--epochs", "30",
               "--quiet", "--out", "m.npz").returncode == 0
    r = run(tmp_path, "predict", "--model", "m.npz", "--data", path, "--out", "p.csv")
    assert r.returncode == 0, r.stderr
    header, A = read_predictions(tmp_path / "p.csv")
    assert header == ["y", "z"]
    line = line_starting(r.stdout, f"on {path}: ")
    words = line.replace(",", "").split()
    got = {k: float(words[words.index(k) + 1]) for k in ("R^2", "MAE", "MSE")}
    r2, mae, mse = r2_mae_mse(A, Y)
    assert got["R^2"] == pytest.approx(r2, abs=1e-4)
    assert got["MAE"] == pytest.approx(mae, rel=1e-5)
    assert got["MSE"] == pytest.approx(mse, rel=1e-5)
    assert "(150 rows)" in line


def test_predict_without_the_target_reports_no_metric(tmp_path, regression):
    path, X, _ = regression
    assert run(tmp_path, "train", "--data", path, "--target", "y,z", "--epochs", "3",
               "--quiet", "--out", "m.npz").returncode == 0
    write_csv(tmp_path / "new.csv", ["c", "a", "b"],
              [[repr(float(v)) for v in (x[2], x[0], x[1])] for x in X])
    r = run(tmp_path, "predict", "--model", "m.npz", "--data", "new.csv", "--out", "p.csv")
    assert r.returncode == 0, r.stderr
    assert "R^2" not in r.stdout + r.stderr


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_train_names_the_half_mse_and_reports_the_true_one(tmp_path, regression, dtype):
    """The squared-error loss is E = 1/(2m) sum (A - Y)^2: it is labelled half_mse, and
    the MSE, MAE and R^2 printed beside it are the usual ones."""
    path, X, Y = regression
    r = run(tmp_path, "train", "--data", path, "--target", "y,z", "--epochs", "20",
            "--validation", "0", "--dtype", dtype, "--out", "m.npz")
    assert r.returncode == 0, r.stderr
    assert "half_mse=" in r.stderr and "loss=" not in r.stderr  # progress
    line = line_starting(r.stdout, "training:")
    words = line.replace(",", "").split()
    assert words[1:3] == ["half_mse", "loss"]
    net = bpfast.load(tmp_path / "m.npz")
    A = net.forward(scaled_inputs(tmp_path, "m.npz", X).astype(dtype)).astype(np.float64)
    E = ((A - Y) ** 2).sum() / (2 * len(Y))
    r2, mae, mse = r2_mae_mse(A, Y)
    rel = 1e-5 if dtype == "float64" else 1e-4
    assert float(words[3]) == pytest.approx(E, rel=rel)
    assert float(words[words.index("MSE") + 1]) == pytest.approx(mse, rel=rel)
    assert float(words[words.index("MAE") + 1]) == pytest.approx(mae, rel=rel)
    assert float(words[words.index("R^2") + 1]) == pytest.approx(r2, abs=1e-4)


def test_train_names_the_cross_entropy(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(90, 2))
    label = np.where(X[:, 0] > 0, "yes", "no")
    write_csv(tmp_path / "c.csv", ["u", "v", "label"],
              [[repr(float(a)), repr(float(b)), c] for (a, b), c in zip(X, label)])
    r = run(tmp_path, "train", "--data", "c.csv", "--target", "label", "--loss",
            "cross_entropy", "--epochs", "5", "--out", "m.npz")
    assert r.returncode == 0, r.stderr
    assert "cross_entropy=" in r.stderr and "val_cross_entropy=" in r.stderr
    assert line_starting(r.stdout, "training:").split()[1:3] == ["cross_entropy", "loss"]
    assert line_starting(r.stdout, "validation:").split()[1:3] == ["cross_entropy", "loss"]


def test_regression_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(6)
    Y = rng.normal(size=(40, 3))
    A = Y + rng.normal(scale=0.3, size=Y.shape)
    Y[:, 2] = 1.5  # a constant column, predicted wrongly: scikit-learn scores it 0
    r2, mae, mse = cli._regression_metrics(A, Y)
    assert r2 == pytest.approx(metrics.r2_score(Y, A), rel=1e-12)
    assert mae == pytest.approx(metrics.mean_absolute_error(Y, A), rel=1e-12)
    assert mse == pytest.approx(metrics.mean_squared_error(Y, A), rel=1e-12)
    A[:, 2] = 1.5  # and predicted exactly: 1
    assert cli._regression_metrics(A, Y)[0] == pytest.approx(metrics.r2_score(Y, A), rel=1e-12)
