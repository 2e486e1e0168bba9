"""Build the compiled kernels of bpfast.

Everything declarative lives in pyproject.toml; this file only lists the Cython
extensions and the C sources of the kernels (bpfast/_core/src). The default build is
portable to any processor of its architecture: on x86-64 with GCC or clang it carries
AVX2 and AVX-512 copies of the kernels beside the baseline ones, and picks one at import
(dispatch.c). ``BPFAST_PORTABLE=1`` builds the baseline copy alone, with no
instruction-set-specific code at all (also the choice for any other compiler or
architecture). Set ``BPFAST_NATIVE=1`` to add ``-march=native`` for a build that runs only
on processors like the one it was built on. Release builds carry no debug information
and, on Linux, no symbol table; set ``BPFAST_DEBUG=1`` to keep both.
"""
import glob
import os
import platform
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# GCC and clang: -fopenmp-simd honours the "omp simd" reduction pragmas in small_gemm.inc without
# linking an OpenMP runtime. -fno-trapping-math lets gcc if-convert the comparisons in
# relu-like loops so that they vectorise ("control flow in loop" otherwise); it changes no
# result (unlike -ffast-math it does not reorder or approximate arithmetic), only the
# assumption that floating-point exceptions trap, which nothing here relies on.
# -fno-math-errno lets sqrt (Adam's update) become one vector instruction; errno is never
# read by this code.
# -Werror=int-conversion, -Werror=incompatible-pointer-types and
# -Werror=implicit-function-declaration: a call that no longer
# matches a C prototype in the headers is a build error, never a warning and a crash.
GNU_ARGS = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno",
            "-Werror=int-conversion", "-Werror=incompatible-pointer-types",
            "-Werror=implicit-function-declaration"]
if os.environ.get("BPFAST_NATIVE") == "1":
    GNU_ARGS.append("-march=native")
# MSVC: optimisation only (none of the GCC options above); other compilers: nothing.
MSVC_ARGS = ["/O2"]

C_SOURCES = "bpfast/_core/src"
# the kernels as translation units: the cpu layer, the dispatch table and its check, the
# switches, the panel kernel's pool and the parallel reduction, and the baseline copy of
# every family
BASE_C = ["cpu.c", "dispatch.c", "kernel_check.c", "routes.c", "panel.c",
          "parallel_reduce.c", "dispatch_baseline.c"]
# the copies for wider x86-64 instruction sets (left out of a portable build)
TARGET_C = ["dispatch_avx2.c", "dispatch_avx512.c"]
PORTABLE = os.environ.get("BPFAST_PORTABLE") == "1"

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
}


def extension(name, c_sources=()):
    """bpfast._core.<name> from bpfast/_core/<name>.pyx, its include files and C sources."""
    return Extension(
        f"bpfast._core.{name}",
        [f"bpfast/_core/{name}.pyx"] + [f"{C_SOURCES}/{c}" for c in c_sources],
        include_dirs=[np.get_include(), C_SOURCES, "bpfast/_core"],
        # every C source, header, .pxd and .pxi: a change to any of them rebuilds it
        depends=sorted(glob.glob(f"{C_SOURCES}/*") + glob.glob("bpfast/_core/*.pxd")
                       + glob.glob("bpfast/_core/*.pxi")),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


def gnu_compiler(compiler):
    """Whether the compiler is GCC or clang (or a ``cc`` that takes their options)."""
    if compiler.compiler_type not in ("unix", "mingw32", "cygwin"):
        return False
    name = os.path.basename(str(compiler.compiler_so[0] if compiler.compiler_so else ""))
    return "cc" in name or "clang" in name


def x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


class ReleaseBuildExt(build_ext):
    """Options per compiler, the portable configuration where needed, and release builds
    without debug information or symbols where the compiler is GCC or clang.

    Python's own CFLAGS carry ``-g``, which more than triples the size of the modules; the
    flags are added per compiler because MSVC and Apple's linker take other options.
    """

    def build_extensions(self):
        kind = self.compiler.compiler_type
        gnu = gnu_compiler(self.compiler)
        # per-target copies only where GCC or clang builds for x86-64
        portable = PORTABLE or not (gnu and x86_64())
        for ext in self.extensions:
            ext.extra_compile_args = ext.extra_compile_args + (
                GNU_ARGS if gnu else MSVC_ARGS if kind == "msvc" else [])
            if portable:
                ext.sources = [s for s in ext.sources
                               if os.path.basename(s) not in TARGET_C]
                ext.define_macros = ext.define_macros + [("BPFAST_PORTABLE", "1")]
            if kind == "unix" and os.environ.get("BPFAST_DEBUG") != "1":
                ext.extra_compile_args = ext.extra_compile_args + ["-g0"]
                if sys.platform.startswith("linux"):
                    ext.extra_link_args = ext.extra_link_args + ["-s"]
        super().build_extensions()


setup(
    cmdclass={"build_ext": ReleaseBuildExt},
    ext_modules=cythonize(
        [extension("kernels", BASE_C + TARGET_C), extension("shuffle")],
        compiler_directives=DIRECTIVES,
    ),
)
