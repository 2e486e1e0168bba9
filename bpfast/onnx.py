"""ONNX export: :meth:`bpfast.Network.to_onnx`, and the drop-ins for skl2onnx.

:func:`to_onnx` writes a network as an ONNX graph (needs ``pip install 'bpfast[onnx]'``,
which installs ``onnx``): one ``Gemm`` per layer (``Z = A @ W.T + b``) and the layer's
activation, in the network's dtype (float32 or float64). The input is named ``"input"``
with shape ``("batch", n^0)``, the batch dimension dynamic; the output ``"output"`` is
:meth:`~bpfast.Network.forward`'s ``A^L``. A network fitted on class labels (with
``classes_``) also gets ``"label"`` (:meth:`~bpfast.Network.predict`) and
``"probabilities"`` (:meth:`~bpfast.Network.predict_proba`).

:func:`register_skl2onnx` registers :class:`bpfast.sklearn.MLPClassifier` and
``MLPRegressor`` with skl2onnx under scikit-learn's own MLP converters, so
``skl2onnx.convert_sklearn`` converts them as it converts scikit-learn's classes (the
drop-ins hold the same fitted attributes). ``import bpfast`` imports this module, which
registers them as soon as skl2onnx is imported (at once if it already is), without
importing skl2onnx, scikit-learn or onnx itself.

>>> import bpfast
>>> net = bpfast.Network([4, 8, 3], activations=["relu", "softmax"], seed=0)
>>> net.to_onnx("net.onnx")  # doctest: +SKIP
'net.onnx'
"""
import importlib.abc
import importlib.util
import os
import sys
import warnings
from typing import Any, Union

import numpy as np

from .activations import LEAKY_SLOPE
from .io import atomic_write

__all__ = ["onnx_model", "register_skl2onnx", "to_onnx"]

#: The ONNX operator set the graphs use (Softmax over the last axis needs 13 or later).
OPSET = 17
#: The ONNX IR version written (the oldest that carries opset 17, for older runtimes).
IR_VERSION = 8


def _require_onnx():
    try:
        import onnx
    except ImportError as err:
        raise ImportError(
            "Network.to_onnx needs the onnx package; install it with "
            "pip install 'bpfast[onnx]'"
        ) from err
    return onnx


class _Graph:
    """Nodes and constants of a graph under construction, with fresh names."""

    def __init__(self, onnx, dtype):
        self.onnx, self.dtype = onnx, np.dtype(dtype)
        self.nodes, self.constants, self._count = [], [], 0

    def name(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, stem, value, dtype=None):
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.name(stem)
        self.constants.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, *inputs, out=None, **attributes):
        out = self.name(op_type.lower()) if out is None else out
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out],
                                                     **attributes))
        return out


def _softplus(g, x):
    """``max(x, 0) + log(1 + exp(-|x|))``, the reference's overflow-free form (and ONNX
    Runtime has no float64 Softplus)."""
    tail = g.op("Log", g.op("Add", g.constant("one", 1.0),
                            g.op("Exp", g.op("Neg", g.op("Abs", x)))))
    return g.op("Add", g.op("Relu", x), tail)


def _leaky_relu(g, x):
    """``max(x, slope * x)`` with the slope in the network's dtype (LeakyRelu's ``alpha``
    attribute is a float32, off by 2e-10 in a float64 graph)."""
    return g.op("Max", x, g.op("Mul", x, g.constant("slope", LEAKY_SLOPE)))


def _silu(g, x):
    """``x / (1 + exp(-x))``, the same function as ``x * sigmoid(x)``, written so that
    ONNX Runtime's optimizer does not fuse it into its QuickGelu kernel, which older
    releases implement for float32 only (a float64 graph then fails to load)."""
    return g.op("Div", x, g.op("Add", g.constant("one", 1.0), g.op("Exp", g.op("Neg", x))))


#: Activation name -> function (graph, input name) -> output name.
_ACTIVATIONS = {
    "identity": lambda g, x: x,
    "sigmoid": lambda g, x: g.op("Sigmoid", x),
    "tanh": lambda g, x: g.op("Tanh", x),
    "relu": lambda g, x: g.op("Relu", x),
    "leaky_relu": _leaky_relu,
    "softplus": _softplus,
    "silu": _silu,
    "softmax": lambda g, x: g.op("Softmax", x, axis=-1),
    "exp": lambda g, x: g.op("Exp", x),
}


