"""fit(metrics=...) and fit(callbacks=...): the recorded values against scikit-learn's
metrics on the epoch's own outputs, and each callback against its rule replayed on the
recorded history."""
import csv
import math
import os

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, r2_score

import bpfast
from bpfast.callbacks import (Callback, CSVLogger, EarlyStopping, ModelCheckpoint,
                              ReduceLROnPlateau)

DTYPES = (np.float64, np.float32)


def blobs(m=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=m)
    centres = rng.normal(0, 1.5, size=(3, 4))
    return centres[y] + rng.normal(size=(m, 4)), y


def classifier(dtype=np.float64):
    return bpfast.Network([4, 6, 3], activations=["tanh", "softmax"], dtype=dtype, seed=0)


def regression(m=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, 3))
    return X, np.tanh(X @ rng.normal(size=(3, 2))) + 0.1 * rng.normal(size=(m, 2))


def regressor(dtype=np.float64):
    return bpfast.Network([3, 6, 2], activations=["tanh", "identity"], dtype=dtype, seed=0)


class Snapshots(Callback):
    """Keeps every epoch's parameters and outputs on given inputs."""

    def __init__(self, *inputs):
        self.inputs, self.params, self.outputs = inputs, [], []

    def on_epoch_end(self, state, epoch):
        net = state.network
        self.params.append([p.copy() for p in net.weights + net.biases])
        self.outputs.append([net.forward(X) for X in self.inputs])


# ---- metrics ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_accuracy_per_epoch_matches_scikit_learn(dtype):
    X, y = blobs()
    Xv, yv = blobs(40, seed=1)
    net = classifier(dtype)
    snaps = Snapshots(X, Xv)
    h = net.fit(X, y, loss="cross_entropy", epochs=5, learning_rate=0.2,
                validation_data=(Xv, yv), metrics=["accuracy"], callbacks=[snaps])
    assert len(h.metrics["accuracy"]) == len(h.metrics["val_accuracy"]) == 5
    for epoch, (A, Av) in enumerate(snaps.outputs):
        assert h.metrics["accuracy"][epoch] == accuracy_score(y, A.argmax(axis=1))
        assert h.metrics["val_accuracy"][epoch] == accuracy_score(yv, Av.argmax(axis=1))
    assert h.metrics["loss"] is h.loss and h.metrics["val_loss"] is h.val_loss
    # the last epoch's accuracy is predict's
    assert h.metrics["val_accuracy"][-1] == np.mean(net.predict(Xv) == yv)


