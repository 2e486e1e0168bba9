"""The command line's promise under hostile input: exit status 2 and one line
``bpfast: error: ...`` on stderr, no traceback; and no silently wrong prediction from a
tampered or missing sidecar.

Issue 16, items 4, 5, 10 and 12.
"""
import json
import os
import sys

import numpy as np
import pytest

import bpfast
import bpfast.cli as cli
import bpfast.io as bio
from test_cli import assert_bad_input, read_csv, run, write_csv
from test_model_file_safety import zero_itemsize_file


@pytest.fixture
def reg_csv(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = X[:, 0] - X[:, 1]
    return write_csv(tmp_path / "reg.csv", ["a", "b", "y"],
                     [[repr(float(p)), repr(float(q)), repr(float(t))]
                      for (p, q), t in zip(X, y)])


@pytest.fixture
def trained(tmp_path, reg_csv):
    r = run(tmp_path, "train", "--data", reg_csv, "--target", "y", "--hidden", "4",
            "--epochs", "2", "--quiet", "--out", "m.npz")
    assert r.returncode == 0, r.stderr
    return tmp_path / "m.npz", reg_csv


LINUX_PROC = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="reads file names from /proc/self/fd")


# --------------------------------------------------------------------------------------
# Item 4: sizes that cannot fit in memory, hostile sidecars and models
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["check", "--sizes", "1000000-1000000"], ["--sizes", "1000000-1000000", "TiB of memory"]),
    (["check", "--samples", "10000000000"], ["--samples", "10,000,000,000 samples",
                                              "TiB of memory"]),
    (["check", "--sizes", "5"], ["--sizes", "two or more"]),
    (["check", "--sizes", "5-0-2"], ["--sizes", "positive"]),
])
def test_check_sizes_beyond_memory(tmp_path, args, words):
    assert_bad_input(run(tmp_path, *args), *words)


def test_train_hidden_beyond_memory(tmp_path, reg_csv):
    r = run(tmp_path, "train", "--data", reg_csv, "--target", "y", "--quiet",
            "--hidden", "1000000,1000000")
    assert_bad_input(r, "--hidden", "2-1000000-1000000-1", "would need about", "memory")
    assert not (tmp_path / "model.npz").exists()


def test_memory_and_recursion_errors_are_one_line(monkeypatch, capsys):
    for exc in (MemoryError("Unable to allocate 8 TiB"), RecursionError("deep")):
        def boom(args, exc=exc):
            raise exc
        monkeypatch.setattr(cli, "_check", boom)
        assert cli.main(["check"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("bpfast: error: "), err


def test_crafted_model_is_one_line(tmp_path, reg_csv):
    zero_itemsize_file(tmp_path / "evil.npz", 200000)
    r = run(tmp_path, "predict", "--model", "evil.npz", "--data", reg_csv)
    assert_bad_input(r, "evil.npz", "budget")


def _tamper(model, **changes):
    path = cli.sidecar_path(model)
    side = json.loads(open(path).read())
    side.update(changes)
    with open(path, "w") as f:
        json.dump(side, f)


@pytest.mark.parametrize("changes,words", [
    ({"classes": {"a": 1}}, ["classes", "list of class labels"]),
    ({"classes": "x"}, ["classes", "list of class labels"]),
    ({"classes": [[1]]}, ["classes", "list of class labels"]),
    ({"classes": [True]}, ["classes"]),
    ({"classes": ["a", "b"]}, ["2 class labels", "1 outputs"]),
    ({"outputs": ["y", "z"]}, ["2 outputs", "model's 1"]),
    ({"outputs": "y"}, ["outputs", "list of column names"]),
    ({"outputs": []}, ["outputs"]),
    ({"features": ["a", "a"]}, ["features", "twice"]),
    ({"features": ["a", 7]}, ["features"]),
    ({"feature_widths": [1, 2]}, ["3 inputs wide", "takes 2"]),
    ({"feature_widths": None}, ["feature_widths"]),
    ({"targets": None}, ["targets"]),
    ({"scale": {"mean": [0.0, 0.0], "std": [1.0]}}, ["std", "2 finite numbers"]),
    ({"scale": {"mean": [0.0, 0.0], "std": [1.0, 0.0]}}, ["std", "positive"]),
    ({"scale": {"mean": [0.0, "x"], "std": [1.0, 1.0]}}, ["mean", "finite numbers"]),
    ({"scale": {"mean": [0.0, 1e309], "std": [1.0, 1.0]}}, ["mean", "finite numbers"]),
    ({"scale": [0, 1]}, ["scale"]),
    ({"loss": "hinge"}, ["loss"]),
    ({"sizes": {"a": 1}}, ["network"]),
])
def test_tampered_sidecar_is_refused(tmp_path, trained, changes, words):
    model, data = trained
    _tamper(model, **changes)
    r = run(tmp_path, "predict", "--model", model, "--data", data, "--out", "p.csv")
    assert_bad_input(r, "m.npz.json", *words)
    assert not (tmp_path / "p.csv").exists()


# explicit ids: pytest puts a test's id in the environment of its subprocesses
# (PYTEST_CURRENT_TEST), and a 200,000-character one is too long for exec
@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, "[]", "null", "7"],
                         ids=["deeply-nested", "list", "null", "number"])
