"""Targets for ``Network.fit``: class labels to one-hot rows, 1-D targets to a column,
and class weights to sample weights.

A 2-D float ``Y`` is always taken as given (the network's outputs' targets); only 1-D
targets are interpreted: as class labels under a classification loss, as one output
column otherwise.
"""
import numbers

import numpy as np

from .registry import CLASSIFICATION_LOSSES


def is_label_vector(Y, loss):
    """Whether ``Y`` is to be read as class labels (1-D under a classification loss)."""
    return loss in CLASSIFICATION_LOSSES and np.ndim(Y) == 1


def _label_array(y, name):
    """``y`` as a 1-D array of integer, boolean or string labels."""
    a = np.asarray(y)
    if a.dtype.kind == "O" and all(isinstance(v, str) for v in a):  # e.g. pandas strings
        a = a.astype(str)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not (a == np.round(a)).all():
            raise ValueError(
                f"{name}: expected class labels (integers or strings), got floats that are "
                "not whole numbers; give 2-D targets for soft labels"
            )
    elif a.dtype.kind not in "biuUS":
        raise TypeError(f"{name}: expected class labels (integers or strings), got dtype {a.dtype}")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one label, got none")
    return a


def fit_classes(y, n_outputs, loss, name="y"):
    """The sorted unique labels of ``y``, checked against the output layer's width.

    A 1-unit output (binary cross-entropy) takes exactly two classes; ``k > 1`` units
    take exactly ``k`` classes, one per unit.
    """
    y = _label_array(y, name)
    classes = np.unique(y)
    expected = 2 if n_outputs == 1 else n_outputs
    if n_outputs == 1 and loss == "cross_entropy":
        raise ValueError(
            f"{name}: cross_entropy on a 1-unit softmax output always predicts 1; build the "
            "network with one output unit per class"
        )
    if classes.size != expected:
        shown = ", ".join(repr(c) for c in classes[:10].tolist())
        more = ", ..." if classes.size > 10 else ""
        raise ValueError(
            f"{name}: found {classes.size} classes [{shown}{more}] but the network has "
            f"{n_outputs} output unit{'s' if n_outputs != 1 else ''} (sizes[-1]), which "
            f"takes {expected} classes"
        )
    return classes


def class_indices(y, classes, name="y"):
    """The index in ``classes`` of each label of ``y``; unknown labels are an error."""
    y = _label_array(y, name)
    if y.dtype.kind in "US" and classes.dtype.kind not in "US" or (
            classes.dtype.kind in "US" and y.dtype.kind not in "US"):
        raise ValueError(
            f"{name}: labels of dtype {y.dtype} do not match the classes {classes.tolist()}"
        )
    idx = np.searchsorted(classes, y)
    idx[idx == classes.size] = 0
    unknown = classes[idx] != y
    if unknown.any():
        raise ValueError(
            f"{name}: label {y[unknown][0].item()!r} is not one of the classes {classes.tolist()}"
        )
    return idx


def encode(idx, n_outputs, dtype):
    """Targets for class indices: a 0/1 column for one unit, one-hot rows otherwise."""
    if n_outputs == 1:
        return idx.astype(dtype).reshape(-1, 1)
    Y = np.zeros((idx.size, n_outputs), dtype=dtype)
    Y[np.arange(idx.size), idx] = 1
    return Y


def as_column(Y, n_outputs, name):
    """1-D targets for a 1-output network as an ``(m, 1)`` column; others unchanged."""
    if np.ndim(Y) == 1 and n_outputs == 1:
        return np.asarray(Y).reshape(-1, 1)
    if np.ndim(Y) == 1:
        raise ValueError(
            f"{name}: got 1-D targets of shape {np.shape(Y)} but the network has {n_outputs} "
            f"outputs (sizes[-1]); give targets of shape (m, {n_outputs}), or class labels "
            "with loss='cross_entropy' or 'binary_cross_entropy'"
        )
    return Y


def class_weight_factors(class_weight, idx, classes):
    """Per-row factors for ``class_weight`` (a dict label -> weight, or "balanced").

    "balanced" is scikit-learn's ``n_samples / (n_classes * bincount(y))`` over the rows
    given; a dict's missing classes weigh 1.
    """
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(
                f"class_weight: expected a dict or 'balanced', got {class_weight!r}"
            )
        counts = np.bincount(idx, minlength=classes.size)
        if (counts == 0).any():
            missing = classes[counts == 0].tolist()
            raise ValueError(
                f"class_weight: 'balanced' needs every class among the training rows; "
                f"missing {missing}"
            )
        per_class = idx.size / (classes.size * counts)
        return per_class[idx]
    if not isinstance(class_weight, dict):
        raise TypeError(
            f"class_weight: expected a dict or 'balanced', got {type(class_weight).__name__}"
        )
    per_class = np.ones(classes.size)
    known = {c: i for i, c in enumerate(classes.tolist())}
    for label, weight in class_weight.items():
        key = label.item() if isinstance(label, np.generic) else label
        if key not in known:
            raise ValueError(
                f"class_weight: class {label!r} is not one of the classes {classes.tolist()}"
            )
        if (isinstance(weight, (bool, np.bool_)) or not isinstance(weight, numbers.Real)
                or not np.isfinite(weight) or weight < 0):
            raise ValueError(
                f"class_weight: expected a finite non-negative weight for class {label!r}, "
                f"got {weight!r}"
            )
        per_class[known[key]] = float(weight)
    return per_class[idx]
