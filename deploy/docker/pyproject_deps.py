"""Third-party requirements of a set of workspace packages, read from their pyproject.toml files.

The Dockerfiles copy only the pyproject.toml files first and install what this
prints, so the (slow) dependency layer is rebuilt only when a dependency
changes, not on every code change; the packages themselves are installed
afterwards with ``--no-deps``. Workspace members (``mess-*``) are left out: they
are installed from source. A ``mess-*`` dependency that is not among the
packages given is an error, so a Dockerfile that forgets to copy a lib fails at
build time instead of at import time in production.

Usage: python pyproject_deps.py [--only NAME ...] [--exclude NAME ...] DIR [DIR ...]
"""

import argparse
import re
import sys
import tomllib
from pathlib import Path

# PEP 508: the distribution name is the leading run of letters, digits, '.', '-', '_'.
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised name, so 'Torch' and 'torch' compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a PEP 508 requirement: {requirement!r}")
    return canonical(match.group(1))


def third_party_requirements(package_dirs: list[Path]) -> list[str]:
    projects = {}
    for directory in package_dirs:
        project = tomllib.loads((directory / "pyproject.toml").read_text())["project"]
        projects[canonical(project["name"])] = project
    requirements: list[str] = []
    for name, project in projects.items():
        for requirement in project.get("dependencies", []):
            dependency = requirement_name(requirement)
            if dependency.startswith("mess-"):
                if dependency not in projects:
                    raise SystemExit(f"{name} needs workspace package {dependency}: copy its directory too")
                continue
            if requirement not in requirements:
                requirements.append(requirement)
    return requirements


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="print only these distributions")
    parser.add_argument("--exclude", action="append", default=[], help="leave these distributions out")
    parser.add_argument("package_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    only = {canonical(name) for name in args.only}
    exclude = {canonical(name) for name in args.exclude}
    for requirement in third_party_requirements(args.package_dirs):
        name = requirement_name(requirement)
        if (only and name not in only) or name in exclude:
            continue
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
