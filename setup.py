"""Build the compiled kernels of bpfast.

Everything declarative lives in pyproject.toml; this file only lists the Cython
extensions. The default build is portable (``-O3``, no processor-specific flags).
Set ``BPFAST_NATIVE=1`` to add ``-march=native`` for a build that runs only on
processors like the one it was built on. Release builds carry no debug information and,
on Linux, no symbol table; set ``BPFAST_DEBUG=1`` to keep both.
"""
import glob
import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -fopenmp-simd honours the "omp simd" reduction pragmas in _small_gemm.h without
# linking an OpenMP runtime. -fno-trapping-math lets gcc if-convert the comparisons in
# relu-like loops so that they vectorise ("control flow in loop" otherwise); it changes no
# result (unlike -ffast-math it does not reorder or approximate arithmetic), only the
# assumption that floating-point exceptions trap, which nothing here relies on.
# -fno-math-errno lets sqrt (Adam's update) become one vector instruction; errno is never
# read by this code.
# -Werror=int-conversion and -Werror=incompatible-pointer-types: a call that no longer
# matches a C prototype in the headers is a build error, never a warning and a crash.
COMPILE_ARGS = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno",
                "-Werror=int-conversion", "-Werror=incompatible-pointer-types"]
if os.environ.get("BPFAST_NATIVE") == "1":
    COMPILE_ARGS.append("-march=native")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
}


def extension(name):
    """bpfast._core.<name> from bpfast/_core/<name>.pyx and its include files."""
    return Extension(
        f"bpfast._core.{name}",
        [f"bpfast/_core/{name}.pyx"],
        # the C headers: bpfast/_core/src, or bpfast itself in trees from before the move
        include_dirs=[np.get_include(), "bpfast/_core/src", "bpfast", "bpfast/_core"],
        # every header, .pxd and .pxi: a change to any of them rebuilds the extension
        depends=sorted(glob.glob("bpfast/*.h") + glob.glob("bpfast/_core/src/*.h")
                       + glob.glob("bpfast/_core/*.pxd") + glob.glob("bpfast/_core/*.pxi")),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )


class ReleaseBuildExt(build_ext):
    """Strip debug information and symbols where the compiler is GCC or clang.

    Python's own CFLAGS carry ``-g``, which more than triples the size of the modules; the
    flags are added per compiler because MSVC and Apple's linker take other options.
    """

    def build_extensions(self):
        if self.compiler.compiler_type == "unix" and os.environ.get("BPFAST_DEBUG") != "1":
            for ext in self.extensions:
                ext.extra_compile_args = ext.extra_compile_args + ["-g0"]
                if sys.platform.startswith("linux"):
                    ext.extra_link_args = ext.extra_link_args + ["-s"]
        super().build_extensions()


setup(
    cmdclass={"build_ext": ReleaseBuildExt},
    ext_modules=cythonize(
        [extension("kernels"), extension("shuffle")],
        compiler_directives=DIRECTIVES,
    ),
)
