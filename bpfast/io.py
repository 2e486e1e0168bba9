"""Saving and loading networks as portable ``.npz`` files, without pickle.

File layout (format version 1): a NumPy ``.npz`` archive holding

- ``metadata``: a 0-d unicode array with a JSON object
  ``{"format": "bpfast", "version": 1, "sizes": [...], "activations": [...],
  "dtype": "float64", "loss": "mse", "classes": null}`` (``classes``: the sorted class
  labels, integers or strings, of a network fitted on labels; absent in older files);
- ``W0 ... W{L-1}`` and ``b0 ... b{L-1}``: the weights and biases, in the file's dtype.

:func:`save` refuses a network that :func:`load` would refuse, so it never replaces a
good file with an unloadable one. The file is written to a temporary file beside the
target, flushed to disk and renamed, so a crash never leaves half a model; temporary
files left by a killed process are removed by the next save into the same directory.
:func:`load` reads the zip directory and every array's header, and checks them against
the metadata and a size budget before it inflates any array or builds the network; it
never unpickles anything.
"""
import contextlib
import json
import math
import operator
import os
import re
import socket
import tempfile
import zipfile
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from numpy.lib import format as npy_format

from . import registry

if TYPE_CHECKING:
    from .network import Network

FORMAT = "bpfast"
FORMAT_VERSION = 1

#: Losses a model file may name.
LOSSES = tuple(registry.LOSSES)

#: Default budget of :func:`load`: the most bytes of weights and biases it will allocate.
MAX_MODEL_BYTES = 1 << 30

#: The largest ``metadata`` member :func:`load` reads (inflated size, in bytes).
MAX_METADATA_BYTES = 1 << 20

#: The largest ``.npy`` header :func:`load` parses.
_MAX_HEADER_BYTES = 10000

#: Bytes of an array :func:`load` inflates at a time.
_READ_CHUNK = 1 << 20


