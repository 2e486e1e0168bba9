"""Saving and loading networks as portable ``.npz`` files, without pickle.

File layout (format version 1): a NumPy ``.npz`` archive holding

- ``metadata``: a 0-d unicode array with a JSON object
  ``{"format": "bpfast", "version": 1, "sizes": [...], "activations": [...],
  "dtype": "float64", "loss": "mse", "classes": null}`` (``classes``: the sorted class
  labels, integers or strings, of a network fitted on labels; absent in older files);
- ``W0 ... W{L-1}`` and ``b0 ... b{L-1}``: the weights and biases, in the file's dtype.

The file is written to a temporary file beside the target and renamed, so a crash never
leaves half a model. Loading uses ``allow_pickle=False``: no code from the file runs.
"""
import json
import os
import tempfile

import numpy as np

FORMAT = "bpfast"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file that is not a valid bpfast model."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write, binary=True, suffix=".tmp", **open_kwargs):
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    A crash or an exception never leaves half a file at ``path`` (an old file stays as it
    was), and no temporary file is left behind. The file gets the usual mode
    (``0o666 & ~umask``, where ``mkstemp`` alone would give 0600). ``open_kwargs`` go to
    ``open`` for text files (``newline``, ``encoding``).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bpfast-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **open_kwargs) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save(net, path):
    """Write ``net`` to ``path`` (conventionally ending in ``.npz``); returns ``path``."""
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sizes": list(net.sizes),
        "activations": list(net.activations),
        "dtype": net.dtype.name,
        "loss": getattr(net, "loss_function", "mse"),
        "classes": _classes_to_json(getattr(net, "classes_", None)),
    }
    arrays = {"metadata": np.array(json.dumps(meta))}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"] = W
        arrays[f"b{l}"] = b
    return atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz.tmp")


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
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{path}: not a bpfast model file (not an .npz archive)")
            if "metadata" not in data.files:
                raise ModelFileError(f"{path}: not a bpfast model file (no metadata)")
            meta = json.loads(str(data["metadata"]))
            arrays = {k: data[k] for k in data.files if k != "metadata"}
    except ModelFileError:
        raise
    except TypeError:
        # np.load of a plain .npy returns an array, which is no context manager
        raise ModelFileError(f"{path}: not a bpfast model file (not an .npz archive)") from None
    except Exception as err:  # any corruption numpy, zipfile or json may meet
        raise ModelFileError(
            f"{path}: not a readable bpfast model file ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a bpfast model file (format is not {FORMAT!r})")
    version = meta.get("version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version!r}; this bpfast reads 1 to {FORMAT_VERSION}"
        )
    sizes = meta.get("sizes")
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(type(n) is int and n >= 1 for n in sizes)):
        raise ModelFileError(f"{path}: metadata 'sizes' must be a list of positive integers")
    L = len(sizes) - 1
    expected = {f"W{l}" for l in range(L)} | {f"b{l}" for l in range(L)}
    if set(arrays) != expected:
        raise ModelFileError(
            f"{path}: expected arrays {sorted(expected)}, found {sorted(arrays)}"
        )
    for l in range(L):  # shapes first, so lying sizes cannot make us allocate
        for name, shape in ((f"W{l}", (sizes[l + 1], sizes[l])), (f"b{l}", (sizes[l + 1],))):
            a = arrays[name]
            if not isinstance(a, np.ndarray) or a.shape != shape:
                found = a.shape if isinstance(a, np.ndarray) else type(a).__name__
                raise ModelFileError(f"{path}: {name} should have shape {shape}, found {found}")
    try:
        net = Network(sizes, activations=list(meta["activations"]), dtype=meta["dtype"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: inconsistent metadata ({err})") from None
    for l in range(L):
        for name, target in ((f"W{l}", net.weights[l]), (f"b{l}", net.biases[l])):
            a = arrays[name]
            if a.dtype != target.dtype:
                raise ModelFileError(
                    f"{path}: {name} should be {target.dtype}, found {a.dtype}"
                )
            if not np.isfinite(a).all():
                raise ModelFileError(f"{path}: {name} holds NaN or infinite values")
            target[...] = a
    loss = meta.get("loss", "mse")
    if loss not in ("mse", "cross_entropy", "binary_cross_entropy", "poisson"):
        raise ModelFileError(f"{path}: unknown loss {loss!r}")
    net.loss_function = loss
    net.classes_ = _classes_from_json(meta.get("classes"), sizes[-1], path)
    return net


def _classes_to_json(classes):
    return None if classes is None else np.asarray(classes).tolist()


def _classes_from_json(classes, n_outputs, path):
    """The ``classes`` metadata as an array, checked: None, or sorted unique labels of
    one kind (integers, strings, booleans or whole floats), as many as the output layer takes."""
    if classes is None:
        return None
    expected = 2 if n_outputs == 1 else n_outputs
    if (not isinstance(classes, list) or len(classes) != expected
            or not any(all(type(c) is kind for c in classes) for kind in (int, str, bool, float))
            or not all(c == c for c in classes)  # NaN
            or classes != sorted(set(classes))):
        raise ModelFileError(
            f"{path}: metadata 'classes' must be {expected} sorted, distinct labels of one "
            f"kind (integers or strings), for {n_outputs} output unit(s); found {classes!r}"
        )
    return np.array(classes)
