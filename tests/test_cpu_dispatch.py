"""The kernels' CPU-feature layer and dispatch: bpfast.cpu_features(), the
BPFAST_DISABLE_CPU_FEATURES override, and a built module without IFUNC relocations."""
import os
import platform
import shutil
import subprocess
import sys

import pytest

import bpfast
from bpfast._core import kernels as _kernels

KNOWN = {"avx2", "fma", "avx512f", "neon"}


def processor_flags():
    """The processor's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run_with(disabled, code):
    """Run `code` in a fresh interpreter with BPFAST_DISABLE_CPU_FEATURES=disabled."""
    env = dict(os.environ, BPFAST_DISABLE_CPU_FEATURES=disabled)
    # started beside the bpfast this process imported, so that the child imports the same
    # one (an installed package, not the source tree the tests run from)
    beside = os.path.dirname(os.path.dirname(os.path.abspath(bpfast.__file__)))
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                          cwd=beside, capture_output=True, text=True, timeout=300)


def test_cpu_features_is_a_subset_of_the_processors():
    features = bpfast.cpu_features()
    assert isinstance(features, list) and set(features) <= KNOWN
    assert features == _kernels.cpu_features()
    if platform.machine().lower() in ("aarch64", "arm64"):
        # NEON is part of the ARM64 baseline; under user-mode emulation /proc/cpuinfo
        # describes the host, so it is not consulted here
        assert features == ["neon"]
        return
    flags = processor_flags()
    if flags:
        have = {name for name in KNOWN if name in flags}
        assert set(features) <= have
    if "avx512f" in features:
        assert {"avx2", "fma"} <= set(features)


def test_availability_follows_the_features():
    avx512 = "avx512f" in bpfast.cpu_features()
    # the register-tile kernels come with the AVX2 and the AVX-512 copies
    assert _kernels.fused_update_available() == (_kernels.kernel_target() != "baseline")
    assert _kernels.vector_products_available() == (_kernels.kernel_target() != "baseline")
    # so do the vector math and the fused pointwise passes (switched on by default)
    assert _kernels.vector_math() == (_kernels.kernel_target() != "baseline")
    if _kernels.kernel_target() == "baseline":
        assert not _kernels.panel_gemm_available()
    assert _kernels.kernel_target() in ("avx512f", "avx2", "baseline")


def test_every_available_route_has_its_kernels():
    """No route that says it runs here calls an empty entry of the dispatch table (a
    family left out of a copy's build would otherwise be a call through NULL)."""
    missing = set(_kernels.missing_kernels())
    groups = {"tiles": (_kernels.fused_update_available(), ("layer_forward", "grad_update")),
              "vector products": (_kernels.vector_products_available(), ("bpfast_vp_",)),
              "panel": (_kernels.panel_gemm_available(), ("bpfast_panel_",))}
    for group, (available, prefixes) in groups.items():
        names = {n for n in missing if any(p in n for p in prefixes)}
        if available:
            assert not names, f"{group} is available but {sorted(names)} are missing"
    # every copy has the families that every copy compiles
    assert all(any(p in n for p in ("layer_forward", "grad_update", "bpfast_vp_",
                                    "bpfast_panel_")) for n in missing), sorted(missing)


REFERENCE_CHECK = """
import numpy as np, bpfast, bpfast._core.kernels as k
from bpfast import reference
print(";".join([",".join(bpfast.cpu_features()), k.kernel_target(),
                str(k.fused_update_available()), str(k.vector_math()),
                str(k.vector_products_available()), str(k.panel_gemm_available())]))
rng = np.random.default_rng(0)
for dtype, tol in ((np.float64, 1e-10), (np.float32, 2e-4)):
    for acts, m in ((["relu", "tanh"], 33), (["sigmoid", "exp"], 17), (["silu", "identity"], 1)):
        net = bpfast.Network([7, 40, 5], activations=acts, seed=1, dtype=dtype)
        X = rng.standard_normal((m, 7)).astype(dtype)
        Y = rng.random((m, 5)).astype(dtype)
        Y /= Y.sum(axis=1, keepdims=True)
        E, dW, db = bpfast.backprop(net.weights, net.biases, net.activations, X, Y)
        E0, dW0, db0 = reference.backprop(net.weights, net.biases, net.activations, X, Y)
        assert abs(E - E0) <= tol * max(1.0, abs(E0)), (dtype, acts, E, E0)
        for a, b in zip(list(dW) + list(db), list(dW0) + list(db0)):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
print("ok")
"""


@pytest.mark.parametrize("disabled", ["avx2", "fma", "avx512f", "avx512f,avx2"])
def test_disabled_features_leave_the_reference_results(disabled):
    run = run_with(disabled, REFERENCE_CHECK)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    first, last = run.stdout.split("\n")[0], run.stdout.strip().split("\n")[-1]
    names, target, *available = first.split(";")
    features = set(names.split(",")) - {""}
    assert last == "ok"
    assert not features & ({"avx512f"} | set(disabled.split(",")))
    # the tiles, the vector math, the vector products and the panel kernel of the AVX2 copy
    assert available[:3] == [str(target == "avx2")] * 3
    assert available[3] == str(target == "avx2" and sys.platform.startswith("linux"))
    if "avx2" in disabled or "fma" in disabled:
        # the AVX2 copy needs both: neither is reported without the other
        assert not features & {"avx2", "fma", "avx512f"} and target == "baseline"
    else:
        assert target in ("avx2", "baseline")
    assert "RuntimeWarning" not in run.stderr


def test_unknown_feature_name_warns():
    run = run_with("avx512f, sse9", "import bpfast; print(bpfast.cpu_features())")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "RuntimeWarning" in run.stderr
    assert "sse9" in run.stderr and "avx512f, neon" in run.stderr
    assert "avx512f" not in run.stdout


def test_feature_names_ignore_case_and_spaces():
    run = run_with(" AVX2 ", "import bpfast; print(bpfast.cpu_features())")
    assert run.returncode == 0 and "RuntimeWarning" not in run.stderr, run.stderr
    assert "avx2" not in run.stdout and "avx512f" not in run.stdout


def test_module_has_no_ifunc_relocations():
    """target_clones left IRELATIVE relocations that musl's loader rejects."""
    readelf = shutil.which("readelf")
    if readelf is None or not sys.platform.startswith("linux"):
        pytest.skip("needs readelf and an ELF module")
    for module in (_kernels.__file__,):
        relocations = subprocess.run([readelf, "-r", module], capture_output=True,
                                     text=True, check=True).stdout
        assert "IRELATIV" not in relocations, module


SOURCES = os.path.join(os.path.dirname(__file__), os.pardir, "bpfast", "_core", "src")


@pytest.fixture(scope="module")
def musl_smoke(tmp_path_factory):
    """tests/c/kernels_smoke.c linked against the C kernels built as a shared library by
    musl-gcc (built once for the module)."""
    musl_gcc = shutil.which("musl-gcc")
    if musl_gcc is None or not os.path.isdir(SOURCES):
        pytest.skip("needs musl-gcc and the source tree's C kernels")
    where = tmp_path_factory.mktemp("musl")
    c_files = sorted(os.path.join(SOURCES, f) for f in os.listdir(SOURCES) if f.endswith(".c"))
    flags = ["-O2", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno", f"-I{SOURCES}"]
    library = where / "libbpfastkernels.so"
    subprocess.run([musl_gcc, *flags, "-fPIC", "-shared", *c_files, "-o", str(library),
                    "-lm", "-lpthread"], check=True, capture_output=True)
    smoke = where / "smoke"
    subprocess.run([musl_gcc, *flags, os.path.join(os.path.dirname(__file__), "c",
                                                    "kernels_smoke.c"),
                    f"-L{where}", "-lbpfastkernels", f"-Wl,-rpath,{where}",
                    "-o", str(smoke), "-lm"], check=True, capture_output=True)
    return smoke


@pytest.mark.parametrize("disabled", ["", "avx512f", "avx2"])
def test_kernels_load_and_run_under_musl(musl_smoke, disabled):
    """The C kernels under musl's loader, which has no IFUNC: the dispatch table fills and
    the kernels give the formulas' values, on every target the processor allows."""
    env = dict(os.environ, BPFAST_DISABLE_CPU_FEATURES=disabled)
    run = subprocess.run([str(musl_smoke)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.endswith(": ok\n")