def _label_table(g, classes):
    """A constant holding ``classes`` (strings, int64, float64 or bool) and its ONNX
    element type."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "US":
        classes = classes.astype(object)
    elif classes.dtype.kind in "iu":
        classes = classes.astype(np.int64)
    elif classes.dtype.kind == "f":
        classes = classes.astype(np.float64)
    name = g.constant("classes", classes, dtype=classes.dtype)
    return name, g.constants[-1].data_type


def _classifier_outputs(g, net, A):
    """``(label, probabilities)`` outputs for ``net.classes_``, as ``predict`` and
    ``predict_proba``; returns the label's element type."""
    table, label_type = _label_table(g, net.classes_)
    if net.sizes[-1] == 1:
        index = g.op("Cast", g.op("Greater", A, g.constant("half", 0.5)),
                     to=g.onnx.TensorProto.INT64)
        index = g.op("Reshape", index, g.constant("shape", [-1], dtype=np.int64))
        g.op("Concat", g.op("Sub", g.constant("one", 1.0), A), A, axis=1,
             out="probabilities")
    else:
        index = g.op("ArgMax", A, axis=1, keepdims=0)
        g.op("Identity", A, out="probabilities")
    g.op("Gather", table, index, axis=0, out="label")
    return label_type


def onnx_model(net) -> Any:
    """The ONNX ``ModelProto`` of ``net`` (see the module's description)."""
    onnx = _require_onnx()
    dtype = np.dtype(net.dtype)
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    g = _Graph(onnx, dtype)
    a = "input"
    for l, (W, b, act) in enumerate(zip(net.weights, net.biases, net.activations)):
        z = g.op("Gemm", a, g.constant(f"W{l}", W), g.constant(f"b{l}", b), transB=1)
        a = _ACTIVATIONS[act](g, z)
    g.op("Identity", a, out="output")
    outputs = [onnx.helper.make_tensor_value_info("output", elem, ["batch", net.sizes[-1]])]
    classes = getattr(net, "classes_", None)
    if classes is not None and net.activations[-1] in ("softmax", "sigmoid"):
        label_type = _classifier_outputs(g, net, "output")
        n_proba = 2 if net.sizes[-1] == 1 else net.sizes[-1]
        outputs += [onnx.helper.make_tensor_value_info("label", label_type, ["batch"]),
                    onnx.helper.make_tensor_value_info("probabilities", elem,
                                                       ["batch", n_proba])]
    graph = onnx.helper.make_graph(
        g.nodes, "bpfast_network",
        [onnx.helper.make_tensor_value_info("input", elem, ["batch", net.sizes[0]])],
        outputs, initializer=g.constants,
    )
    model = onnx.helper.make_model(graph, producer_name="bpfast",
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def to_onnx(net, path: Union[str, "os.PathLike"]) -> str:
    """Write ``net`` as an ONNX model to ``path`` (atomically: a temporary file beside
    it, then renamed); returns ``path``.

    Raises
    ------
    ImportError
        When the ``onnx`` package is missing (``pip install 'bpfast[onnx]'``).
    """
    data = onnx_model(net).SerializeToString()
    return atomic_write(path, lambda f: f.write(data), suffix=".onnx.tmp")


def register_skl2onnx() -> None:
    """Register :class:`bpfast.sklearn.MLPClassifier` and ``MLPRegressor`` with skl2onnx,
    under the shape calculators, converters and options of scikit-learn's MLP classes.

    Needs ``skl2onnx`` (and scikit-learn). Calling it again does nothing new.
    """
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes, calculate_linear_regressor_output_shapes)
    from skl2onnx.operator_converters.multilayer_perceptron import (
        convert_sklearn_mlp_classifier, convert_sklearn_mlp_regressor)

    from .sklearn import MLPClassifier, MLPRegressor

    update_registered_converter(
        MLPClassifier, "SklearnMLPClassifier", calculate_linear_classifier_output_shapes,
        convert_sklearn_mlp_classifier,
        options={"zipmap": [True, False, "columns"], "output_class_labels": [False, True],
                 "nocl": [True, False]},
    )
    update_registered_converter(
        MLPRegressor, "SklearnMLPRegressor", calculate_linear_regressor_output_shapes,
        convert_sklearn_mlp_regressor,
    )


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Runs :func:`register_skl2onnx` right after skl2onnx is first imported, so that
    importing this module never imports skl2onnx (which takes a second or more)."""

    def find_spec(self, name, path, target=None):
        if name != "skl2onnx":
            return None
        sys.meta_path.remove(self)  # once, and not for the look-up below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            try:
                register_skl2onnx()
            except Exception as err:  # never break the user's import of skl2onnx
                warnings.warn(f"bpfast could not register its MLP classes with skl2onnx: "
                              f"{type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_and_register
        return spec


if "skl2onnx" in sys.modules:
    register_skl2onnx()
elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterOnImport())
