"""Write pip constraint files that pin every declared minimum of pyproject.toml.

The floors stay in one place, pyproject.toml: each ``name>=X`` requirement becomes
``name==X``. Run with Python 3.11 or later (tomllib).

    python .ci/floors.py runtime EXTRA... > runtime.txt   # dependencies and the extras
    python .ci/floors.py build > build.txt                # [build-system] requires
    python .ci/floors.py extras EXTRA...                  # the extras' requirements as declared
"""
import re
import sys
import tomllib
from pathlib import Path

FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*$")


def floors(requirements: list[str]) -> dict[str, str]:
    """Map each requirement with a ``>=`` floor (and no other bound) to that floor."""
    pinned: dict[str, str] = {}
    for requirement in requirements:
        match = FLOOR.match(requirement.split(";")[0])
        if match:
            name = match.group(1).lower().replace("_", "-")
            # two extras may name one package; the higher floor is the one that binds
            if name not in pinned or _key(match.group(2)) > _key(pinned[name]):
                pinned[name] = match.group(2)
    return pinned


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("runtime", "build", "extras"):
        print(__doc__, file=sys.stderr)
        return 2
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    if argv[0] == "build":
        requirements = project["build-system"]["requires"]
    else:
        extras = project["project"].get("optional-dependencies", {})
        unknown = [name for name in argv[1:] if name not in extras]
        if unknown:
            print(f"floors.py: unknown extra(s) {unknown}; pyproject has {sorted(extras)}",
                  file=sys.stderr)
            return 2
        if argv[0] == "extras":
            for name in argv[1:]:
                print("\n".join(extras[name]))
            return 0
        requirements = list(project["project"]["dependencies"])
        for name in argv[1:]:
            requirements += extras[name]
    for name, version in sorted(floors(requirements).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
