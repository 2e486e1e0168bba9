"""ONNX export under onnxruntime: Network.to_onnx for every activation in float32 and
float64 against forward/predict/predict_proba, and the drop-ins through skl2onnx."""
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import bpfast  # noqa: E402
from bpfast.activations import ACTIVATIONS  # noqa: E402
from bpfast.datasets import load_digits  # noqa: E402

DTYPES = (np.float32, np.float64)
#: onnxruntime against bpfast: the issue's 1e-5 in float32, near rounding in float64.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
HIDDEN = [a for a in ACTIVATIONS if a != "softmax"]  # softmax is output-only
# the directory holding the bpfast under test (a source tree built in place, or
# site-packages); subprocesses start in a directory of their own, so that a source
# tree without the compiled modules never comes first on their path
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))


def assert_close(got, want, dtype):
    """rtol of the dtype with an absolute floor rtol * max|want|."""
    rtol = RTOL[np.dtype(dtype)]
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol,
                               atol=rtol * np.max(np.abs(want)))


def session(path):
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def run(path, X):
    return session(path).run(None, {"input": X})


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    return X / 16.0, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", ACTIVATIONS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_every_activation_matches_forward_on_random_inputs(tmp_path, dtype, hidden, output):
    net = bpfast.Network([5, 7, 6, 3], activations=[hidden, hidden, output], dtype=dtype,
                         seed=ACTIVATIONS.index(hidden))
    rng = np.random.default_rng(1)
    for W, b in zip(net.weights, net.biases):
        b[...] = 0.3 * rng.standard_normal(b.shape)
        if "exp" in (hidden, output):  # exps of He-scaled layers overflow
            W *= 0.1
    X = (3 * rng.standard_normal((64, 5))).astype(dtype)
    path = net.to_onnx(tmp_path / "net.onnx")
    (out,) = run(path, X)
    assert out.dtype == dtype and out.shape == (64, 3)
    assert np.isfinite(net.forward(X)).all()
    assert_close(out, net.forward(X), dtype)
    (one,) = run(path, X[:1])  # the batch dimension is dynamic
    assert_close(one, net.forward(X[:1]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_shape_names_and_operators(tmp_path, dtype):
    net = bpfast.Network([4, 3, 2], activations=["silu", "identity"], dtype=dtype, seed=0)
    path = net.to_onnx(tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]
    model = onnx.load(path)
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    assert inp.name == "input"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4
    assert [o.name for o in model.graph.output] == ["output"]
    ops = [n.op_type for n in model.graph.node]
    # silu as x / (1 + exp(-x)): not the x * Sigmoid(x) pattern ONNX Runtime fuses
    assert ops.count("Gemm") == 2 and "Exp" in ops and "Div" in ops
    assert "Sigmoid" not in ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_digits_classifier_matches_predict_and_predict_proba(tmp_path, digits, dtype, hidden):
    X, y = digits
    net = bpfast.Network([64, 24, 10], activations=[hidden, "softmax"], dtype=dtype, seed=0)
    net.fit(X[:1200], y[:1200], loss="cross_entropy", epochs=3, learning_rate=0.05)
    Xt = X[1200:].astype(dtype)
    out, label, proba = run(net.to_onnx(tmp_path / "d.onnx"), Xt)
    assert_close(out, net.forward(Xt), dtype)
    assert_close(proba, net.predict_proba(Xt), dtype)
    np.testing.assert_array_equal(label, net.predict(Xt))


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_string_labels(tmp_path, digits, dtype):
    X, y = digits
    labels = np.where(y % 2 == 0, "even", "odd")
    net = bpfast.Network([64, 16, 1], activations=["tanh", "sigmoid"], dtype=dtype, seed=0)
    net.fit(X, labels, loss="binary_cross_entropy", epochs=3)
    Xd = X.astype(dtype)
    out, label, proba = run(net.to_onnx(tmp_path / "b.onnx"), Xd)
    assert_close(proba, net.predict_proba(Xd), dtype)
    np.testing.assert_array_equal(label.astype(str), net.predict(Xd))


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    net = bpfast.Network([2, 2], seed=0)
    with pytest.raises(ImportError, match=r"bpfast\[onnx\]"):
        net.to_onnx(tmp_path / "x.onnx")
    assert not os.listdir(tmp_path)


# ---- the drop-ins through skl2onnx ---------------------------------------------------

@pytest.fixture(scope="module")
def skl2onnx():
    mod = pytest.importorskip("skl2onnx")
    import bpfast.onnx as bonnx

    bonnx.register_skl2onnx()
    return mod


def _convert(skl2onnx, model, n_features, **options):
    from skl2onnx.common.data_types import FloatTensorType

    opts = {id(model): options} if options else None
    onx = skl2onnx.convert_sklearn(model, initial_types=[("input", FloatTensorType(
        [None, n_features]))], options=opts)
    return ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_drop_in_classifier_converts(skl2onnx, digits):
    from bpfast.sklearn import MLPClassifier

    X, y = digits
    X = X.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=40, random_state=0).fit(X, y)
    label, proba = _convert(skl2onnx, clf, 64, zipmap=False).run(None, {"input": X})
    np.testing.assert_array_equal(label, clf.predict(X))
    assert_close(proba, clf.predict_proba(X), np.float32)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_drop_in_regressor_converts(skl2onnx, digits):
    from bpfast.sklearn import MLPRegressor

    X, y = digits
    X = X.astype(np.float32)
    reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=40, random_state=0)
    reg.fit(X, y.astype(float))
    (pred,) = _convert(skl2onnx, reg, 64).run(None, {"input": X})
    assert_close(pred.ravel(), reg.predict(X), np.float32)


SCRIPT = """
import warnings; warnings.simplefilter("ignore")
import numpy as np
{imports}
from bpfast.sklearn import MLPClassifier
from skl2onnx.common.data_types import FloatTensorType
X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5).fit(X, X[:, 0] > 0)
skl2onnx.convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 3]))])
print("converted")
"""


@pytest.mark.parametrize("imports", ["import bpfast\nimport skl2onnx",
                                     "import skl2onnx\nimport bpfast",
                                     "import skl2onnx"])
def test_importing_bpfast_registers_in_either_order(skl2onnx, imports, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(imports=imports)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "converted"


def test_importing_bpfast_imports_none_of_onnx_skl2onnx_sklearn(tmp_path):
    code = ("import sys, bpfast; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'onnx', 'onnxruntime', 'skl2onnx', 'sklearn'}))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