class ModelFileError(ValueError):
    """A model file that is not a valid bpfast model."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------
# Temporary files
# --------------------------------------------------------------------------------------

def _host_tag():
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def temp_prefix() -> str:
    """``.bpfast-PID.HOST-``, the prefix of our temporary files: their owner can be told
    from the name, so :func:`remove_stale_temp_files` can clean up after a killed save."""
    return f".bpfast-{os.getpid()}.{_host_tag()}-"


def _pid_is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory: str) -> None:
    """Remove temporary files that a killed bpfast process on this host left in ``directory``.

    Only files named by :func:`temp_prefix` whose process no longer runs are removed:
    another host's files (a shared file system) and live processes' files are kept.
    """
    if os.name != "posix":  # os.kill(pid, 0) would not be a harmless probe elsewhere
        return
    pattern = re.compile(r"\.bpfast-(\d+)\." + re.escape(_host_tag()) + r"-[^/]*\.tmp\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_is_alive(
                int(match.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass  # gone already, or not ours to remove: the save goes on


def fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories can't be
    opened or synced (Windows, some network file systems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def aimed_at_target(err: BaseException, path: str) -> BaseException:
    """``err`` re-aimed at ``path`` when it names one of our temporary files (users know
    the target, not the temporary name); any other exception unchanged."""
    if isinstance(err, OSError) and isinstance(err.filename, str) and os.path.basename(
            err.filename).startswith(".bpfast-"):
        detail = f"{err.strerror or err} (while writing it through a temporary file)"
        new = type(err)(err.errno, detail, path) if err.errno else OSError(detail)
        new.filename = path
        return new
    return err


def atomic_write(path: "str | os.PathLike[str]", write: Callable[[IO], object],
                 binary: bool = True, suffix: str = ".tmp", **open_kwargs: Any) -> str:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    A crash or an exception never leaves half a file at ``path`` (an old file stays as it
    was), and no temporary file is left behind; the data are flushed to disk before the
    rename, and the directory after it. The file gets the usual mode
    (``0o666 & ~umask``, where ``mkstemp`` alone would give 0600). ``open_kwargs`` go to
    ``open`` for text files (``newline``, ``encoding``). An ``OSError`` names ``path``,
    not the temporary file.
    """
    path = os.fspath(path)
    with temporary_beside(path, suffix) as tmp:
        with open(tmp, "wb" if binary else "w", **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def temporary_beside(path: "str | os.PathLike[str]", suffix: str = ".tmp") -> Iterator[str]:
    """The name of a new, empty temporary file beside ``path``, for the body to fill and
    rename onto ``path``.

    Leftovers of killed processes in that directory are removed first. When the body
    raises, the temporary file is removed and an ``OSError`` naming it is re-aimed at
    ``path``; when it returns, the directory is synced so that its rename is on disk.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temp_files(directory)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix, dir=directory)
        os.close(fd)
        yield tmp
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        new = aimed_at_target(err, path)
        if new is err:
            raise
        raise new from None
    fsync_directory(directory)


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------

def _describe_dtype(dt):
    if dt.isnative:
        return dt.name
    order = "big" if dt.byteorder == ">" else "little"
    return f"{dt.name} in {order}-endian byte order ({dt.str})"


def _check_parameter(a, name, dtype, shape):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a {dtype} ndarray of shape {shape}, got "
                        f"{type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the network's, in native byte "
                        f"order), got {_describe_dtype(a.dtype)}")
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (from sizes), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: holds NaN or infinite values; a model file must hold "
                         "finite parameters")


def _savable_metadata(net):
    """The metadata of ``net``, after checking that :func:`load` will accept its file.

    Raises ``TypeError`` or ``ValueError`` naming the offending attribute (e.g.
    ``weights[1]``), with what was expected and what came.
    """
    from ._validation import check_dtype
    from .activations import resolve_activations

    try:
        sizes = [operator.index(n) for n in net.sizes]
    except TypeError:
        raise TypeError(f"sizes: expected a sequence of positive integers, got "
                        f"{net.sizes!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes: expected at least two positive integers, got {net.sizes!r}")
    L = len(sizes) - 1
    activations = resolve_activations(net.activations, L)
    dtype = check_dtype(net.dtype, "dtype")
    for attr in ("weights", "biases"):
        if len(getattr(net, attr)) != L:
            raise ValueError(f"{attr}: expected {L} arrays (one per layer of sizes "
                             f"{tuple(sizes)}), got {len(getattr(net, attr))}")
    for l in range(L):
        _check_parameter(net.weights[l], f"weights[{l}]", dtype, (sizes[l + 1], sizes[l]))
        _check_parameter(net.biases[l], f"biases[{l}]", dtype, (sizes[l + 1],))
    loss = getattr(net, "loss_function", "mse")
    if loss not in LOSSES:
        raise ValueError(f"loss_function: expected one of {', '.join(LOSSES)}, got {loss!r}")
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sizes": sizes,
        "activations": list(activations),
        "dtype": dtype.name,
        "loss": loss,
        "classes": _savable_classes(net, sizes[-1]),
    }


def save(net: "Network", path: "str | os.PathLike[str]") -> str:
    """Write ``net`` to ``path`` (conventionally ending in ``.npz``); returns ``path``.

    Parameters
    ----------
    net : Network
        The network to write.
    path : str or os.PathLike
        The target file; an existing file is replaced atomically.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    TypeError, ValueError
        When :func:`load` would refuse the file: a parameter of another dtype or byte
        order than ``net.dtype``, of the wrong shape, or holding NaN or infinity, more or
        fewer arrays than layers, an unknown activation or loss. The message names the
        parameter (e.g. ``weights[1]``); nothing is written and a file at ``path`` stays
        as it was.
    """
    meta = _savable_metadata(net)
    arrays: dict[str, Any] = {"metadata": np.array(json.dumps(meta))}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"] = W
        arrays[f"b{l}"] = b
    return atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz.tmp")


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _members(zf, path):
    """Map each array name (``"W0"``, as ``np.load`` names them) to its zip entry."""
    members = {}
    for info in zf.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name in members:
            raise ModelFileError(f"{path}: the archive holds array {name!r} twice")
        members[name] = info
    if "metadata" not in members:
        raise ModelFileError(f"{path}: not a bpfast model file (no metadata)")
    return members


def _read_header(f, name, path):
    """``(shape, fortran_order, dtype, header_bytes)`` of the ``.npy`` stream ``f``."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(
            f, max_header_size=_MAX_HEADER_BYTES)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(
            f, max_header_size=_MAX_HEADER_BYTES)
    else:
        raise ModelFileError(f"{path}: {name} is a .npy array of unsupported version {version}")
    return shape, fortran, dtype, f.tell()


def _open_array(zf, info, name, path, shape, dtype):
    """Open member ``info`` after checking its header declares ``shape`` and ``dtype`` and
    its declared size matches; returns the stream positioned at the data and the order."""
    f = zf.open(info)
    try:
        found_shape, fortran, found_dtype, header = _read_header(f, name, path)
        if found_shape != shape:
            raise ModelFileError(f"{path}: {name} should have shape {shape}, found {found_shape}")
        if found_dtype != dtype:
            raise ModelFileError(f"{path}: {name} should be {dtype}, found {found_dtype}")
        if info.file_size != header + math.prod(shape) * dtype.itemsize:
            raise ModelFileError(
                f"{path}: {name} declares {info.file_size} bytes, its header says "
                f"{header + math.prod(shape) * dtype.itemsize}")
    except BaseException:
        f.close()
        raise
    return f, fortran


def _read_into(f, target, fortran, name, path):
    """Fill ``target`` from the data of ``f`` (zip CRC checked), in place; a Fortran-ordered
    array goes through one transposed buffer."""
    buf = np.empty(target.shape[::-1], target.dtype).T if fortran else target
    view = memoryview(buf.T if fortran else buf).cast("B")
    got = 0
    while got < len(view):
        # zipfile's readinto reads a whole request into a new bytes object first
        n = f.readinto(view[got:got + _READ_CHUNK])
        if not n:
            raise ModelFileError(f"{path}: {name} is truncated")
        got += n
    if f.read(1):  # also makes zipfile check the CRC of the whole member
        raise ModelFileError(f"{path}: {name} holds more data than its shape")
    if fortran:
        target[...] = buf


