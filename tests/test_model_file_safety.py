"""Model files that cannot hurt: save refuses what load would refuse, load checks a
crafted file before it allocates, temporary files are synced and never left behind.

Issue 16, items 2, 3, 9 and the model-file part of 12.
"""
import errno
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import bpfast
import bpfast.io as bio
from bpfast.io import ModelFileError

# the directory holding the bpfast under test (a source tree built in place, or
# site-packages): subprocesses import that one, from a working directory of their own
# so that a source tree without the compiled modules never comes first
ROOT = pathlib.Path(bpfast.__file__).resolve().parents[1]


def good_net(dtype=np.float64):
    net = bpfast.Network([3, 4, 2], activations=["tanh", "softmax"], dtype=dtype, seed=0)
    net.loss_function = "cross_entropy"
    return net


def temp_files(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir()
                  if p.name.startswith(".bpfast-"))


LINUX_PROC = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="reads file names from /proc/self/fd")


# --------------------------------------------------------------------------------------
# Item 2: save refuses a network that load would refuse
# --------------------------------------------------------------------------------------

def _set(attr, l, value):
    def change(net):
        getattr(net, attr)[l] = value(getattr(net, attr)[l])
    return change


def _append_layer(net):
    net.weights.append(np.zeros((2, 2)))
    net.biases.append(np.zeros(2))


def _drop_layer(net):
    net.weights.pop()
    net.biases.pop()


BAD_NETWORKS = {
    "float32-weights": (_set("weights", 1, lambda a: a.astype(np.float32)),
                        TypeError, ["weights[1]", "expected dtype float64", "got float32"]),
    "int64-bias": (_set("biases", 0, lambda a: a.astype(np.int64)),
                   TypeError, ["biases[0]", "expected dtype float64", "got int64"]),
    "big-endian-weights": (_set("weights", 0, lambda a: a.astype(">f8")),
                           TypeError, ["weights[0]", "big-endian byte order", ">f8"]),
    "nan-weights": (_set("weights", 0, lambda a: np.where(a > 0, np.nan, a)),
                    ValueError, ["weights[0]", "nan"]),
    "inf-bias": (_set("biases", 1, lambda a: a + np.inf),
                 ValueError, ["biases[1]", "infinite"]),
    "transposed-weights": (_set("weights", 0, lambda a: np.ascontiguousarray(a.T)),
                           ValueError, ["weights[0]", "(4, 3)", "(3, 4)"]),
    "list-weights": (_set("weights", 1, lambda a: a.tolist()),
                     TypeError, ["weights[1]", "list"]),
    "appended-layer": (_append_layer, ValueError, ["weights", "expected 2", "got 3"]),
    "dropped-layer": (_drop_layer, ValueError, ["weights", "expected 2", "got 1"]),
    "unknown-activation": (lambda net: setattr(net, "activations", ("tanh", "gelu")),
                           ValueError, ["activations[1]", "gelu"]),
    "unknown-loss": (lambda net: setattr(net, "loss_function", "hinge"),
                     ValueError, ["loss_function", "hinge"]),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(BAD_NETWORKS))
def test_save_refuses_what_load_would_refuse(tmp_path, case, dtype):
    change, exc, words = BAD_NETWORKS[case]
    path = tmp_path / "m.npz"
    good_net(dtype).save(path)
    before = path.read_bytes()
    net = good_net(dtype)
    change(net)
    if dtype == np.float32:  # the float32 network's expected dtype is float32
        words = [w.replace("float64", "float32") for w in words]
        if case == "float32-weights":
            net.weights[1] = net.weights[1].astype(np.float64)
            words = ["weights[1]", "expected dtype float32", "got float64"]
    with pytest.raises(exc) as info:
        net.save(path)
    for word in words:
        assert word.lower() in str(info.value).lower(), str(info.value)
    assert path.read_bytes() == before  # the good file stays byte for byte
    assert temp_files(tmp_path) == []
    with pytest.raises(exc):
        net.save(tmp_path / "new.npz")
    assert not (tmp_path / "new.npz").exists()


def test_save_accepts_what_load_accepts(tmp_path):
    """Aliases, Fortran-ordered and non-contiguous parameters are valid: they round-trip."""
    net = bpfast.Network([3, 4, 2], activations=["logistic", "linear"], seed=1)
    net.weights[0] = np.asfortranarray(net.weights[0])
    net.biases[0] = np.arange(8.0)[::2]
    got = bpfast.load(net.save(tmp_path / "m.npz"))
    assert got.activations == ("sigmoid", "identity")
    for a, b in zip(net.weights + net.biases, got.weights + got.biases):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------
# Item 3: load checks names, headers and a size budget before allocating
# --------------------------------------------------------------------------------------

def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _header(shape, descr):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _meta(sizes, dtype="float64"):
    return {"format": "bpfast", "version": 1, "sizes": list(sizes),
            "activations": ["sigmoid"] * (len(sizes) - 1), "dtype": dtype, "loss": "mse"}