def test_sidecar_that_is_not_an_object(tmp_path, trained, text):
    model, data = trained
    (tmp_path / "m.npz.json").write_text(text)
    r = run(tmp_path, "predict", "--model", model, "--data", data)
    assert_bad_input(r, "m.npz.json")


def test_classification_sidecar_with_tampered_classes(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 2))
    labels = np.where(X[:, 0] > 0, "yes", "no")
    write_csv(tmp_path / "c.csv", ["a", "b", "label"],
              [[repr(float(p)), repr(float(q)), t] for (p, q), t in zip(X, labels)])
    r = run(tmp_path, "train", "--data", "c.csv", "--target", "label", "--loss",
            "cross_entropy", "--hidden", "3", "--epochs", "2", "--quiet", "--out", "c.npz")
    assert r.returncode == 0, r.stderr
    for classes, word in (({"no": 0, "yes": 1}, "list of class labels"), ("ab", "list"),
                          (["no", "no"], "distinct: 1")):
        _tamper(tmp_path / "c.npz", classes=classes)
        r = run(tmp_path, "predict", "--model", "c.npz", "--data", "c.csv")
        assert_bad_input(r, "classes" if word != "distinct: 1" else "class labels", word)


# --------------------------------------------------------------------------------------
# Item 5: train never leaves a new model without its sidecar
# --------------------------------------------------------------------------------------

def _fail_sidecar_write(monkeypatch):
    real = bio.atomic_write

    def failing(path, write, *args, **kwargs):
        if os.fspath(path).endswith(".json"):
            raise OSError(28, "No space left on device", os.fspath(path))
        return real(path, write, *args, **kwargs)

    monkeypatch.setattr(bio, "atomic_write", failing)


def _train_args(data, out="m.npz"):
    return ["train", "--data", str(data), "--target", "y", "--hidden", "4", "--epochs", "2",
            "--quiet", "--out", out]


def test_failed_sidecar_write_leaves_no_model(tmp_path, reg_csv, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fail_sidecar_write(monkeypatch)
    assert cli.main(_train_args(reg_csv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bpfast: error: ") and "m.npz.json" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["reg.csv"]


def test_failed_sidecar_write_keeps_the_old_pair(tmp_path, trained, monkeypatch, capsys):
    model, data = trained
    before = model.read_bytes(), (tmp_path / "m.npz.json").read_bytes()
    monkeypatch.chdir(tmp_path)
    _fail_sidecar_write(monkeypatch)
    assert cli.main(_train_args(data) + ["--seed", "5"]) == 2
    assert (model.read_bytes(), (tmp_path / "m.npz.json").read_bytes()) == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".bpfast-")]


def test_failed_model_rename_leaves_a_pair_predict_refuses(tmp_path, trained, monkeypatch):
    """The sidecar is renamed into place before the model: when the model's rename fails,
    the new sidecar's checksum does not match the old model, and predict says so."""
    model, data = trained
    real = os.replace

    def failing(src, dst):
        if os.fspath(dst).endswith("m.npz"):
            raise OSError(5, "Input/output error", dst)
        real(src, dst)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "replace", failing)
    assert cli.main(_train_args(data) + ["--seed", "5"]) == 2
    monkeypatch.undo()
    r = run(tmp_path, "predict", "--model", model, "--data", data)
    assert_bad_input(r, "another version")


# --------------------------------------------------------------------------------------
# Item 10: scaling of huge columns; the sidecar is strict JSON
# --------------------------------------------------------------------------------------

def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")
    return json.loads(open(path).read(), parse_constant=refuse)


