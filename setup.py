"""Build the compiled kernels of bpfast.

Everything declarative lives in pyproject.toml; this file only lists the Cython
extensions. The default build is portable (``-O3``, no processor-specific flags).
Set ``BPFAST_NATIVE=1`` to add ``-march=native`` for a build that runs only on
processors like the one it was built on.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

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
    return Extension(
        f"bpfast.{name}",
        [f"bpfast/{name}.pyx"],
        include_dirs=[np.get_include(), "bpfast"],
        # every header and .pxd: a change to any of them rebuilds the extension
        depends=sorted(glob.glob("bpfast/*.h") + glob.glob("bpfast/*.pxd")),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=COMPILE_ARGS,
    )


setup(
    ext_modules=cythonize(
        [extension("_kernels"), extension("_shuffle")],
        compiler_directives=DIRECTIVES,
    ),
)