def test_binary_accuracy_thresholds_at_half():
    X, y = blobs()
    y = y % 2
    net = bpfast.Network([4, 5, 1], activations=["tanh", "sigmoid"], seed=0)
    snaps = Snapshots(X)
    h = net.fit(X, y, loss="binary_cross_entropy", epochs=3, metrics=["accuracy"],
                callbacks=[snaps])
    for epoch, (A,) in enumerate(snaps.outputs):
        assert h.metrics["accuracy"][epoch] == accuracy_score(y, A[:, 0] > 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_regression_metrics_match_scikit_learn(dtype):
    X, Y = regression()
    Xv, Yv = regression(30, seed=1)
    net = regressor(dtype)
    snaps = Snapshots(X, Xv)
    h = net.fit(X, Y, epochs=4, learning_rate=0.05, validation_data=(Xv, Yv),
                metrics=["mse", "mae", "r2"], callbacks=[snaps])
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for epoch, (A, Av) in enumerate(snaps.outputs):
        for prefix, (out, target) in (("", (A, Y)), ("val_", (Av, Yv))):
            target = target.astype(dtype).astype(np.float64)  # as training saw it
            out = out.astype(np.float64)
            for name, f in (("mse", mean_squared_error), ("mae", mean_absolute_error),
                            ("r2", r2_score)):
                np.testing.assert_allclose(h.metrics[prefix + name][epoch], f(target, out),
                                           rtol=rtol, err_msg=prefix + name)
    assert h.learning_rate == [0.05] * 4


def test_r2_of_a_constant_column_as_scikit_learn():
    from bpfast.metrics import r2

    Y = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    for A in (Y.copy(), Y + [[0.5, 0.1], [0, 0], [0, 0]]):
        assert r2(A, Y) == pytest.approx(r2_score(Y, A), rel=1e-12)


def test_without_metrics_only_the_loss_is_recorded():
    X, Y = regression()
    h = regressor().fit(X, Y, epochs=2)
    assert h.metrics == {"loss": h.loss}
    h = regressor().fit(X, Y, epochs=2, validation_split=0.25)
    assert set(h.metrics) == {"loss", "val_loss"}


def test_bad_metrics():
    X, Y = regression()
    net = regressor()
    with pytest.raises(ValueError, match="metrics: 'accuracy' needs a classification loss"):
        net.fit(X, Y, metrics=["accuracy"])
    with pytest.raises(ValueError, match="metrics: expected names from accuracy, mse"):
        net.fit(X, Y, metrics=["f1"])
    with pytest.raises(ValueError, match="metrics: each name at most once"):
        net.fit(X, Y, metrics=["mse", "mse"])
    with pytest.raises(TypeError, match="metrics: expected a list of names"):
        net.fit(X, Y, metrics=3)
    assert net.fit(X, Y, epochs=1, metrics="mae").metrics["mae"]  # one name alone


# ---- EarlyStopping ------------------------------------------------------------------

def replay_early_stopping(values, mode, patience, min_delta):
    """(epochs run, best epoch): Keras's rule on a recorded series."""
    best, best_epoch, wait = (math.inf if mode == "min" else -math.inf), None, 0
    for epoch, v in enumerate(values):
        better = v < best - min_delta if mode == "min" else v > best + min_delta
        if better:
            best, best_epoch, wait = v, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch + 1, best_epoch
    return len(values), best_epoch


@pytest.mark.parametrize("monitor, mode", [("val_accuracy", "auto"), ("val_loss", "auto"),
                                           ("accuracy", "max"), ("loss", "min")])
def test_early_stopping_follows_its_rule(monitor, mode):
    X, y = blobs(seed=2)
    # a full run, recorded, to replay the rule on
    full = classifier().fit(X, y, loss="cross_entropy", epochs=40, learning_rate=0.5,
                            batch_size=8, validation_split=0.3, metrics=["accuracy"])
    true_mode = mode if mode != "auto" else ("max" if "accuracy" in monitor else "min")
    want_epochs, want_best = replay_early_stopping(full.metrics[monitor], true_mode, 2, 0.001)
    assert want_epochs < 40  # the test exercises a stop
    snaps = Snapshots()
    net = classifier()
    h = net.fit(X, y, loss="cross_entropy", epochs=40, learning_rate=0.5, batch_size=8,
                validation_split=0.3, metrics=["accuracy"], callbacks=[
                    snaps, EarlyStopping(monitor=monitor, mode=mode, patience=2,
                                         min_delta=0.001, restore_best_weights=True)])
    assert h.epochs == want_epochs and h.stopped_early and h.best_epoch == want_best
    assert h.metrics[monitor] == full.metrics[monitor][:want_epochs]
    for p, q in zip(net.weights + net.biases, snaps.params[want_best]):
        np.testing.assert_array_equal(p, q)


def test_early_stopping_without_restore_keeps_the_last_weights():
    X, y = blobs(seed=2)
    snaps = Snapshots()
    net = classifier()
    h = net.fit(X, y, loss="cross_entropy", epochs=40, learning_rate=0.5, batch_size=8,
                callbacks=[snaps, EarlyStopping(monitor="loss", patience=0, min_delta=0.05)])
    assert h.stopped_early and h.epochs < 40
    for p, q in zip(net.weights + net.biases, snaps.params[-1]):
        np.testing.assert_array_equal(p, q)


def test_unrecorded_monitor_is_an_error_before_training():
    X, y = blobs()
    net = classifier()
    before = [p.copy() for p in net.weights + net.biases]
    with pytest.raises(ValueError, match="monitor: 'val_loss' is not recorded by this fit; "
                                         "recorded are loss"):
        net.fit(X, y, loss="cross_entropy", callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="monitor: 'accuracy' is not recorded"):
        net.fit(X, y, loss="cross_entropy", callbacks=[ReduceLROnPlateau(monitor="accuracy")])
    for p, q in zip(net.weights + net.biases, before):
        np.testing.assert_array_equal(p, q)


def test_bad_callback_arguments():
    X, y = blobs()
    with pytest.raises(TypeError, match=r"callbacks\[0\]: expected a bpfast.callbacks.Callback"):
        classifier().fit(X, y, loss="cross_entropy", callbacks=[lambda *a: None])
    with pytest.raises(ValueError, match="mode: expected 'auto', 'min' or 'max'"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=float("nan"))
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="min_lr"):
        ReduceLROnPlateau(min_lr=-0.1)


def test_old_callback_and_callbacks_together():
    X, y = blobs()
    seen = []
    h = classifier().fit(X, y, loss="cross_entropy", epochs=5,
                         callback=lambda net, epoch, hist: seen.append(epoch) or epoch < 2,
                         callbacks=[Snapshots()])
    assert seen == [0, 1, 2] and h.epochs == 3


