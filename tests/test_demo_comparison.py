"""Issue 16, item 13: what `bpfast demo` compares between bpfast and the reference.

With Adam at learning rate 0.01 the two trainers' weights after 20 epochs differ by a
tenth of their size: not a difference in the updates (after one epoch they agree to
rounding) but rounding differences grown over 3,600 steps, as large as those between
two runs of the reference itself whose start differs by one unit in the last place.
The demo compares the weights after the first epoch, and says what the last epoch's
figures are.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import bpfast
from bpfast import reference
from bpfast.datasets import load_digits

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))
FIRST = re.compile(r"^after epoch 1 \((\d+) steps\), bpfast against the reference: "
                   r"same weights to (\S+)$")
LAST = re.compile(r"^after epoch (\d+): held-out accuracy (\S+) \(reference (\S+)\), "
                  r"training loss (\S+) \(reference (\S+)\); weights apart by (\S+), "
                  r"rounding differences grown over (\d+) steps$")


def _demo(tmp_path, *args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # not --quiet, which silences the report these tests read; progress goes to stderr
    r = subprocess.run([sys.executable, "-m", "bpfast", "demo", *args],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-4)])
def test_demo_adam_compares_the_first_epoch(tmp_path, dtype, tol):
    lines = _demo(tmp_path, "--optimizer", "adam", "--learning-rate", "0.01",
                  "--dtype", dtype)
    first = [FIRST.match(l) for l in lines if FIRST.match(l)]
    assert len(first) == 1, lines
    steps, diff = int(first[0].group(1)), float(first[0].group(2))
    assert steps == 180  # 1,438 training images in batches of 8
    assert diff < tol
    last = [LAST.match(l) for l in lines if LAST.match(l)]
    assert len(last) == 1, lines
    epoch, acc, ref_acc, loss, ref_loss, apart, total = last[0].groups()
    assert int(epoch) == 20 and int(total) == 20 * 180
    assert 0.9 < float(acc) <= 1 and 0.9 < float(ref_acc) <= 1
    assert float(loss) > 0 and float(ref_loss) > 0 and float(apart) >= 0


def test_demo_one_epoch_prints_no_last_epoch_line(tmp_path):
    lines = _demo(tmp_path, "--epochs", "1")
    assert sum(bool(FIRST.match(l)) for l in lines) == 1
    assert not any(LAST.match(l) for l in lines)


def test_adam_steps_agree_with_the_reference_step_by_step():
    """The first steps agree to rounding: bias correction, epsilon and t counted alike."""
    X8, y = load_digits()
    X, Y = X8[:80] / 16.0, np.eye(10)[y[:80]]
    for steps in (1, 2, 3, 10):
        net = bpfast.Network([64, 64, 10], activations=["relu", "softmax"], seed=0)
        start = [p.copy() for p in net.weights + net.biases]
        args = dict(batch_size=8, learning_rate=0.01, optimizer="adam",
                    loss="cross_entropy")
        net.fit(X[:8 * steps], Y[:8 * steps], epochs=1, shuffle=False, **args)
        Wr, br, _ = reference.fit(start[:2], start[2:], net.activations, X[:8 * steps],
                                  Y[:8 * steps], epochs=1, **args)
        for got, want in zip(net.weights + net.biases, Wr + br):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
