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
    # The eks overlay in each Kafka security mode, with what the operator needs around it.
    for mode in ("eks.yaml", "eks+kafka-tls.yaml", "eks+kafka-scram.yaml"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{mode}: ") and "valid" in line)
        for kind in (
            "TriggerAuthentication",
            "NetworkPolicy",
            "Ingress",
            "Namespace",
            "Job",
            "ServiceMonitor",
            "PrometheusRule",
        ):
            assert kind in line, f"{mode} has no {kind}: {line}"
        assert f"{mode}: settings load: embedder" in result.stdout
    assert "docker-compose.yml+kafka-secured.yml: settings load: ingest" in result.stdout
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
    "keda_uses_the_apache_kafka_spelling_of_msk_iam": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/kafka-msk-iam/kustomization.yaml", "- sasl=oauthbearer", "- sasl=aws_msk_iam"
        ),
        "sasl: aws_msk_iam is the apache-kafka scaler's spelling",
    ),
    "keda_without_tls_while_the_services_use_it": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/kafka-msk-iam/kustomization.yaml", "- tls=enable", "- tls=disable"
        ),
        "the services use SASL_SSL, but KEDA's trigger has no tls: enable",
    ),
    "keda_authentication_names_a_missing_secret": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/kafka-scram/triggerauthentication.yaml",
            "name: mess-kafka-scram-embedder",
            "name: mess-kafka-scram-embeder",
        ),
        "TriggerAuthentication/mess-kafka-scram: parameter username: Secret mess-kafka-scram-embeder is not defined",
    ),
    "trigger_authentication_unknown_field": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/kafka-msk-iam/triggerauthentication.yaml",
            "    identityOwner: workload",
            "    identityOwnr: workload",
        ),
        "schema (KEDA TriggerAuthentication): spec.podIdentity",
    ),
    "kafka_mode_switch_no_longer_possible": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/overlays/eks/kustomization.yaml", "  - ../../components/kafka-msk-iam\n", ""
        ),
        "overlay eks does not name components/kafka-msk-iam",
    ),
    "deployment_without_a_network_policy": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/network-policies/policies.yaml",
            "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: indexer\n",
            "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: indexr\n",
        ),
        "Deployment/indexer: no NetworkPolicy of its own selects its pods",
    ),
    "no_default_deny": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/network-policies/policies.yaml",
            "policyTypes: [Ingress, Egress]\n---",
            "policyTypes: [Ingress]\n---",
        ),
        "NetworkPolicies without a default deny",
    ),
    "ingress_routes_everything": (
        "k8s",
        lambda t: replace_once(t / "deploy/k8s/overlays/eks/ingress.yaml", "- path: /tracks", "- path: /"),
        "Ingress/mess-api: path / (Prefix) exposes /metrics",
    ),
    "ingress_routes_the_docs": (
        "k8s",
        lambda t: replace_once(t / "deploy/k8s/overlays/eks/ingress.yaml", "- path: /waveform", "- path: /docs"),
        "Ingress/mess-api: path /docs (Prefix) exposes /docs",
    ),
    "image_by_tag": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/overlays/eks/kustomization.yaml",
            "digest: sha256:0000000000000000000000000000000000000000000000000000000000000004",
            'newTag: "0.1.0"',
        ),
        "Deployment/query: container query: image 123456789012.dkr.ecr.us-east-1.amazonaws.com/mess-query:0.1.0 "
        "is not pinned by digest",
    ),
    "kafka_password_in_a_variable": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/kafka-scram/kustomization.yaml",
            "- MESS_KAFKA_SASL_PASSWORD_FILE=/etc/mess/kafka-scram/password",
            "- MESS_KAFKA_SASL_PASSWORD=hunter2",
        ),
        "MESS_KAFKA_SASL_PASSWORD is a secret in a ConfigMap",
    ),
    "service_monitor_port_missing": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/monitoring/servicemonitor.yaml", "- port: http", "- port: metrics"
        ),
        "Service query has no port named metrics",
    ),
    "alert_rule_without_expr": (
        "k8s",
        lambda t: replace_once(
            t / "deploy/k8s/components/monitoring/alerts.yaml",
            "expr: sum(mess_embedder_consumer_lag",
            "exp: sum(mess_embedder_consumer_lag",
        ),
        "schema (Prometheus operator PrometheusRule): spec.groups.0.rules.0",
    ),
    "compose_kafka_security_setting_misspelt": (
        "settings",
        lambda t: replace_once(
            t / "docker-compose.yml",
            "MESS_KAFKA_SSL_CHECK_HOSTNAME: ${MESS_KAFKA_SSL_CHECK_HOSTNAME:-true}",
            "MESS_KAFKA_SSL_CHECK_HOSTNAMES: ${MESS_KAFKA_SSL_CHECK_HOSTNAME:-true}",
        ),
        "MESS_KAFKA_SSL_CHECK_HOSTNAMES is not a setting of ingest",
    ),
    "scram_mode_without_a_password_file": (
        "settings",
        lambda t: replace_once(
            t / "deploy/k8s/components/kafka-scram/kustomization.yaml",
            "      - MESS_KAFKA_SASL_PASSWORD_FILE=/etc/mess/kafka-scram/password\n",
            "",
        ),
        "SCRAM-SHA-512 needs MESS_KAFKA_SASL_PASSWORD(_FILE)",
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
