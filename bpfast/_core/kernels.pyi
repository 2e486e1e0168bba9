# The compiled module, typed loosely for type checkers: its entry points check their
# arguments at run time.
from typing import Any

def __getattr__(name: str) -> Any: ...
def cpu_features() -> list[str]:
    """The processor features the compiled kernels' dispatch uses, e.g. ``['avx2', 'fma']``.

    Detected once at import, less those named in the environment variable
    ``BPFAST_DISABLE_CPU_FEATURES`` (a comma list such as ``avx512f`` or ``avx512f,avx2``;
    disabling a feature also disables those built on it). Names: ``avx2``, ``fma``,
    ``avx512f`` (x86-64), ``neon`` (ARM64).
    """

def kernel_target() -> str:
    """The copy of the kernels in use: ``'avx512f'``, ``'avx2'`` or ``'baseline'``."""

def missing_kernels() -> list[str]:
    """The kernels the copy in use does not have (empty entries of its table)."""
