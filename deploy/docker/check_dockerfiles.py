"""Check that each service's Dockerfile copies and installs every workspace package it needs.

No image can be built where CI runs (no container engine), so this reads the
Dockerfiles instead: the directories whose ``pyproject.toml`` a Dockerfile
copies must hold every ``mess-*`` package that the service depends on,
directly or through a lib; each of them must also be copied whole and
installed; and every call of ``pyproject_deps.py`` must list the same
directories. A service that starts to use a lib (say ``mess-corpus``) without
its Dockerfile following then fails here, not in a production image.

Usage: python check_dockerfiles.py services/*/Dockerfile
"""

import re
import sys
from pathlib import Path

from pyproject_deps import third_party_requirements

_COPY_PROJECT = re.compile(r"^COPY\s+(\S+)/pyproject\.toml\s+\1/?\s*$", re.MULTILINE)
_COPY_TREE = re.compile(r"^COPY\s+(\S+)\s+(\S+)\s*$", re.MULTILINE)
_DEPS_CALL = re.compile(r"pyproject_deps\.py(?:\s+--(?:only|exclude)\s+\S+)*((?:\s+(?:libs|services)/[\w.-]+)+)")
_INSTALL = re.compile(r"pip install --no-deps((?:\s+(?:libs|services)/[\w.-]+)+)")


def problems_in(dockerfile: Path, root: Path) -> list[str]:
    text = dockerfile.read_text()
    service_dir = dockerfile.parent.relative_to(root).as_posix()
    projects = _COPY_PROJECT.findall(text)
    problems: list[str] = []
    if service_dir not in projects:
        problems.append(f"does not copy {service_dir}/pyproject.toml")
    try:
        third_party_requirements([root / directory for directory in projects])
    except SystemExit as missing:
        problems.append(str(missing))
    trees = {source for source, target in _COPY_TREE.findall(text) if source == target.rstrip("/")}
    for directory in projects:
        if directory not in trees:
            problems.append(f"copies {directory}/pyproject.toml but never the code in {directory}")
    wanted = sorted(projects)
    for call in _DEPS_CALL.findall(text):
        if sorted(call.split()) != wanted:
            problems.append(f"pyproject_deps.py reads {sorted(call.split())}, the Dockerfile copies {wanted}")
    installs = _INSTALL.findall(text)
    if not installs:
        problems.append("never installs the workspace packages (pip install --no-deps ...)")
    for install in installs:
        if sorted(install.split()) != wanted:
            problems.append(f"installs {sorted(install.split())}, the Dockerfile copies {wanted}")
    return problems


def main(argv: list[str]) -> int:
    root = Path.cwd()
    failed = False
    for name in argv:
        dockerfile = Path(name).resolve()
        problems = problems_in(dockerfile, root)
        for problem in problems:
            print(f"  {name}: {problem}", file=sys.stderr)
        failed |= bool(problems)
    if not failed:
        print(f"{len(argv)} Dockerfile(s) copy and install every workspace package they need")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
