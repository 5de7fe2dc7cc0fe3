"""deploy/check.sh passes on the real tree and fails, for the right reason, on broken copies.

Each broken case copies the deployment files into a temporary tree, breaks one
thing the way a person might (a typo, a dropped guarantee, an unquoted number,
a missing lib), and runs the same script CI runs against that copy. The tools
are real: kustomize (kubectl's), the Kubernetes JSON schemas, hadolint and
docker-compose, and the services' own Settings classes; no container engine or
cluster is needed.
"""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "deploy" / "check.sh"


def run_check(root: Path, only: str | None = None) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(CHECK), "--root", str(root)]
    if only:
        command += ["--only", only]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def copy_tree(target: Path) -> Path:
    """The files deploy/check.sh reads: deploy/, the compose file, Dockerfiles and pyproject files."""
    shutil.copytree(ROOT / "deploy", target / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "docker-compose.yml", target / "docker-compose.yml")
    shutil.copy(ROOT / ".dockerignore", target / ".dockerignore")
    for project in ROOT.glob("*/*/pyproject.toml"):
        package = project.parent.relative_to(ROOT)
        (target / package).mkdir(parents=True, exist_ok=True)
        shutil.copy(project, target / package / "pyproject.toml")
        if (project.parent / "Dockerfile").exists():
            shutil.copy(project.parent / "Dockerfile", target / package / "Dockerfile")
    return target


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, f"{old!r} not in {path}: the test no longer breaks anything"
    path.write_text(text.replace(old, new, 1))


def test_the_real_tree_passes() -> None:
    result = run_check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every overlay was rendered and validated, and the compose file was checked.
    for overlay in (ROOT / "deploy" / "k8s" / "overlays").iterdir():
        assert f"{overlay.name}.yaml: " in result.stdout and "objects valid for Kubernetes" in result.stdout
    assert "ScaledObject" in result.stdout and "HorizontalPodAutoscaler" in result.stdout
    assert "without POSTGRES_PASSWORD: refused" in result.stdout
    assert "hadolint: 4 Dockerfile(s) clean" in result.stdout
    assert "docker-compose.yml: settings load: ingest" in result.stdout
    assert "docker-compose.yml+gpu.yml: settings load: ingest" in result.stdout


def test_an_unmodified_copy_passes(tmp_path: Path) -> None:
    """The broken cases below fail because of what they break, not because of the copy."""
    result = run_check(copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


Breakage = Callable[[Path], object]

BROKEN_CASES: dict[str, tuple[str, Breakage, str]] = {
    "typo_in_a_field": (
        "k8s",
        lambda t: replace_once(t / "deploy/k8s/base/query.yaml", "readinessProbe:", "readinesProbe:"),
        "'readinesProbe' was unexpected",
    ),
    "wrong_type": (
        "k8s",
        lambda t: replace_once(t / "deploy/k8s/base/ingest.yaml", "containerPort: 8001", 'containerPort: "8001"'),
        "is not of type 'integer'",
    ),
    "rollout_may_drop_capacity": (
        "k8s",
        lambda t: replace_once(t / "deploy/k8s/base/query.yaml", "maxUnavailable: 0", "maxUnavailable: 1"),
        "Deployment/query: strategy must be RollingUpdate with maxUnavailable: 0",
    ),
    "writable_root_filesystem": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/base/embedder.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"
        ),
        "readOnlyRootFilesystem must be true",
    ),
    "no_prestop_hook": (
        "k8s",
        lambda t: replace_once(t / "deploy/k8s/base/ingest.yaml", 'command: ["sleep", "10"]', 'command: ["true"]'),
        "needs a preStop sleep",
    ),
    "readiness_on_the_liveness_route": (
        "k8s",
        lambda t: replace_once(t / "deploy/k8s/base/indexer.yaml", "path: /health/ready", "path: /health/live"),
        "readinessProbe must ask /health/ready",
    ),
    "unquoted_keda_metadata": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/overlays/eks/embedder-scaledobject.yaml", 'lagThreshold: "64"', "lagThreshold: 64"
        ),
        "ScaledObject/embedder: schema (KEDA ScaledObject): spec.triggers.0.metadata.lagThreshold",
    ),
    "undefined_secret": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/static-s3-credentials/kustomization.yaml", "name: mess-s3", "name: mess-s4"
        ),
        "Secret mess-s4 is not defined",
    ),
    "missing_resource_file": (
        "k8s",
        lambda t: (t / "deploy/k8s/overlays/eks/query-hpa.yaml").unlink(),
        "overlay eks does not render",
    ),
    "compose_secret_with_a_default": (
        "compose",
        lambda t: (t / "docker-compose.yml").write_text(
            (t / "docker-compose.yml")
            .read_text()
            .replace(
                "${MESS_INGEST_API_KEY_HASHES:?set MESS_INGEST_API_KEY_HASHES",
                "${MESS_INGEST_API_KEY_HASHES:-set MESS_INGEST_API_KEY_HASHES",
            )
        ),
        "compose config passes without MESS_INGEST_API_KEY_HASHES",
    ),
    "compose_unknown_key": (
        "compose",
        lambda t: replace_once(t / "docker-compose.yml", "  read_only: true", "  readonly: true"),
        "readonly",
    ),
    "configmap_key_the_service_does_not_know": (
        "settings",
        lambda t: replace_once(
            t / "deploy/k8s/base/kustomization.yaml", "MESS_QUERY_SEARCH_THREADS=2", "MESS_QUERY_SEARCH_THREAD=2"
        ),
        "MESS_QUERY_SEARCH_THREAD is not a setting of query",
    ),
    "compose_value_the_service_refuses": (
        "settings",
        lambda t: replace_once(
            t / "docker-compose.yml", 'MESS_INGEST_DROP_SCAN_INTERVAL_S: "10"', 'MESS_INGEST_DROP_SCAN_INTERVAL_S: "-1"'
        ),
        "docker-compose.yml: ingest: drop_scan_interval_s",
    ),
    "gpu_override_key_the_embedder_does_not_know": (
        "settings",
        lambda t: replace_once(
            t / "deploy/compose/gpu.yml", "MESS_EMBEDDER_DEVICE: cuda", "MESS_EMBEDDER_DEVICES: cuda"
        ),
        "docker-compose.yml+gpu.yml: embedder: MESS_EMBEDDER_DEVICES is not a setting of embedder",
    ),
    "dockerfile_forgets_a_lib": (
        "dockerfiles",
        lambda t: replace_once(t / "services/ingest/Dockerfile", "COPY libs/corpus/pyproject.toml libs/corpus/\n", ""),
        "mess-ingest needs workspace package mess-corpus",
    ),
    "dockerfile_lint": (
        "dockerfiles",
        lambda t: replace_once(t / "services/query/Dockerfile", "WORKDIR /src", "RUN cd /src"),
        "DL3003",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_a_broken_copy_fails(tmp_path: Path, case: str) -> None:
    part, breakage, expected = BROKEN_CASES[case]
    tree = copy_tree(tmp_path)
    breakage(tree)
    result = run_check(tree, only=part)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{case}: the check passed a broken tree\n{output}"
    assert expected in output, f"{case}: failed, but not for the expected reason\n{output}"
