"""Saving and loading networks: Network.save / bpfast.load.

Round trips are bit-exact; every kind of bad file raises bpfast.ModelFileError (a
ValueError) with a message, never unpickles anything, and saving is atomic.
Helpers live in this file on purpose (tests/conftest.py belongs to another suite).
"""
import io
import json
import os
import pathlib
import stat
import struct
import zipfile

import numpy as np
import pytest

import bpfast
from bpfast.io import ModelFileError

DTYPES = (np.float64, np.float32)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def trained_net(sizes, activations, dtype, loss, seed=0):
    """A network with non-trivial parameters whose loss_function was set by fit."""
    net = bpfast.Network(sizes, activations=activations, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((12, sizes[0]))
    if loss == "cross_entropy":
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], 12)]
    elif loss == "binary_cross_entropy":
        Y = rng.integers(0, 2, (12, sizes[-1])).astype(float)
    else:
        Y = rng.uniform(0, 1, (12, sizes[-1]))
    net.fit(X, Y, epochs=2, batch_size=5, learning_rate=0.05, loss=loss, seed=0)
    assert net.loss_function == loss
    return net


def assert_same_network(a, b):
    assert type(b) is bpfast.Network
    assert b.sizes == a.sizes
    assert b.activations == a.activations
    assert b.dtype == a.dtype
    assert b.loss_function == a.loss_function
    assert len(b.weights) == len(a.weights) and len(b.biases) == len(a.biases)
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        assert y.dtype == x.dtype and y.shape == x.shape
        assert np.array_equal(x, y)
        assert x.tobytes() == y.tobytes()
        assert y.flags.c_contiguous and y.flags.writeable


def no_temp_files(directory):
    return [p.name for p in pathlib.Path(directory).iterdir() if p.name.startswith(".bpfast-")]


META = {"format": "bpfast", "version": 1, "sizes": [3, 4, 2],
        "activations": ["tanh", "softmax"], "dtype": "float64", "loss": "cross_entropy"}


def good_arrays(dtype=np.float64):
    rng = np.random.default_rng(0)
    return {
        "W0": rng.standard_normal((4, 3)).astype(dtype),
        "b0": rng.standard_normal(4).astype(dtype),
        "W1": rng.standard_normal((2, 4)).astype(dtype),
        "b1": rng.standard_normal(2).astype(dtype),
    }