def zero_itemsize_file(path, n):
    """A 1 KB file declaring an n x n layer whose dtype has zero-byte items."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.npy", _npy(np.array(json.dumps(_meta([n, n])))))
        z.writestr("W0.npy", _header((n, n), "|V0"))
        z.writestr("b0.npy", _header((n,), "|V0"))
    return path


def _stream_zeros(z, name, header, nbytes):
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with z.open(info, "w", force_zip64=True) as f:
        f.write(header)
        chunk = bytes(1 << 22)
        for start in range(0, nbytes, len(chunk)):
            f.write(chunk[:min(len(chunk), nbytes - start)])


def _small_model_members(z):
    z.writestr("W0.npy", _npy(np.zeros((1, 2))))
    z.writestr("b0.npy", _npy(np.zeros(1)))


def zip_bomb_file(path, nbytes):
    """A valid 2-1 model plus an extra member inflating to ``nbytes`` of zeros."""
    with zipfile.ZipFile(path, "w", compresslevel=1) as z:
        z.writestr("metadata.npy", _npy(np.array(json.dumps(_meta([2, 1])))))
        _small_model_members(z)
        _stream_zeros(z, "junk.npy", _header((nbytes // 8,), "<f8"), nbytes // 8 * 8)
    return path


def metadata_bomb_file(path, nchars):
    """Valid metadata padded with ``nchars`` spaces: 4 bytes each once inflated."""
    with zipfile.ZipFile(path, "w", compresslevel=1) as z:
        text = json.dumps(_meta([2, 1])).encode("utf-32-le")
        info = zipfile.ZipInfo("metadata.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            f.write(_header((), f"<U{nchars + len(text) // 4}"))
            f.write(text)
            pad = " ".encode("utf-32-le") * (1 << 20)
            for start in range(0, nchars, 1 << 20):
                f.write(pad[:4 * min(1 << 20, nchars - start)])
        _small_model_members(z)
    return path


LOAD_IN_LIMITED_MEMORY = textwrap.dedent("""
    import resource, sys
    limit = int(sys.argv[2]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import bpfast
    try:
        if sys.argv[3] == "default":
            bpfast.load(sys.argv[1])
        else:
            bpfast.load(sys.argv[1], max_bytes=int(sys.argv[3]))
    except bpfast.ModelFileError as err:
        print("ModelFileError:", err)
    except BaseException as err:
        print("OTHER", type(err).__name__, err)
    else:
        print("LOADED")
""")


def load_with_memory_limit(path, limit_mb=300, max_bytes="default"):
    """``load`` in a subprocess whose address space is capped at ``limit_mb``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", LOAD_IN_LIMITED_MEMORY, str(path),
                          str(limit_mb), str(max_bytes)],
                         capture_output=True, text=True, env=env, timeout=120,
                         cwd=pathlib.Path(path).parent)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_zero_itemsize_arrays_refused_by_budget_without_allocating(tmp_path):
    path = zero_itemsize_file(tmp_path / "m.npz", 20000)
    assert path.stat().st_size < 2000
    msg = load_with_memory_limit(path)
    assert msg.startswith("ModelFileError:"), msg
    assert "20000-20000" in msg and "3,200,160,000 bytes" in msg and "budget" in msg


@pytest.mark.parametrize("n", [8000, 200000])
def test_zero_itemsize_arrays_refused_by_header_without_allocating(tmp_path, n):
    """Within the budget, the header's dtype is refused before the network is built
    (the old reader built a 512 MB network first; at 200000 a raw MemoryError escaped)."""
    path = zero_itemsize_file(tmp_path / "m.npz", n)
    msg = load_with_memory_limit(path, max_bytes=1 << 50)
    assert msg.startswith("ModelFileError:"), msg
    assert "W0 should be float64, found |V0" in msg


def test_zip_bomb_member_refused_by_name_before_inflating(tmp_path):
    path = zip_bomb_file(tmp_path / "m.npz", 512 << 20)
    assert path.stat().st_size < 1 << 20
    msg = load_with_memory_limit(path)
    assert msg.startswith("ModelFileError:"), msg
    assert "found ['W0', 'b0', 'junk']" in msg and "MemoryError" not in msg


def test_metadata_bomb_refused_by_size_before_inflating(tmp_path):
    path = metadata_bomb_file(tmp_path / "m.npz", 100 << 20)
    assert path.stat().st_size < 1 << 20
    msg = load_with_memory_limit(path)
    assert msg.startswith("ModelFileError:"), msg
    assert "metadata of 419430" in msg and "at most 1048576" in msg


