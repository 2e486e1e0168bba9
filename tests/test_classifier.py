"""Network as a classifier and regressor: 1-D targets, class labels, classes_, predict,
predict_proba, validation_split, labelled validation data, seeded shuffling,
class_weight, and classes_ in the model file."""
import json

import numpy as np
import pytest

import bpfast
from bpfast.io import ModelFileError

DTYPES = (np.float64, np.float32)


def params(net):
    return [p.copy() for p in net.weights + net.biases]


def assert_same_params(a, b):
    for k, (p, q) in enumerate(zip(a.weights + a.biases, b.weights + b.biases)):
        np.testing.assert_array_equal(p, q, err_msg=f"parameter {k}")


def blobs(m=120, k=3, n=4, seed=0):
    """Gaussian blobs: X (m, n) and integer labels 0..k-1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=m)
    centres = rng.normal(0, 3, size=(k, n))
    return centres[y] + rng.normal(size=(m, n)), y


def one_hot(y, k):
    Y = np.zeros((y.size, k))
    Y[np.arange(y.size), y] = 1
    return Y


def softmax_net(k=3, n=4, dtype=np.float64, seed=0):
    return bpfast.Network([n, 6, k], activations=["tanh", "softmax"], dtype=dtype, seed=seed)


def sigmoid_net(units=1, n=4, dtype=np.float64, seed=0):
    return bpfast.Network([n, 5, units], activations=["tanh", "sigmoid"], dtype=dtype,
                          seed=seed)


FIT = dict(epochs=3, batch_size=16, learning_rate=0.1, shuffle=False)


# ---- targets ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_1d_regression_targets_equal_a_column(dtype):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    a = bpfast.Network([3, 4, 1], activations=["tanh", "identity"], dtype=dtype, seed=0)
    b = bpfast.Network([3, 4, 1], activations=["tanh", "identity"], dtype=dtype, seed=0)
    ha = a.fit(X, y, **FIT)
    hb = b.fit(X, y.reshape(-1, 1), **FIT)
    assert ha.loss == hb.loss
    assert_same_params(a, b)
    assert a.classes_ is None
    np.testing.assert_array_equal(a.predict(X), a.forward(X))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["int", "str"])
def test_labels_equal_one_hot_targets(dtype, kind):
    X, y = blobs()
    names = np.array(["cat", "dog", "emu"])
    labels = y if kind == "int" else names[y]
    before = labels.copy()
    a, b = softmax_net(dtype=dtype), softmax_net(dtype=dtype)
    ha = a.fit(X, labels, loss="cross_entropy", **FIT)
    hb = b.fit(X, one_hot(y, 3), loss="cross_entropy", **FIT)
    assert ha.loss == hb.loss
    assert_same_params(a, b)
    np.testing.assert_array_equal(a.classes_, [0, 1, 2] if kind == "int" else names)
    np.testing.assert_array_equal(labels, before)  # the caller's labels untouched
    assert b.classes_ is None


def test_unsorted_labels_sorted_classes_and_predict():
    X, y = blobs(seed=3)
    labels = np.array([30, 10, 20])[y]
    net = softmax_net()
    net.fit(X, labels, loss="cross_entropy", epochs=30, learning_rate=0.3)
    np.testing.assert_array_equal(net.classes_, [10, 20, 30])
    A = net.forward(X)
    np.testing.assert_array_equal(net.predict(X), net.classes_[np.argmax(A, axis=1)])
    np.testing.assert_array_equal(net.predict_proba(X), A)
    assert np.mean(net.predict(X) == labels) > 0.9


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_labels_one_sigmoid_unit(dtype):
    X, y = blobs(k=2, seed=4)
    labels = np.array(["no", "yes"])[y]
    a, b = sigmoid_net(dtype=dtype), sigmoid_net(dtype=dtype)
    a.fit(X, labels, loss="binary_cross_entropy", **FIT)
    b.fit(X, y.reshape(-1, 1).astype(float), loss="binary_cross_entropy", **FIT)
    assert_same_params(a, b)
    np.testing.assert_array_equal(a.classes_, ["no", "yes"])
    p = a.forward(X)[:, 0]
    np.testing.assert_array_equal(a.predict(X), np.where(p > 0.5, "yes", "no"))
    proba = a.predict_proba(X)
    assert proba.shape == (X.shape[0], 2)
    np.testing.assert_array_equal(proba[:, 1], p)
    np.testing.assert_array_equal(proba[:, 0], 1 - p)


def test_binary_cross_entropy_k_units_one_hot():
    X, y = blobs(k=3, seed=5)
    a, b = sigmoid_net(units=3), sigmoid_net(units=3)
    a.fit(X, y, loss="binary_cross_entropy", **FIT)
    b.fit(X, one_hot(y, 3), loss="binary_cross_entropy", **FIT)
    assert_same_params(a, b)
    np.testing.assert_array_equal(a.predict(X), np.argmax(a.forward(X), axis=1))
    np.testing.assert_array_equal(a.predict_proba(X), a.forward(X))


@pytest.mark.parametrize("make", [list, lambda a: a.astype(object)])
def test_labels_as_a_list_or_object_array(make):
    X, y = blobs(seed=6)
    labels = np.array(["b", "a", "c"])[y]
    a, b = softmax_net(), softmax_net()
    a.fit(X, make(labels), loss="cross_entropy", **FIT)
    b.fit(X, labels, loss="cross_entropy", **FIT)
    assert_same_params(a, b)
    np.testing.assert_array_equal(a.classes_, ["a", "b", "c"])


def test_boolean_labels():
    X, y = blobs(k=2, seed=6)
    a, b = sigmoid_net(), sigmoid_net()
    a.fit(X, y == 1, loss="binary_cross_entropy", **FIT)
    b.fit(X, y, loss="binary_cross_entropy", **FIT)
    assert_same_params(a, b)
    np.testing.assert_array_equal(a.predict(X), b.predict(X) == 1)


def test_whole_float_labels_are_labels():
    X, y = blobs(seed=6)
    a, b = softmax_net(), softmax_net()
    a.fit(X, y.astype(float), loss="cross_entropy", **FIT)
    b.fit(X, y, loss="cross_entropy", **FIT)
    assert_same_params(a, b)
    np.testing.assert_array_equal(a.classes_, [0.0, 1.0, 2.0])


def test_float_2d_targets_keep_their_meaning_and_clear_classes():
    X, y = blobs()
    net = softmax_net()
    net.fit(X, y, loss="cross_entropy", **FIT)
    assert net.classes_ is not None
    net.fit(X, one_hot(y, 3), loss="cross_entropy", **FIT)
    assert net.classes_ is None
    np.testing.assert_array_equal(net.predict(X), net.forward(X))


@pytest.mark.parametrize("k_data, units, loss", [(4, 3, "cross_entropy"), (2, 3, "cross_entropy"),
                                                  (3, 1, "binary_cross_entropy"),
                                                  (2, 3, "binary_cross_entropy")])
def test_label_count_must_match_outputs(k_data, units, loss):
    X, y = blobs(k=k_data)
    act = "softmax" if loss == "cross_entropy" else "sigmoid"
    net = bpfast.Network([4, 5, units], activations=["tanh", act], seed=0)
    before = params(net)
    with pytest.raises(ValueError) as err:
        net.fit(X, y, loss=loss, **FIT)
    msg = str(err.value)
    assert msg.startswith("Y:") and f"found {k_data} classes" in msg
    assert f"{units} output unit" in msg and "[0, 1" in msg
    for p, q in zip(net.weights + net.biases, before):
        np.testing.assert_array_equal(p, q)


def test_bad_label_inputs():
    X, y = blobs()
    net = softmax_net()
    with pytest.raises(ValueError, match="Y: expected class labels"):
        net.fit(X, y + 0.5, loss="cross_entropy", **FIT)
    with pytest.raises(TypeError, match="Y: expected class labels"):
        net.fit(X, np.array([1 + 1j] * X.shape[0]), loss="cross_entropy", **FIT)
    with pytest.raises(ValueError, match="Y: expected 100 rows"):
        net.fit(X[:100], y, loss="cross_entropy", **FIT)
    single = bpfast.Network([4, 5, 1], activations=["tanh", "softmax"], seed=0)
    with pytest.raises(ValueError, match="Y: cross_entropy on a 1-unit softmax"):
        single.fit(X, y % 2, loss="cross_entropy", **FIT)


def test_1d_targets_for_several_outputs_under_mse():
    X, y = blobs()
    net = bpfast.Network([4, 5, 3], activations=["tanh", "identity"], seed=0)
    with pytest.raises(ValueError, match=r"Y: got 1-D targets .* 3 outputs .*class labels"):
        net.fit(X, y, **FIT)


def test_one_d_target_hint_is_a_column_not_a_row():
    """The old message advised ``Y.reshape(1, -1)`` for m targets: one row of m columns."""
    net = bpfast.Network([2, 3, 1], activations=["tanh", "identity"], seed=0)
    X, y = np.ones((5, 2)), np.ones(5)
    with pytest.raises(ValueError) as err:
        net.loss(X, y)
    assert "Y.reshape(-1, 1)" in str(err.value)
    assert "reshape(1, -1)" not in str(err.value)
    wide = bpfast.Network([2, 3, 4], activations=["tanh", "identity"], seed=0)
    with pytest.raises(ValueError) as err:
        wide.loss(X, np.ones(5))
    assert "reshape" not in str(err.value)
    with pytest.raises(ValueError, match=r"for one sample use X\.reshape\(1, -1\)"):
        wide.forward(np.ones(2))


# ---- predict_proba ------------------------------------------------------------------

def test_predict_proba_needs_a_probabilistic_output():
    net = bpfast.Network([3, 4, 2], activations=["tanh", "identity"], seed=0)
    with pytest.raises(ValueError, match="predict_proba: .*'identity'.*softmax or sigmoid"):
        net.predict_proba(np.ones((2, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_proba_rows_sum_to_one(dtype):
    X, _ = blobs()
    P = softmax_net(dtype=dtype).predict_proba(X)
    assert P.dtype == dtype
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-6 if dtype == np.float32 else 1e-12)


# ---- validation ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_validation_split_holds_out_the_last_rows(dtype):
    X, y = blobs(m=101)
    n = int(np.floor(101 * (1 - 0.25)))  # Keras's rule: 75 training rows
    a, b = softmax_net(dtype=dtype), softmax_net(dtype=dtype)
    ha = a.fit(X, y, loss="cross_entropy", validation_split=0.25, metrics=["accuracy"], **FIT)
    hb = b.fit(X[:n], y[:n], loss="cross_entropy", validation_data=(X[n:], y[n:]),
               metrics=["accuracy"], **FIT)
    assert ha.loss == hb.loss and ha.val_loss == hb.val_loss
    assert ha.metrics == hb.metrics
    assert_same_params(a, b)


def test_validation_split_with_sample_weight_splits_the_weights():
    X, y = blobs(m=100)
    w = np.linspace(0.5, 2, 100)
    a, b = softmax_net(), softmax_net()
    a.fit(X, y, loss="cross_entropy", validation_split=0.2, sample_weight=w, **FIT)
    b.fit(X[:80], y[:80], loss="cross_entropy", validation_data=(X[80:], y[80:]),
          sample_weight=w[:80], **FIT)
    assert_same_params(a, b)


def test_labelled_validation_data_equals_one_hot():
    X, y = blobs()
    Xv, yv = blobs(m=30, seed=9)
    a, b = softmax_net(), softmax_net()
    ha = a.fit(X, y, loss="cross_entropy", validation_data=(Xv, yv), **FIT)
    hb = b.fit(X, y, loss="cross_entropy", validation_data=(Xv, one_hot(yv, 3)), **FIT)
    assert ha.val_loss == hb.val_loss
    # and equals the loss computed from the outputs
    A = np.clip(a.forward(Xv), np.finfo(float).eps, 1)
    np.testing.assert_allclose(ha.val_loss[-1], -np.mean(np.log(A[np.arange(30), yv])),
                               rtol=1e-10)


def test_validation_errors():
    X, y = blobs()
    net = softmax_net()
    with pytest.raises(ValueError, match="validation_split: give validation_split or "
                                         "validation_data, not both"):
        net.fit(X, y, loss="cross_entropy", validation_split=0.2, validation_data=(X, y))
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="validation_split: expected a number in"):
            net.fit(X, y, loss="cross_entropy", validation_split=bad)
    with pytest.raises(TypeError, match="validation_split"):
        net.fit(X, y, loss="cross_entropy", validation_split="0.2")
    with pytest.raises(ValueError, match="validation_split: .* both need at least one"):
        net.fit(X[:3], [0, 1, 2], loss="cross_entropy", validation_split=0.9)
    with pytest.raises(ValueError, match=r"validation_data\[1\]: label 7 is not one of"):
        net.fit(X, y, loss="cross_entropy", validation_data=(X[:2], [0, 7]))


# ---- seeded shuffling ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_network_seed_makes_fit_reproducible(dtype):
    """Without fit(seed=...) the shuffle used to be unseeded: two fits differed."""
    X, y = blobs()
    y = one_hot(y, 3)  # targets the old fit took too: the test isolates the seeding
    a, b = softmax_net(dtype=dtype, seed=0), softmax_net(dtype=dtype, seed=0)
    kw = dict(loss="cross_entropy", epochs=3, batch_size=8, optimizer="adam",
              learning_rate=0.01)
    assert a.fit(X, y, **kw).loss == b.fit(X, y, **kw).loss
    assert_same_params(a, b)
    # an explicit seed still wins, and the default is the network's seed
    c, d = softmax_net(dtype=dtype, seed=0), softmax_net(dtype=dtype, seed=0)
    c.fit(X, y, seed=0, **kw)
    d.fit(X, y, seed=1, **kw)
    assert_same_params(a, c)
    assert not np.array_equal(c.weights[0], d.weights[0])


# ---- class_weight -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_class_weight_equals_sample_weight(dtype, optimizer):
    X, y = blobs(m=90, seed=2)
    cw = {0: 0.5, 2: 3.0}  # class 1 weighs 1
    kw = dict(loss="cross_entropy", optimizer=optimizer, epochs=4, batch_size=8,
              learning_rate=0.05)
    a, b = softmax_net(dtype=dtype), softmax_net(dtype=dtype)
    a.fit(X, y, class_weight=cw, **kw)
    b.fit(X, y, sample_weight=np.array([0.5, 1.0, 3.0])[y], **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for p, q in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_allclose(p, q, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_balanced_class_weight_is_scikit_learns_times_sample_weight(dtype):
    from sklearn.utils.class_weight import compute_class_weight

    rng = np.random.default_rng(3)
    X, y = blobs(m=100, seed=3)
    y = np.where(rng.random(100) < 0.7, 0, y)  # imbalanced
    labels = np.array(["a", "b", "c"])[y]
    sw = rng.uniform(0.5, 2, size=100)
    per_class = compute_class_weight("balanced", classes=np.array(["a", "b", "c"]), y=labels)
    a, b = softmax_net(dtype=dtype), softmax_net(dtype=dtype)
    a.fit(X, labels, loss="cross_entropy", class_weight="balanced", sample_weight=sw, **FIT)
    b.fit(X, labels, loss="cross_entropy", sample_weight=per_class[y] * sw, **FIT)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for p, q in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_allclose(p, q, rtol=tol, atol=tol)


def test_balanced_class_weight_counts_the_training_rows_only():
    X, y = blobs(m=100, seed=8)
    from sklearn.utils.class_weight import compute_class_weight

    per_class = compute_class_weight("balanced", classes=np.arange(3), y=y[:80])
    a, b = softmax_net(), softmax_net()
    a.fit(X, y, loss="cross_entropy", class_weight="balanced", validation_split=0.2, **FIT)
    b.fit(X[:80], y[:80], loss="cross_entropy", sample_weight=per_class[y[:80]], **FIT)
    for p, q in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-13)


def test_class_weight_errors():
    X, y = blobs()
    net = softmax_net()
    with pytest.raises(ValueError, match="class_weight: needs class labels"):
        net.fit(X, one_hot(y, 3), loss="cross_entropy", class_weight="balanced")
    with pytest.raises(ValueError, match="class_weight: class 5 is not one of"):
        net.fit(X, y, loss="cross_entropy", class_weight={5: 2.0})
    with pytest.raises(ValueError, match="class_weight: expected a dict or 'balanced'"):
        net.fit(X, y, loss="cross_entropy", class_weight="auto")
    with pytest.raises(TypeError, match="class_weight: expected a dict or 'balanced'"):
        net.fit(X, y, loss="cross_entropy", class_weight=[1, 2, 3])
    with pytest.raises(ValueError, match="class_weight: expected a finite non-negative"):
        net.fit(X, y, loss="cross_entropy", class_weight={0: -1})
    with pytest.raises(ValueError, match="class_weight: 'balanced' needs every class"):
        net.fit(X[y != 2][:-1], np.r_[y[y != 2][:-2], 2], loss="cross_entropy",
                class_weight="balanced", validation_split=0.01)


# ---- classes_ in the model file -----------------------------------------------------

@pytest.mark.parametrize("labels", [np.array([3, 7, 9]), np.array(["a", "b", "c"])])
def test_classes_survive_save_and_load(tmp_path, labels):
    X, y = blobs()
    net = softmax_net(dtype=np.float32)
    net.fit(X, labels[y], loss="cross_entropy", **FIT)
    net.save(tmp_path / "m.npz")
    back = bpfast.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.classes_, labels)
    np.testing.assert_array_equal(back.predict(X), net.predict(X))
    plain = bpfast.load(_saved(tmp_path, softmax_net()))
    assert plain.classes_ is None


def _saved(tmp_path, net, name="plain.npz"):
    net.save(tmp_path / name)
    return tmp_path / name


def _rewrite_classes(path, classes):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["metadata"]))
    meta["classes"] = classes
    arrays["metadata"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_old_files_without_classes_load():
    """A format-1 file written before classes_ existed has no "classes" key."""
    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "old.npz")
        softmax_net().save(path)
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays["metadata"]))
        del meta["classes"]
        arrays["metadata"] = np.array(json.dumps(meta))
        np.savez(path, **arrays)
        assert bpfast.load(path).classes_ is None


@pytest.mark.parametrize("classes", [[0, 1], [2, 1, 0], [0, 0, 1], [0, "a", 2], "abc",
                                     [0, 1, [2]], [0.5, 1.5, float("nan")], {"a": 1}])
def test_bad_classes_metadata(tmp_path, classes):
    path = _saved(tmp_path, softmax_net())
    _rewrite_classes(path, classes)
    with pytest.raises(ModelFileError, match="metadata 'classes'"):
        bpfast.load(path)


@pytest.mark.parametrize("classes", [np.array([2, 1]), np.array([0, 1, 2]), np.array([1, 1])])
def test_save_refuses_classes_that_load_would_refuse(tmp_path, classes):
    """classes_ must be as many sorted, distinct labels as the output layer takes."""
    net = bpfast.Network([3, 4, 2], activations=["tanh", "softmax"], seed=0)
    net.classes_ = classes
    path = tmp_path / "model.npz"
    with pytest.raises(ValueError, match="classes"):
        net.save(path)
    assert not path.exists()
