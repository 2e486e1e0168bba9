"""The package's layering, read from its imports: production code never imports the
NumPy reference, and only the engine layer talks to the compiled core."""
import ast
import pathlib

import bpfast

PACKAGE = pathlib.Path(bpfast.__file__).parent

#: Modules that compare against the reference, and the package's public face, which
#: exposes it as ``bpfast.reference``: the only ones outside it that may import it.
REFERENCE_USERS = {"bpfast", "bpfast.cli", "bpfast.benchmarks"}


def _modules():
    """(dotted name, path) of every Python module of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imported(name, path):
    """Absolute names of every module ``name`` imports (also inside functions), with
    ``from X import y`` counted as both ``X`` and ``X.y``."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _importers(target):
    return {name for name, path in _modules()
            if not name.startswith(target)
            and any(m == target or m.startswith(target + ".") for m in _imported(name, path))}


def test_production_code_does_not_import_the_reference():
    importers = _importers("bpfast.reference")
    assert importers <= REFERENCE_USERS, sorted(importers - REFERENCE_USERS)


def test_the_reference_does_not_import_the_compiled_core():
    for name, path in _modules():
        if name.startswith("bpfast.reference"):
            imported = _imported(name, path)
            assert not {m for m in imported if m.startswith("bpfast._core")}, name


#: The engine layer (``engine`` with its trainer and tuning): the only modules that talk
#: to the compiled core. The package's
#: ``__init__`` imports it to fail early with a clear message; ``_blas_backend`` hands it
#: the BLAS's function pointers.
ENGINE_LAYER = {"bpfast", "bpfast.engine", "bpfast._engine_trainer", "bpfast._tuning",
                "bpfast._blas_backend"}


def test_only_the_engine_layer_imports_the_compiled_core():
    importers = _importers("bpfast._core")
    assert importers <= ENGINE_LAYER, sorted(importers - ENGINE_LAYER)
    assert "bpfast.engine" in importers