def test_column_of_1e300_is_standardised_not_zeroed(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.normal(size=60)
    big = np.where(rng.uniform(size=60) > 0.5, 1e300, -1e300)
    y = a + (big > 0)
    write_csv(tmp_path / "big.csv", ["a", "big", "y"],
              [[repr(float(p)), repr(float(q)), repr(float(t))] for p, q, t in zip(a, big, y)])
    r = run(tmp_path, "train", "--data", "big.csv", "--target", "y", "--epochs", "2",
            "--quiet", "--out", "m.npz")
    assert r.returncode == 0, r.stderr
    side = _strict_json(tmp_path / "m.npz.json")
    mean, std = np.array(side["scale"]["mean"]), np.array(side["scale"]["std"])
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert 0.5e300 < std[1] <= 1e300 and abs(mean[1]) < 1e300
    r = run(tmp_path, "predict", "--model", "m.npz", "--data", "big.csv", "--out", "p.csv")
    assert r.returncode == 0, r.stderr
    _, rows = read_csv(tmp_path / "p.csv")
    got = np.array([float(row[0]) for row in rows])
    scaled = (np.stack([a, big], axis=1) - mean) / std
    assert np.abs(scaled[:, 1]).min() > 0.5  # the column still carries its sign
    np.testing.assert_array_equal(got, bpfast.load(tmp_path / "m.npz").forward(scaled)[:, 0])


def test_column_that_overflows_when_standardised_is_refused(tmp_path):
    big = np.full(60, 1.7e308)
    big[::7] = -1.7e308
    write_csv(tmp_path / "huge.csv", ["a", "big", "y"],
              [["1.0", repr(float(q)), "0.5"] for q in big])
    r = run(tmp_path, "train", "--data", "huge.csv", "--target", "y", "--epochs", "1",
            "--quiet", "--out", "m.npz")
    assert_bad_input(r, "'big'", "overflow", "--scale none")
    assert not (tmp_path / "m.npz").exists()


def test_sidecar_never_holds_non_json_numbers(tmp_path):
    """Writing a sidecar with an infinite number fails and leaves no model, no sidecar."""
    net = bpfast.Network([2, 1], seed=0)
    side = {"format": cli.SIDECAR_FORMAT, "scale": {"mean": [0.0, float("inf")]}}
    with pytest.raises(ValueError, match="JSON"):
        cli._save_with_sidecar(net, str(tmp_path / "m.npz"), side)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------
# Item 12: messages
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["train", "--data"], ["--data", "expected one argument", "bpfast train --help"]),
    (["train"], ["required", "--data"]),
    (["nope"], ["invalid choice", "'nope'", "bpfast --help"]),
    (["check", "--samples", "0"], ["--samples", "positive"]),
    (["check", "--frobnicate"], ["unrecognized", "--frobnicate"]),
    (["check", "--seed", "-1"], ["--seed", "non-negative integer", "'-1'"]),
    (["demo", "--seed", "-3"], ["--seed", "non-negative integer"]),
    (["train", "--data", "x.csv", "--seed", "1.5"], ["--seed", "non-negative integer"]),
])
def test_usage_errors_are_one_line(tmp_path, args, words):
    r = run(tmp_path, *args)
    assert_bad_input(r, *words)
    assert "usage:" not in r.stderr


def test_unknown_activation_set_on_a_network_is_named():
    net = bpfast.Network([3, 4, 2], seed=0)
    net.activations = ("sigmoid", "gelu")
    X, Y = np.ones((2, 3)), np.ones((2, 2))
    for call in (lambda: net.fit(X, Y, epochs=1), lambda: net.forward(X)):
        with pytest.raises(ValueError, match=r"activations\[1\]: unknown activation 'gelu'"):
            call()
    net.activations = ["sigmoid", "logistic"]  # an alias is as good as its name
    net.fit(X, Y, epochs=1)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_unwritable_out_found_before_training(tmp_path, reg_csv):
    r = run(tmp_path, "train", "--data", reg_csv, "--target", "y", "--quiet",
            "--out", "/proc/m.npz")
    assert_bad_input(r, "/proc/m.npz", "cannot write")
    assert "training" not in r.stdout and r.stdout == ""


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root writes whatever the permissions")
def test_read_only_directory_found_before_training(tmp_path, reg_csv):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = run(tmp_path, "train", "--data", reg_csv, "--target", "y", "--quiet",
                "--out", ro / "m.npz")
    finally:
        ro.chmod(0o700)
    assert_bad_input(r, "cannot write")
    assert r.stdout == ""


@pytest.mark.parametrize("which", ["sidecar", "plot"])
def test_directory_in_the_way_found_before_training(tmp_path, reg_csv, which):
    (tmp_path / ("m.npz.json" if which == "sidecar" else "c.png")).mkdir()
    extra = ["--plot", "c.png"] if which == "plot" else []
    if which == "plot":
        pytest.importorskip("matplotlib")
    r = run(tmp_path, "train", "--data", reg_csv, "--target", "y", "--quiet",
            "--out", "m.npz", *extra)
    assert_bad_input(r, "is a directory")
    assert r.stdout == "" and not (tmp_path / "m.npz").exists()


@LINUX_PROC
def test_failed_model_write_names_the_target(tmp_path, reg_csv, monkeypatch, capsys):
    def full_disk(f, **arrays):
        raise OSError(28, "No space left on device", os.readlink(f"/proc/self/fd/{f.fileno()}"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bio.np, "savez", full_disk)
    assert cli.main(_train_args(reg_csv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bpfast: error: m.npz: No space left on device"), err
    assert ".bpfast-" not in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["reg.csv"]