def write_npz(path, meta=META, arrays=None, raw_meta=None, **changes):
    """An npz like save() writes, with ``changes`` to the arrays (None deletes one)."""
    arrays = dict(good_arrays() if arrays is None else arrays)
    for k, v in changes.items():
        if v is None:
            arrays.pop(k, None)
        else:
            arrays[k] = v
    if raw_meta is not None:
        arrays["metadata"] = raw_meta
    elif meta is not None:
        arrays["metadata"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


def expect_model_error(path, *words):
    with pytest.raises(ModelFileError) as info:
        bpfast.load(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert len(msg) > 10, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------

ARCHS = [
    ((3, 4, 2), "tanh", "mse"),
    ((5, 7, 6, 3), ["relu", "silu", "softmax"], "cross_entropy"),
    ((4, 3, 3), ["leaky_relu", "softmax"], "mse"),
    ((2, 1), "sigmoid", "binary_cross_entropy"),
    ((6, 5, 4, 3, 2), ["softplus", "identity", "tanh", "sigmoid"], "mse"),
    ((3, 3), ["softmax"], "cross_entropy"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("sizes,acts,loss", ARCHS)
def test_round_trip_bit_exact(tmp_path, sizes, acts, loss, dtype):
    net = trained_net(sizes, acts, dtype, loss)
    path = tmp_path / "model.npz"
    assert net.save(path) == os.fspath(path)
    assert path.is_file()
    got = bpfast.load(path)
    assert_same_network(net, got)
    X = np.random.default_rng(1).standard_normal((5, sizes[0]))
    assert net.forward(X).tobytes() == got.forward(X).tobytes()
    # a loaded network is independent of the original and can be saved again, identically
    got.weights[0][...] = 0
    assert not np.array_equal(net.weights[0], got.weights[0])
    got2 = bpfast.load(bpfast.load(path).save(tmp_path / "again.npz"))
    assert_same_network(net, got2)
    assert no_temp_files(tmp_path) == []


def test_round_trip_str_path_and_other_suffix(tmp_path):
    net = trained_net((3, 4, 2), ["relu", "sigmoid"], np.float32, "binary_cross_entropy")
    for name in ("m.npz", "model.bin", "no_suffix"):
        path = str(tmp_path / name)
        assert net.save(path) == path
        assert os.path.exists(path)  # np.savez must not append ".npz"
        assert_same_network(net, bpfast.load(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "model.bin", "no_suffix"]


def test_round_trip_untrained_default_loss(tmp_path):
    net = bpfast.Network([4, 3], activations="identity", seed=3)
    assert net.loss_function == "mse"
    got = bpfast.load(net.save(tmp_path / "m.npz"))
    assert_same_network(net, got)


def test_round_trip_special_values(tmp_path):
    """Subnormals, signed zeros and extreme finite values survive bit for bit."""
    for dtype in DTYPES:
        net = bpfast.Network([3, 2], activations="identity", dtype=dtype, seed=0)
        info = np.finfo(dtype)
        net.weights[0][...] = [[-0.0, info.tiny / 4, info.max], [-info.max, info.eps, 1 / 3]]
        net.biases[0][...] = [0.0, -info.tiny]
        got = bpfast.load(net.save(tmp_path / "s.npz"))
        assert_same_network(net, got)
        assert np.signbit(got.weights[0][0, 0])


def test_file_is_a_plain_npz_readable_without_pickle(tmp_path):
    net = trained_net((3, 4, 2), ["tanh", "softmax"], np.float32, "cross_entropy")
    path = net.save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["W0", "W1", "b0", "b1", "metadata"]
        meta = json.loads(str(data["metadata"]))
        assert data["W1"].dtype == np.float32
    assert meta["format"] == "bpfast" and meta["version"] == 1
    assert meta["sizes"] == [3, 4, 2]
    assert meta["activations"] == ["tanh", "softmax"]
    assert meta["dtype"] == "float32" and meta["loss"] == "cross_entropy"


def test_loading_a_hand_written_file(tmp_path):
    path = write_npz(tmp_path / "hand.npz")
    net = bpfast.load(path)
    assert net.sizes == (3, 4, 2) and net.activations == ("tanh", "softmax")
    assert net.loss_function == "cross_entropy"
    for k, a in good_arrays().items():
        target = (net.weights if k[0] == "W" else net.biases)[int(k[1])]
        assert target.tobytes() == a.tobytes()


def test_missing_loss_defaults_to_mse(tmp_path):
    meta = {k: v for k, v in META.items() if k != "loss"}
    assert bpfast.load(write_npz(tmp_path / "m.npz", meta)).loss_function == "mse"


# --------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        bpfast.load(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        bpfast.load(str(tmp_path / "dir" / "nope.npz"))


def test_directory_is_not_a_model(tmp_path):
    expect_model_error(tmp_path)


def test_truncated_files_every_length(tmp_path):
    net = trained_net((3, 4, 2), ["tanh", "softmax"], np.float64, "cross_entropy")
    data = (pathlib.Path(net.save(tmp_path / "m.npz"))).read_bytes()
    bad = tmp_path / "t.npz"
    wrong = {}
    for n in range(len(data)):
        bad.write_bytes(data[:n])
        try:
            bpfast.load(bad)
        except ModelFileError as err:
            assert str(err)
        except Exception as err:  # noqa: BLE001
            wrong.setdefault(type(err).__name__, n)
        else:
            wrong.setdefault("loaded", n)
    assert wrong == {}, f"lengths (first of each kind) not giving ModelFileError: {wrong}"


@pytest.mark.parametrize("prefix", [b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY",
                                    b"\x93NUMPY\x01\x00", b"\x80\x04", b"{}"])
def test_random_bytes(tmp_path, prefix):
    rng = np.random.default_rng(len(prefix))
    path = tmp_path / "r.npz"
    for size in (0, 1, 7, 64, 1000, 5000):
        path.write_bytes(prefix + rng.bytes(size))
        expect_model_error(path)


def test_plain_npz_without_metadata(tmp_path):
    path = write_npz(tmp_path / "m.npz", meta=None)
    expect_model_error(path, "metadata")
    np.savez(tmp_path / "e.npz")
    expect_model_error(tmp_path / "e.npz", "metadata")


def test_plain_npy_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    expect_model_error(tmp_path / "a.npy")


@pytest.mark.parametrize("meta,word", [
    (dict(META, format="keras"), "format"),
    ({k: v for k, v in META.items() if k != "format"}, "format"),
    (dict(META, format="BPFAST"), "format"),
    (dict(META, version=2), "version"),
    (dict(META, version=0), "version"),
    (dict(META, version="1"), "version"),
    (dict(META, version=None), "version"),
    ({k: v for k, v in META.items() if k != "version"}, "version"),
    (dict(META, version=True), "version"),  # a JSON boolean is not a version number
    ([META], "format"),
    ("bpfast", "format"),
    (dict(META, activations=["tanh", "gelu"]), "gelu"),
    (dict(META, activations=["softmax", "tanh"]), "softmax"),
    (dict(META, activations=["tanh"]), "activations"),
    ({k: v for k, v in META.items() if k != "activations"}, "activations"),
    (dict(META, activations=[1, 2]), "activations"),
    (dict(META, sizes=[3, 0, 2]), "sizes"),
    (dict(META, sizes=None), "metadata"),
    ({k: v for k, v in META.items() if k != "sizes"}, "sizes"),
    (dict(META, dtype="float16"), "dtype"),
    (dict(META, dtype="int64"), "dtype"),
    (dict(META, dtype="object"), "dtype"),
    ({k: v for k, v in META.items() if k != "dtype"}, "dtype"),
    (dict(META, loss="hinge"), "loss"),
    (dict(META, loss=["mse"]), "loss"),
], ids=[
    "format-keras",
    "format-missing",
    "format-uppercase",
    "version-2",
    "version-0",
    "version-str",
    "version-null",
    "version-missing",
    "version-true",
    "meta-list",
    "meta-str",
    "activation-unknown",
    "activation-softmax-hidden",
    "activations-too-few",
    "activations-missing",
    "activations-ints",
    "sizes-zero",
    "sizes-null",
    "sizes-missing",
    "dtype-float16",
    "dtype-int64",
    "dtype-object",
    "dtype-missing",
    "loss-unknown",
    "loss-list",
])
def test_bad_metadata(tmp_path, meta, word):
    path = write_npz(tmp_path / "m.npz", meta)
    expect_model_error(path, word)


@pytest.mark.parametrize("raw", [
    np.array("not json {"),
    np.array(""),
    np.array(b'{"format": "bpfast"}'),
    np.array(3.5),
    np.array([json.dumps(META)]),
    np.zeros((2, 2)),
])
def test_metadata_not_a_json_object_string(tmp_path, raw):
    expect_model_error(write_npz(tmp_path / "m.npz", raw_meta=raw))


def test_deeply_nested_metadata(tmp_path):
    """A JSON value nested 100000 deep must give ModelFileError, not RecursionError."""
    raw = np.array("[" * 100000 + "]" * 100000)
    expect_model_error(write_npz(tmp_path / "m.npz", raw_meta=raw))


@pytest.mark.parametrize("changes,word", [
    ({"W0": np.zeros((3, 4))}, "W0"),                 # transposed
    ({"W1": np.zeros((2, 5))}, "W1"),
    ({"b0": np.zeros(5)}, "b0"),
    ({"b1": np.zeros((2, 1))}, "b1"),
    ({"b1": np.float64(0.5)}, "b1"),                  # 0-d
    ({"W0": np.zeros((4, 3), np.float32)}, "W0"),     # wrong dtype
    ({"b1": np.zeros(2, np.int64)}, "b1"),
    ({"W1": np.zeros((2, 4), np.complex128)}, "W1"),
    ({"b0": np.zeros(4, np.float16)}, "b0"),
    ({"W0": np.full((4, 3), np.nan)}, "W0"),
    ({"b1": np.array([0.0, np.inf])}, "b1"),
    ({"W1": np.array([[0, 0, 0, -np.inf], [0, 0, 0, 0]], float)}, "W1"),
    ({"W1": None}, "W1"),                            # missing
    ({"b0": None}, "b0"),
    ({"W2": np.zeros((2, 2))}, "W2"),                 # extra
    ({"junk": np.zeros(1)}, "junk"),
])
def test_bad_arrays(tmp_path, changes, word):
    path = write_npz(tmp_path / "m.npz", **changes)
    expect_model_error(path, word)


def test_arrays_disagree_with_sizes(tmp_path):
    path = write_npz(tmp_path / "m.npz", dict(META, sizes=[3, 5, 2]))
    expect_model_error(path, "W0")


def test_float32_file_with_float64_arrays(tmp_path):
    path = write_npz(tmp_path / "m.npz", dict(META, dtype="float32"))
    expect_model_error(path, "float32")


class _Marker:
    """Unpickling this creates a file: proof that code from the file ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("where", ["W0", "metadata", "extra"])
def test_pickled_object_arrays_are_never_unpickled(tmp_path, where):
    marker = tmp_path / "PWNED"
    evil = np.empty(1, dtype=object)
    evil[0] = _Marker(str(marker))
    path = tmp_path / "evil.npz"
    if where == "metadata":
        write_npz(path, raw_meta=evil)
    elif where == "extra":
        write_npz(path, evil=evil)
    else:
        write_npz(path, W0=evil)
    # sanity: the file does hold a pickle that runs code when unpickled
    key = "metadata" if where == "metadata" else ("evil" if where == "extra" else "W0")
    with np.load(path, allow_pickle=True) as data:
        data[key]
    assert marker.exists()
    marker.unlink()
    expect_model_error(path)
    assert not marker.exists()


def test_object_metadata_dict(tmp_path):
    expect_model_error(write_npz(tmp_path / "m.npz", raw_meta=np.array(META, dtype=object)))


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_member_that_is_not_an_npy_array(tmp_path):
    """A zip whose W0 member is raw bytes (no .npy header): np.load hands back bytes."""
    path = tmp_path / "m.npz"
    arrays = good_arrays()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.npy", _npy_bytes(np.array(json.dumps(META))))
        z.writestr("W0", b"definitely not an array")
        for k in ("b0", "W1", "b1"):
            z.writestr(k + ".npy", _npy_bytes(arrays[k]))
    expect_model_error(path)


def test_metadata_member_that_is_not_an_npy_array(tmp_path):
    path = tmp_path / "m.npz"
    arrays = good_arrays()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata", json.dumps(META).encode())
        for k, a in arrays.items():
            z.writestr(k + ".npy", _npy_bytes(a))
    expect_model_error(path)


def _central_header(data):
    at = data.find(b"PK\x01\x02")
    assert at > 0
    return at


@pytest.mark.parametrize("field,offset,fmt,value", [
    ("general purpose flags: encrypted", 8, "<H", 1),
    ("compression method 99", 10, "<H", 99),
    ("version needed to extract 255", 6, "<H", 255),
], ids=["encrypted-flag", "compression-99", "version-needed-255"])
def test_corrupted_zip_header_fields(tmp_path, field, offset, fmt, value):
    """One field of the first central-directory entry corrupted: still a ModelFileError."""
    net = trained_net((3, 4, 2), ["tanh", "softmax"], np.float64, "cross_entropy")
    data = bytearray(pathlib.Path(net.save(tmp_path / "m.npz")).read_bytes())
    at = _central_header(data) + offset
    struct.pack_into(fmt, data, at, value)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    expect_model_error(bad)


def test_single_byte_corruption_anywhere(tmp_path):
    """Flipping any one byte gives ModelFileError or (zip metadata only) the same model:
    zip CRCs protect the contents, so a load must never return different parameters."""
    net = trained_net((3, 4, 2), ["tanh", "softmax"], np.float32, "cross_entropy")
    data = pathlib.Path(net.save(tmp_path / "m.npz")).read_bytes()
    bad = tmp_path / "bad.npz"
    wrong = {}
    for i in range(len(data)):
        for flip in (0x01, 0xFF):
            b = bytearray(data)
            b[i] ^= flip
            bad.write_bytes(bytes(b))
            try:
                got = bpfast.load(bad)
            except ModelFileError:
                continue
            except Exception as err:  # noqa: BLE001
                wrong.setdefault(type(err).__name__, (i, flip, str(err)[:80]))
                continue
            try:
                assert_same_network(net, got)
            except AssertionError:
                wrong.setdefault("different model", (i, flip))
    assert wrong == {}, f"(offset, xor) of the first corruption of each kind: {wrong}"


# --------------------------------------------------------------------------------------
# Atomic saving
# --------------------------------------------------------------------------------------

def test_save_over_existing_file_replaces_it(tmp_path):
    path = tmp_path / "m.npz"
    old = trained_net((3, 4, 2), "tanh", np.float64, "mse", seed=1)
    new = trained_net((5, 3), "softmax", np.float32, "cross_entropy", seed=2)
    old.save(path)
    old_bytes = path.read_bytes()
    with open(path, "rb") as handle:  # a reader that opened the old file ...
        new.save(path)
        # ... still sees the complete old file: the new one was renamed over it
        assert handle.read() == old_bytes
    assert_same_network(new, bpfast.load(path))
    assert path.read_bytes() != old_bytes
    assert no_temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_save_repeatedly_to_the_same_path(tmp_path):
    path = tmp_path / "m.npz"
    for seed in range(5):
        net = trained_net((3, 4, 2), "tanh", np.float64, "mse", seed=seed)
        net.save(path)
        assert_same_network(net, bpfast.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, exc):
    path = tmp_path / "m.npz"
    old = trained_net((3, 4, 2), "tanh", np.float64, "mse", seed=1)
    old.save(path)
    old_bytes = path.read_bytes()
    new = trained_net((3, 4, 2), "tanh", np.float64, "mse", seed=2)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a model")
        raise exc

    monkeypatch.setattr(bpfast.io.np, "savez", broken_savez)
    with pytest.raises(type(exc)):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert_same_network(old, bpfast.load(path))
    assert no_temp_files(tmp_path) == []


def test_failed_first_save_creates_nothing(tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        raise OSError("disk full")

    monkeypatch.setattr(bpfast.io.np, "savez", broken_savez)
    with pytest.raises(OSError):
        bpfast.Network([2, 2]).save(tmp_path / "m.npz")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_save_into_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        bpfast.Network([2, 2]).save(tmp_path / "nope" / "m.npz")
    assert list(tmp_path.iterdir()) == []


def test_saved_file_permissions_follow_umask(tmp_path):
    """The model file gets the permissions of an ordinary new file (0666 & ~umask), not
    the 0600 of the temporary file it was written to."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    expected = stat.S_IMODE(plain.stat().st_mode)
    path = bpfast.Network([2, 2]).save(tmp_path / "m.npz")
    assert oct(stat.S_IMODE(os.stat(path).st_mode)) == oct(expected)