def _read_metadata(zf, info, path):
    if info.file_size > MAX_METADATA_BYTES:
        raise ModelFileError(f"{path}: metadata of {info.file_size} bytes; a bpfast model's "
                             f"is at most {MAX_METADATA_BYTES}")
    with zf.open(info) as f:
        shape, _, dtype, _ = _read_header(f, "metadata", path)
        if shape != () or dtype.kind != "U":
            raise ModelFileError(f"{path}: metadata should be a text (unicode) scalar, found "
                                 f"{dtype} of shape {shape}")
        data = f.read(dtype.itemsize + 1)
    if len(data) != dtype.itemsize:
        raise ModelFileError(f"{path}: metadata is truncated or too long")
    text = str(np.frombuffer(data, dtype=dtype)[0])
    return json.loads(text)


def _check_metadata(meta, path):
    """``(sizes, activations, dtype, loss)`` from the metadata, or ModelFileError."""
    from ._validation import check_dtype
    from .activations import resolve_activations

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
    try:
        activations = resolve_activations(meta["activations"], len(sizes) - 1)
        dtype = check_dtype(meta["dtype"])
    except KeyError as err:
        raise ModelFileError(f"{path}: inconsistent metadata (no {err})") from None
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: inconsistent metadata ({err})") from None
    loss = meta.get("loss", "mse")
    if loss not in LOSSES:
        raise ModelFileError(f"{path}: unknown loss {loss!r}")
    return sizes, activations, dtype, loss


def _layer_arrays(sizes):
    """``(name, shape, layer, kind)`` of every array a network of ``sizes`` holds."""
    for l in range(len(sizes) - 1):
        yield f"W{l}", (sizes[l + 1], sizes[l]), l, "weights"
        yield f"b{l}", (sizes[l + 1],), l, "biases"


def _load(zf, path, max_bytes):
    from .network import Network

    members = _members(zf, path)
    meta = _read_metadata(zf, members["metadata"], path)
    sizes, activations, dtype, loss = _check_metadata(meta, path)
    classes = _classes_from_json(meta.get("classes"), sizes[-1], path)
    layout = list(_layer_arrays(sizes))
    expected = {name for name, *_ in layout}
    found = set(members) - {"metadata"}
    if found != expected:
        raise ModelFileError(f"{path}: expected arrays {sorted(expected)}, found {sorted(found)}")
    nbytes = sum(math.prod(shape) for _, shape, *_ in layout) * dtype.itemsize
    if nbytes > max_bytes:
        raise ModelFileError(
            f"{path}: a {'-'.join(map(str, sizes))} network of {dtype} needs {nbytes:,} bytes, "
            f"more than the budget of {max_bytes:,} (pass a larger max_bytes to load a "
            "model this large)")
    for name, shape, *_ in layout:  # every header first: nothing allocated for a bad file
        _open_array(zf, members[name], name, path, shape, dtype)[0].close()
    net = Network(sizes, activations=list(activations), dtype=dtype)
    for name, shape, l, kind in layout:
        target = getattr(net, kind)[l]
        f, fortran = _open_array(zf, members[name], name, path, shape, dtype)
        with f:
            _read_into(f, target, fortran, name, path)
        if not np.isfinite(target).all():
            raise ModelFileError(f"{path}: {name} holds NaN or infinite values")
    net.loss_function = loss
    net.classes_ = classes
    return net


def load(path: "str | os.PathLike[str]", *, max_bytes: int = MAX_MODEL_BYTES) -> "Network":
    """Read a network written by :func:`save` (or ``Network.save``).

    Nothing is inflated or allocated before the zip directory, the metadata and every
    array's header have been checked against each other and against ``max_bytes``: a
    small crafted file cannot make ``load`` use much memory.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.
    max_bytes : int, default MAX_MODEL_BYTES (1 GiB)
        The most bytes of weights and biases to allocate; a larger model is refused.

    Returns
    -------
    Network

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ModelFileError
        (a ``ValueError``) when the file is truncated, corrupted, not a bpfast model, of a
        newer format version, inconsistent (array names, shapes, dtype, activations), or
        larger than ``max_bytes``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            return _load(zf, path, max_bytes)
    except ModelFileError:
        raise
    except Exception as err:  # any corruption zipfile, numpy's header parser or json may meet
        raise ModelFileError(
            f"{path}: not a readable bpfast model file ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]})"
        ) from None


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
            f"kind (integers or strings), for {n_outputs} output unit(s); found {repr(classes)[:200]}"
        )
    return np.array(classes)


def _savable_classes(net, n_outputs):
    """``net.classes_`` as JSON, after checking that :func:`load` will accept it."""
    classes = _classes_to_json(getattr(net, "classes_", None))
    try:
        _classes_from_json(classes, n_outputs, "classes_")
    except ModelFileError as err:
        raise ValueError(str(err)) from None
    return classes