# ---- ModelCheckpoint ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_saves_the_best_epoch(tmp_path, dtype):
    X, y = blobs(seed=3)
    snaps = Snapshots()
    path = tmp_path / "best.npz"
    net = classifier(dtype)
    h = net.fit(X, y, loss="cross_entropy", epochs=12, learning_rate=1.5, batch_size=4,
                validation_split=0.3, metrics=["accuracy"],
                callbacks=[snaps, ModelCheckpoint(path, monitor="val_loss",
                                                  save_best_only=True)])
    best = int(np.argmin(h.val_loss))
    saved = bpfast.load(path)
    for p, q in zip(saved.weights + saved.biases, snaps.params[best]):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(saved.classes_, [0, 1, 2])
    assert os.listdir(tmp_path) == ["best.npz"]  # no temporary files left


def test_checkpoint_every_epoch_with_a_name_pattern(tmp_path):
    X, y = blobs()
    cb = ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{loss:.3f}.npz"))
    h = classifier().fit(X, y, loss="cross_entropy", epochs=3, callbacks=[cb])
    want = [str(tmp_path / f"m-{e + 1:02d}-{h.loss[e]:.3f}.npz") for e in range(3)]
    assert cb.saved == want and all(os.path.exists(p) for p in want)


# ---- CSVLogger ----------------------------------------------------------------------

def test_csv_logger_rows_are_the_history(tmp_path):
    X, y = blobs()
    path = tmp_path / "log.csv"
    h = classifier().fit(X, y, loss="cross_entropy", epochs=4, validation_split=0.25,
                         metrics=["accuracy", "mae"], lr_schedule="invscaling",
                         callbacks=[CSVLogger(path)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names = sorted(h.metrics)
    assert rows[0] == ["epoch"] + names + ["learning_rate"]
    assert len(rows) == 5
    for epoch, row in enumerate(rows[1:]):
        assert int(row[0]) == epoch
        for name, text in zip(names, row[1:]):
            assert float(text) == h.metrics[name][epoch]
        assert float(row[-1]) == h.learning_rate[epoch]
    # append adds rows without a second header; a new logger replaces the file
    classifier().fit(X, y, loss="cross_entropy", epochs=2, validation_split=0.25,
                     metrics=["accuracy", "mae"], callbacks=[CSVLogger(path, append=True)])
    with open(path, newline="") as f:
        assert len(list(csv.reader(f))) == 7
    classifier().fit(X, y, loss="cross_entropy", epochs=1, callbacks=[CSVLogger(path)])
    with open(path, newline="") as f:
        assert list(csv.reader(f))[0] == ["epoch", "loss", "learning_rate"]


def test_csv_logger_closes_its_file_when_training_fails(tmp_path):
    X, y = blobs()
    logger = CSVLogger(tmp_path / "log.csv")
    with pytest.raises(bpfast.DivergenceError):
        bpfast.Network([4, 6, 3], activations=["relu", "identity"], seed=0).fit(
            X * 1e150, np.eye(3)[y], epochs=3, learning_rate=1e10, callbacks=[logger])
    assert logger._file is None


# ---- ReduceLROnPlateau --------------------------------------------------------------

def replay_plateau(values, rate0, factor, patience, min_delta, min_lr):
    """The rates of each epoch under Keras's rule, replayed on the recorded monitor."""
    rates, rate, best, wait = [], rate0, math.inf, 0
    for v in values:
        rates.append(rate)
        if v < best - min_delta:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                wait, rate = 0, max(rate * factor, min_lr)
    return rates


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_on_plateau_follows_its_rule(dtype):
    X, y = blobs(seed=4)
    cb = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=1e-3,
                           min_lr=0.05)
    h = classifier(dtype).fit(X, y, loss="cross_entropy", epochs=30, learning_rate=0.8,
                              batch_size=8, validation_split=0.3, callbacks=[cb])
    want = replay_plateau(h.val_loss, 0.8, 0.5, 1, 1e-3, 0.05)
    np.testing.assert_allclose(h.learning_rate, want, rtol=1e-15)
    assert min(h.learning_rate) < 0.8  # the test exercises a reduction
    assert min(h.learning_rate) >= 0.05 * (1 - 1e-15)


def test_reduce_on_plateau_scales_a_schedule():
    X, y = blobs(seed=4)
    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)
    h = classifier().fit(X, y, loss="cross_entropy", epochs=4, learning_rate=0.4,
                         lr_schedule=lambda e: 0.4 / (e + 1), callbacks=[cb])
    # every epoch after the first is a "plateau" (min_delta 10): the scale halves after each
    np.testing.assert_allclose(h.learning_rate,
                               [0.4 / (e + 1) * 0.5 ** max(e - 1, 0) for e in range(4)],
                               rtol=1e-15)
