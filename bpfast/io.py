"""Saving and loading networks as portable ``.npz`` files, without pickle.

File layout (format version 1): a NumPy ``.npz`` archive holding

- ``metadata``: a 0-d unicode array with a JSON object
  ``{"format": "bpfast", "version": 1, "sizes": [...], "activations": [...],
  "dtype": "float64", "loss": "mse"}``;
- ``W0 ... W{L-1}`` and ``b0 ... b{L-1}``: the weights and biases, in the file's dtype.

The file is written to a temporary file beside the target and renamed, so a crash never
leaves half a model. Loading uses ``allow_pickle=False``: no code from the file runs.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "bpfast"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that is not a valid bpfast model."""


def save(net, path):
    """Write ``net`` to ``path`` (conventionally ending in ``.npz``); returns ``path``."""
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sizes": list(net.sizes),
        "activations": list(net.activations),
        "dtype": net.dtype.name,
        "loss": getattr(net, "loss_function", "mse"),
    }
    arrays = {"metadata": np.array(json.dumps(meta))}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"] = W
        arrays[f"b{l}"] = b
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bpfast-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path):
    """Read a network written by :func:`save` (or ``Network.save``).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ModelFileError
        (a ``ValueError``) when the file is truncated, corrupted, not a bpfast model, of a
        newer format version, or inconsistent (shapes, dtype, activations).
    """
    from .network import Network

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "metadata" not in data.files:
                raise ModelFileError(f"{path}: not a bpfast model file (no metadata)")
            meta = json.loads(str(data["metadata"]))
            arrays = {k: data[k] for k in data.files if k != "metadata"}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as err:
        raise ModelFileError(f"{path}: not a readable bpfast model file ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a bpfast model file (format is not {FORMAT!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ModelFileError(
            f"{path}: model format version {version!r}; this bpfast reads up to {FORMAT_VERSION}"
        )
    try:
        sizes = [int(n) for n in meta["sizes"]]
        net = Network(sizes, activations=list(meta["activations"]), dtype=meta["dtype"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: inconsistent metadata ({err})") from None
    L = len(sizes) - 1
    expected = {f"W{l}" for l in range(L)} | {f"b{l}" for l in range(L)}
    if set(arrays) != expected:
        raise ModelFileError(
            f"{path}: expected arrays {sorted(expected)}, found {sorted(arrays)}"
        )
    for l in range(L):
        for name, target in ((f"W{l}", net.weights[l]), (f"b{l}", net.biases[l])):
            a = arrays[name]
            if a.shape != target.shape or a.dtype != target.dtype:
                raise ModelFileError(
                    f"{path}: {name} should be {target.dtype} of shape {target.shape}, "
                    f"found {a.dtype} of shape {a.shape}"
                )
            if not np.isfinite(a).all():
                raise ModelFileError(f"{path}: {name} holds NaN or infinite values")
            target[...] = a
    loss = meta.get("loss", "mse")
    if loss not in ("mse", "cross_entropy", "binary_cross_entropy"):
        raise ModelFileError(f"{path}: unknown loss {loss!r}")
    net.loss_function = loss
    return net