def test_model_over_the_budget_is_refused_and_max_bytes_raises_it(tmp_path):
    net = bpfast.Network([30, 20, 10], seed=0)
    path = net.save(tmp_path / "m.npz")
    need = (30 * 20 + 20 + 20 * 10 + 10) * 8
    with pytest.raises(ModelFileError, match=f"needs {need:,} bytes, more than the budget"):
        bpfast.load(path, max_bytes=need - 1)
    got = bpfast.load(path, max_bytes=need)
    assert all(np.array_equal(a, b) for a, b in zip(net.weights, got.weights))


def test_member_size_must_match_its_header(tmp_path):
    """A member whose data is longer than its header's shape says is refused."""
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.npy", _npy(np.array(json.dumps(_meta([2, 1])))))
        z.writestr("W0.npy", _npy(np.zeros((1, 2))) + bytes(8))
        z.writestr("b0.npy", _npy(np.zeros(1)))
    with pytest.raises(ModelFileError, match="W0 declares"):
        bpfast.load(path)


def test_duplicate_member_names_refused(tmp_path):
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.npy", _npy(np.array(json.dumps(_meta([2, 1])))))
        z.writestr("W0.npy", _npy(np.zeros((1, 2))))
        z.writestr("W0", _npy(np.ones((1, 2))))
        z.writestr("b0.npy", _npy(np.zeros(1)))
    with pytest.raises(ModelFileError, match="'W0' twice"):
        bpfast.load(path)


def test_fortran_ordered_and_compressed_members_load(tmp_path):
    W = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    path = tmp_path / "m.npz"
    np.savez_compressed(path, metadata=np.array(json.dumps(_meta([3, 2]))), W0=W,
                        b0=np.array([0.5, -0.5]))
    net = bpfast.load(path)
    assert np.array_equal(net.weights[0], W) and net.weights[0].flags.c_contiguous
    assert np.array_equal(net.biases[0], [0.5, -0.5])


# --------------------------------------------------------------------------------------
# Item 9: fsync before the rename; leftovers of killed saves are removed
# --------------------------------------------------------------------------------------

@LINUX_PROC
def test_save_syncs_the_file_before_the_rename_and_the_directory_after(tmp_path,
                                                                         monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    good_net().save(tmp_path / "m.npz")
    monkeypatch.undo()
    kinds = [(kind, name.startswith(".bpfast-") if kind == "fsync" else name)
             for kind, name in events]
    assert kinds == [("fsync", True), ("replace", "m.npz"), ("fsync", False)]
    assert events[2][1] == tmp_path.name  # the directory


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_save_removes_leftovers_of_dead_processes_only(tmp_path):
    host = bio._host_tag()
    dead = tmp_path / f".bpfast-{_dead_pid()}.{host}-abc.npz.tmp"
    alive = tmp_path / f".bpfast-{os.getppid()}.{host}-def.npz.tmp"
    other_host = tmp_path / f".bpfast-{_dead_pid()}.{host}x-ghi.npz.tmp"
    foreign = tmp_path / ".bpfast-jkl.npz.tmp"
    for p in (dead, alive, other_host, foreign):
        p.write_bytes(b"half a model")
    good_net().save(tmp_path / "m.npz")
    assert not dead.exists()
    assert alive.exists() and other_host.exists() and foreign.exists()


def test_kill_9_during_save_leaves_a_temp_file_the_next_save_removes(tmp_path):
    code = textwrap.dedent("""
        import os, signal, sys
        import bpfast.io
        def write(f):
            f.write(b"PK\\x03\\x04 half a model")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        bpfast.io.atomic_write(sys.argv[1], write)
    """)
    target = tmp_path / "m.npz"
    good_net().save(target)
    before = target.read_bytes()
    out = subprocess.run([sys.executable, "-c", code, str(target)],
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
                         cwd=tmp_path)
    assert out.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    assert len(temp_files(tmp_path)) == 1
    good_net(np.float32).save(tmp_path / "other.npz")
    assert temp_files(tmp_path) == []
    bpfast.load(target)


# --------------------------------------------------------------------------------------
# Item 12: errors name the target, not the temporary file
# --------------------------------------------------------------------------------------

@LINUX_PROC
def test_write_error_names_the_target_not_the_temp_file(tmp_path, monkeypatch):
    def full_disk(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device",
                      os.readlink(f"/proc/self/fd/{f.fileno()}"))

    monkeypatch.setattr(bio.np, "savez", full_disk)
    target = tmp_path / "m.npz"
    with pytest.raises(OSError) as info:
        good_net().save(target)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target)
    assert ".bpfast-" not in str(info.value) and "No space left" in str(info.value)
    assert temp_files(tmp_path) == []


def test_unwritable_directory_error_names_the_target(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied",
                              str(tmp_path / ".bpfast-1.h-x.npz.tmp"))

    monkeypatch.setattr(bio.tempfile, "mkstemp", denied)
    target = tmp_path / "m.npz"
    with pytest.raises(PermissionError) as info:
        good_net().save(target)
    assert info.value.filename == str(target) and ".bpfast-" not in str(info.value)
