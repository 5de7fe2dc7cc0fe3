"""Validate rendered Kubernetes manifests: schemas first, then the rules mess deploys by.

Input is what ``kustomize build`` printed for one overlay (a multi-document
YAML file). Every object is checked against the Kubernetes JSON schemas of the
targeted version (``kubernetes-validate``, which bundles them, in strict mode:
an unknown field is an error, so a typo cannot slip through as "extra data").
The custom resources those schemas do not know are checked against the
schemas in ``deploy/schemas`` (``CRD_SCHEMAS``: KEDA's ScaledObject and
TriggerAuthentication, the Prometheus operator's ServiceMonitor and
PrometheusRule); any other kind that no schema covers is an error rather than
a silent pass.

Then the rules that a schema cannot express, for each mess Deployment
(label ``app.kubernetes.io/part-of=mess``): rolling updates with
``maxUnavailable: 0``; startup, liveness (``/health/live``) and readiness
(``/health/ready``) probes; requests and limits; the hardened security
context; a preStop sleep shorter than the grace period; writable ``/tmp`` from
an emptyDir; topology spread; a PodDisruptionBudget and a Service that select
it; its ServiceAccount, ConfigMaps, Secrets and claims present (or a Secret
named as created outside git); ``MESS_<SVC>_HOST=0.0.0.0``; no replica count
where an autoscaler owns it. Across objects: KEDA's Kafka trigger reaches the
brokers with the security the services use (its TriggerAuthentication and the
Secrets it names exist); with NetworkPolicies, a default deny and a policy of
its own for every workload; an Ingress routes no internal path (``/metrics``,
``/docs``, ``/openapi.json``, ``/health``) and has TLS; no password in a literal
environment value; a ServiceMonitor selects Services that have its port; with
``--require-image-digests``, every mess image is pinned by digest.

Usage: python validate_manifests.py [--kubernetes-version 1.32] [--external-secret NAME ...]
       [--external-configmap NAME ...] [--require-image-digests] RENDERED.yaml
Exit status 0 when everything passes, 1 with one line per problem otherwise.
"""

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

SCHEMAS = Path(__file__).parent / "schemas"
# (apiVersion group, kind) -> the schema in deploy/schemas that a custom resource must match.
CRD_SCHEMAS = {
    ("keda.sh", "ScaledObject"): SCHEMAS / "keda-scaledobject.schema.json",
    ("keda.sh", "TriggerAuthentication"): SCHEMAS / "keda-triggerauthentication.schema.json",
    ("monitoring.coreos.com", "ServiceMonitor"): SCHEMAS / "prometheus-servicemonitor.schema.json",
    ("monitoring.coreos.com", "PrometheusRule"): SCHEMAS / "prometheus-prometheusrule.schema.json",
}
CRD_OWNERS = {"keda.sh": "KEDA", "monitoring.coreos.com": "Prometheus operator"}
# Served on the API port today (see deploy/README.md): never routed from outside.
INTERNAL_PATHS = ("/metrics", "/docs", "/redoc", "/openapi.json", "/health/live", "/health/ready")
# KEDA's Kafka scaler parameters that the services' MESS_KAFKA_SASL_MECHANISM implies.
KEDA_SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
    "AWS_MSK_IAM": "oauthbearer",
}
PART_OF = "app.kubernetes.io/part-of"
MESS_PORTS = {"query": 8000, "ingest": 8001, "embedder": 8002, "indexer": 8003}

Manifest = dict[str, Any]


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, where: str, problem: str) -> None:
        line = f"{where}: {problem}"
        if line not in self.problems:
            self.problems.append(line)


def load_manifests(path: Path) -> list[Manifest]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise SystemExit(f"{path}: a document is not a Kubernetes object: {str(doc)[:80]}")
    return documents


def ident(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest.get('metadata', {}).get('name', '?')}"


def by_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def names(manifests: Iterable[Manifest], kind: str) -> set[str]:
    return {m["metadata"]["name"] for m in by_kind(manifests, kind)}


# --- schemas -------------------------------------------------------------------


def check_schemas(manifests: list[Manifest], version: str, report: Report) -> None:
    validators = {
        key: jsonschema.Draft202012Validator(json.loads(path.read_text())) for key, path in CRD_SCHEMAS.items()
    }
    for manifest in manifests:
        group = manifest["apiVersion"].split("/")[0] if "/" in manifest["apiVersion"] else ""
        validator = validators.get((group, manifest["kind"]))
        if validator is not None:
            check_custom_resource(manifest, validator, report)
            if manifest["kind"] == "ScaledObject":
                check_scaled_object(manifest, version, report)
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path) or "(root)"
            report.add(ident(manifest), f"schema (Kubernetes {version}): {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            report.add(ident(manifest), f"no schema for {manifest['apiVersion']} {manifest['kind']}: cannot validate")


def check_custom_resource(manifest: Manifest, validator: jsonschema.Draft202012Validator, report: Report) -> None:
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.path)):
        path = ".".join(str(part) for part in error.path) or "(root)"
        owner = CRD_OWNERS.get(manifest["apiVersion"].split("/")[0], manifest["apiVersion"])
        report.add(ident(manifest), f"schema ({owner} {manifest['kind']}): {path}: {error.message}")


def check_scaled_object(manifest: Manifest, version: str, report: Report) -> None:
    # KEDA hands `advanced.horizontalPodAutoscalerConfig.behavior` to the HPA it
    # creates: validate it as exactly that, with the real autoscaling/v2 schema.
    behavior = manifest.get("spec", {}).get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": manifest["metadata"]["name"]},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "maxReplicas": 1,
                "behavior": behavior,
            },
        }
        try:
            kubernetes_validate.validate(hpa, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            report.add(ident(manifest), f"advanced.horizontalPodAutoscalerConfig.behavior: {path}: {error.message}")


# --- the rules mess deploys by ---------------------------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield manifest, manifest["spec"]["template"]["spec"]


def check_references(
    manifests: list[Manifest], external_secrets: set[str], external_config_maps: set[str], report: Report
) -> None:
    """Every ConfigMap, Secret, ServiceAccount and claim a pod uses must exist."""
    config_maps = names(manifests, "ConfigMap") | external_config_maps
    secrets = names(manifests, "Secret") | external_secrets
    accounts = names(manifests, "ServiceAccount") | {"default"}
    claims = names(manifests, "PersistentVolumeClaim")
    for owner, spec in pod_specs(manifests):
        where = ident(owner)
        account = spec.get("serviceAccountName", "default")
        if account not in accounts:
            report.add(where, f"ServiceAccount {account} is not defined")
        for volume in spec.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                report.add(where, f"volume {volume['name']}: ConfigMap {volume['configMap']['name']} is not defined")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                report.add(where, f"volume {volume['name']}: Secret {volume['secret']['secretName']} is not defined")
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in claims:
                report.add(where, f"volume {volume['name']}: PersistentVolumeClaim {claim} is not defined")
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            for source in container.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
                    report.add(where, f"envFrom: ConfigMap {source['configMapRef']['name']} is not defined")
                if "secretRef" in source and source["secretRef"]["name"] not in secrets:
                    report.add(where, f"envFrom: Secret {source['secretRef']['name']} is not defined")
            for variable in container.get("env", []):
                value_from = variable.get("valueFrom", {})
                if "secretKeyRef" in value_from and value_from["secretKeyRef"]["name"] not in secrets:
                    report.add(
                        where, f"env {variable['name']}: Secret {value_from['secretKeyRef']['name']} is not defined"
                    )
                if "configMapKeyRef" in value_from and value_from["configMapKeyRef"]["name"] not in config_maps:
                    name = value_from["configMapKeyRef"]["name"]
                    report.add(where, f"env {variable['name']}: ConfigMap {name} is not defined")


def check_selectors(manifests: list[Manifest], report: Report) -> None:
    """Services and PodDisruptionBudgets must select pods that some workload makes."""
    templates = [m["spec"]["template"].get("metadata", {}).get("labels", {}) for m, _ in pod_specs(manifests)]
    for service in by_kind(manifests, "Service"):
        selector = service["spec"].get("selector", {})
        if not any(selects(selector, labels) for labels in templates):
            report.add(ident(service), f"selector {selector} matches no pod template")
    for budget in by_kind(manifests, "PodDisruptionBudget"):
        selector = budget["spec"].get("selector", {}).get("matchLabels", {})
        if not any(selects(selector, labels) for labels in templates):
            report.add(ident(budget), f"selector {selector} matches no pod template")


def check_autoscaling(manifests: list[Manifest], report: Report) -> None:
    deployments = {m["metadata"]["name"]: m for m in by_kind(manifests, "Deployment")}
    targets: list[tuple[Manifest, str]] = [
        (hpa, hpa["spec"]["scaleTargetRef"]["name"]) for hpa in by_kind(manifests, "HorizontalPodAutoscaler")
    ]
    targets += [(so, so["spec"]["scaleTargetRef"]["name"]) for so in by_kind(manifests, "ScaledObject")]
    for scaler, target in targets:
        if target not in deployments:
            report.add(ident(scaler), f"scales Deployment {target}, which is not defined")
        elif "replicas" in deployments[target]["spec"]:
            report.add(
                ident(deployments[target]),
                f"has spec.replicas while {ident(scaler)} owns the count: every apply would reset it",
            )
    for scaled in by_kind(manifests, "ScaledObject"):
        spec = scaled["spec"]
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            report.add(ident(scaled), "minReplicaCount exceeds maxReplicaCount")


def check_mess_deployment(deployment: Manifest, manifests: list[Manifest], report: Report) -> None:
    where = ident(deployment)
    name = deployment["metadata"]["name"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"].get("metadata", {}).get("labels", {})

    strategy = spec.get("strategy", {})
    rolling = strategy.get("rollingUpdate", {})
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or rolling.get("maxUnavailable") != 0:
        report.add(where, "strategy must be RollingUpdate with maxUnavailable: 0")
    if rolling.get("maxSurge", "25%") in (0, "0", "0%"):
        report.add(where, "maxSurge 0 with maxUnavailable 0 can never roll")

    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        report.add(where, "pod securityContext.runAsNonRoot must be true")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        report.add(where, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    if not pod.get("topologySpreadConstraints"):
        report.add(where, "needs topologySpreadConstraints")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        report.add(where, "must not share the host's network, PID or IPC namespace")

    grace = pod.get("terminationGracePeriodSeconds", 30)
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    containers = pod.get("containers", [])
    if len(containers) != 1:
        report.add(where, f"expected one container, found {len(containers)}")
    for container in containers:
        check_mess_container(f"{where} container {container['name']}", name, container, grace, empty_dirs, report)

    budgets = by_kind(manifests, "PodDisruptionBudget")
    if not any(selects(b["spec"].get("selector", {}).get("matchLabels", {}), labels) for b in budgets):
        report.add(where, "no PodDisruptionBudget selects its pods")
    services = by_kind(manifests, "Service")
    if not any(selects(s["spec"].get("selector", {}), labels) for s in services):
        report.add(where, "no Service selects its pods")


def check_mess_container(
    where: str, service: str, container: dict[str, Any], grace: int, empty_dirs: set[str], report: Report
) -> None:
    security = container.get("securityContext", {})
    if security.get("allowPrivilegeEscalation") is not False:
        report.add(where, "securityContext.allowPrivilegeEscalation must be false")
    if security.get("readOnlyRootFilesystem") is not True:
        report.add(where, "securityContext.readOnlyRootFilesystem must be true")
    if security.get("privileged"):
        report.add(where, "must not be privileged")
    capabilities = security.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
        report.add(where, "securityContext.capabilities must drop ALL and add none")

    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(section, {}):
                report.add(where, f"resources.{section}.{resource} is missing")

    probes = {
        "startupProbe": "/health/live",
        "livenessProbe": "/health/live",
        "readinessProbe": "/health/ready",
    }
    ports = container.get("ports", [])
    port_names = {p.get("name") for p in ports} | {p["containerPort"] for p in ports}
    for probe, path in probes.items():
        http = container.get(probe, {}).get("httpGet")
        if http is None:
            report.add(where, f"{probe} must be an httpGet on {path}")
            continue
        if http.get("path") != path:
            report.add(where, f"{probe} must ask {path}, not {http.get('path')}")
        if http.get("port") not in port_names:
            report.add(where, f"{probe} port {http.get('port')} is not a port of the container")

    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep_s: int | None = None
    if "sleep" in pre_stop:
        sleep_s = int(pre_stop["sleep"]["seconds"])
    elif pre_stop.get("exec", {}).get("command", [None])[0] == "sleep":
        sleep_s = int(pre_stop["exec"]["command"][1])
    if sleep_s is None:
        report.add(where, "needs a preStop sleep so that endpoint removal happens before SIGTERM")
    elif sleep_s >= grace:
        report.add(where, f"preStop sleep ({sleep_s}s) leaves no time to drain in the grace period ({grace}s)")

    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    # A mount path in a manifest, not a temporary file this program writes.
    if mounts.get("/tmp") not in empty_dirs:  # noqa: S108
        report.add(where, "/tmp must be an emptyDir (the root filesystem is read-only)")  # noqa: S108

    if service in MESS_PORTS:
        prefix = f"MESS_{service.upper()}_"
        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        if env.get(prefix + "HOST") != "0.0.0.0":
            report.add(where, f"{prefix}HOST must be 0.0.0.0 (the service binds loopback by default)")
        port = str(MESS_PORTS[service])
        if env.get(prefix + "PORT") != port:
            report.add(where, f"{prefix}PORT must be {port}")
        if not any(str(p["containerPort"]) == port for p in container.get("ports", [])):
            report.add(where, f"containerPort {port} is missing")


# --- rules across objects: Kafka security, network, exposure, images ---------------


def secret_values(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    """{Secret name: {key: decoded value}} of the Secrets in the render (generated ones)."""
    values: dict[str, dict[str, str]] = {}
    for secret in by_kind(manifests, "Secret"):
        decoded = dict(secret.get("stringData", {}))
        for key, data in secret.get("data", {}).items():
            try:
                decoded[key] = base64.b64decode(data).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded[key] = ""
        values[secret["metadata"]["name"]] = decoded
    return values


def container_environment(spec: dict[str, Any], manifests: list[Manifest]) -> dict[str, str]:
    """The literal MESS_* environment of a pod's first container (ConfigMaps through envFrom, then env)."""
    config_maps = {m["metadata"]["name"]: m.get("data", {}) for m in by_kind(manifests, "ConfigMap")}
    container = spec["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps.get(source["configMapRef"]["name"], {}))
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
    return env


def check_keda_authentication(manifests: list[Manifest], external_secrets: set[str], report: Report) -> None:
    """A Kafka trigger must reach the brokers as the services do: same TLS, same SASL family."""
    auths = {m["metadata"]["name"]: m for m in by_kind(manifests, "TriggerAuthentication")}
    secrets = secret_values(manifests)
    known_secrets = set(secrets) | external_secrets
    for auth in auths.values():
        for ref in auth["spec"].get("secretTargetRef", []):
            if ref["name"] not in known_secrets:
                report.add(ident(auth), f"parameter {ref['parameter']}: Secret {ref['name']} is not defined")
            elif ref["name"] in secrets and ref["key"] not in secrets[ref["name"]]:
                report.add(ident(auth), f"parameter {ref['parameter']}: Secret {ref['name']} has no key {ref['key']}")
    deployments = {m["metadata"]["name"]: m for m in by_kind(manifests, "Deployment")}
    for scaled in by_kind(manifests, "ScaledObject"):
        target = deployments.get(scaled["spec"]["scaleTargetRef"]["name"])
        for number, trigger in enumerate(scaled["spec"]["triggers"]):
            if trigger["type"] != "kafka":
                continue
            where = f"{ident(scaled)} trigger {number}"
            params = dict(trigger.get("metadata", {}))
            pod_identity = None
            ref = trigger.get("authenticationRef")
            if ref is not None:
                if ref.get("kind", "TriggerAuthentication") != "TriggerAuthentication":
                    continue  # a ClusterTriggerAuthentication lives outside the overlay
                named = auths.get(ref["name"])
                if named is None:
                    report.add(where, f"authenticationRef: TriggerAuthentication {ref['name']} is not defined")
                    continue
                pod_identity = named["spec"].get("podIdentity", {}).get("provider")
                for secret_ref in named["spec"].get("secretTargetRef", []):
                    value = secrets.get(secret_ref["name"], {}).get(secret_ref["key"])
                    # A Secret created outside git holds what it holds; only rendered values are compared.
                    if value is not None:
                        params[secret_ref["parameter"]] = value
                    else:
                        params.setdefault(secret_ref["parameter"], "(external)")
            if params.get("sasl") == "aws_msk_iam":
                report.add(
                    where,
                    "sasl: aws_msk_iam is the apache-kafka scaler's spelling; the kafka scaler needs "
                    "sasl: oauthbearer with saslTokenProvider: aws_msk_iam",
                )
            if target is None:
                continue
            env = container_environment(target["spec"]["template"]["spec"], manifests)
            protocol = env.get("MESS_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
            mechanism = env.get("MESS_KAFKA_SASL_MECHANISM") or None
            wants_tls = protocol in {"SSL", "SASL_SSL"}
            if wants_tls and params.get("tls") != "enable":
                report.add(where, f"the services use {protocol}, but KEDA's trigger has no tls: enable")
            if not wants_tls and params.get("tls") == "enable":
                report.add(where, f"KEDA's trigger enables TLS, but the services use {protocol}")
            expected_sasl = KEDA_SASL.get(mechanism) if mechanism else None
            sasl = params.get("sasl")
            if sasl in (None, "none"):
                sasl = None
            if sasl != expected_sasl and sasl != "(external)":
                report.add(
                    where,
                    f"KEDA's sasl is {sasl or 'none'}, but the services' mechanism {mechanism} "
                    f"needs {expected_sasl or 'none'}",
                )
            if mechanism == "AWS_MSK_IAM":
                if params.get("saslTokenProvider") != "aws_msk_iam":
                    report.add(where, "AWS_MSK_IAM needs saslTokenProvider: aws_msk_iam")
                if "awsRegion" not in trigger.get("metadata", {}):
                    report.add(where, "AWS_MSK_IAM needs awsRegion in the trigger's metadata")
                if pod_identity not in {"aws", "aws-eks"} and "awsRoleArn" not in params:
                    report.add(
                        where, "AWS_MSK_IAM needs podIdentity provider aws (or awsRoleArn) in its TriggerAuthentication"
                    )


def workload_templates(manifests: list[Manifest]) -> list[tuple[Manifest, dict[str, str]]]:
    return [
        (owner, owner["spec"]["template"].get("metadata", {}).get("labels", {})) for owner, _ in pod_specs(manifests)
    ]


def check_network_policies(manifests: list[Manifest], report: Report) -> None:
    """With any NetworkPolicy: deny by default, and every workload has a policy of its own."""
    policies = by_kind(manifests, "NetworkPolicy")
    if not policies:
        return
    default_deny = [
        p
        for p in policies
        if not p["spec"].get("podSelector")
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not default_deny:
        report.add("(render)", "NetworkPolicies without a default deny (podSelector {}, Ingress and Egress, no rules)")
    own = [p["spec"]["podSelector"].get("matchLabels", {}) for p in policies if p["spec"].get("podSelector")]
    for owner, labels in workload_templates(manifests):
        if not any(selects(selector, labels) for selector in own):
            report.add(
                ident(owner), "no NetworkPolicy of its own selects its pods: with the default deny it can reach nothing"
            )


def exposes(path: str, path_type: str, internal: str) -> bool:
    if path_type == "Exact":
        return path == internal
    prefix = path.rstrip("/")
    return prefix == "" or internal == prefix or internal.startswith(prefix + "/")


def check_ingresses(manifests: list[Manifest], report: Report) -> None:
    """Only public paths go out, over TLS, to a Service port that exists."""
    services = {s["metadata"]["name"]: s for s in by_kind(manifests, "Service")}
    for ingress in by_kind(manifests, "Ingress"):
        where = ident(ingress)
        if not ingress["spec"].get("tls"):
            report.add(where, "has no tls: the APIs take keys and must not be served in clear")
        if "defaultBackend" in ingress["spec"]:
            report.add(where, "a defaultBackend routes every path, the internal ones too")
        for rule in ingress["spec"].get("rules", []):
            for entry in rule.get("http", {}).get("paths", []):
                path = entry.get("path", "/")
                for internal in INTERNAL_PATHS:
                    if exposes(path, entry["pathType"], internal):
                        report.add(where, f"path {path} ({entry['pathType']}) exposes {internal}")
                backend = entry["backend"].get("service")
                if backend is None:
                    continue
                service = services.get(backend["name"])
                if service is None:
                    report.add(where, f"path {path}: Service {backend['name']} is not defined")
                    continue
                port = backend.get("port", {})
                ports = service["spec"].get("ports", [])
                if not any(p.get("name") == port.get("name") or p["port"] == port.get("number") for p in ports):
                    report.add(where, f"path {path}: Service {backend['name']} has no port {port}")


def check_service_monitors(manifests: list[Manifest], report: Report) -> None:
    services = by_kind(manifests, "Service")
    for monitor in by_kind(manifests, "ServiceMonitor"):
        selector = monitor["spec"]["selector"].get("matchLabels", {})
        selected = [s for s in services if selects(selector, s["metadata"].get("labels", {}))]
        if not selected:
            report.add(ident(monitor), f"selector {selector} matches no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            port = endpoint.get("port")
            for service in selected:
                if port is not None and port not in {p.get("name") for p in service["spec"].get("ports", [])}:
                    report.add(ident(monitor), f"Service {service['metadata']['name']} has no port named {port}")


def check_secret_handling(manifests: list[Manifest], report: Report) -> None:
    """Passwords come from files or Secrets, never from a literal value in a manifest or ConfigMap."""
    for owner, spec in pod_specs(manifests):
        if owner["metadata"].get("labels", {}).get(PART_OF) != "mess":
            continue
        for container in spec.get("containers", []):
            for variable in container.get("env", []):
                name = variable["name"]
                if name == "MESS_KAFKA_SASL_PASSWORD":
                    report.add(
                        ident(owner), f"{name}: mount the password and set MESS_KAFKA_SASL_PASSWORD_FILE instead"
                    )
                elif (
                    "value" in variable
                    and not name.endswith("_FILE")
                    and any(word in name for word in ("PASSWORD", "SECRET", "TOKEN"))
                    and variable["value"]
                ):
                    report.add(ident(owner), f"env {name} holds a literal secret")
    for config_map in by_kind(manifests, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            # A *_FILE setting names where a mounted Secret is: the right way.
            if value and not key.endswith("_FILE") and any(word in key for word in ("PASSWORD", "SECRET_ACCESS_KEY")):
                report.add(ident(config_map), f"{key} is a secret in a ConfigMap")


def check_image_digests(manifests: list[Manifest], report: Report) -> None:
    for owner, spec in pod_specs(manifests):
        if owner["metadata"].get("labels", {}).get(PART_OF) != "mess":
            continue
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            if "@sha256:" not in container["image"]:
                report.add(
                    ident(owner), f"container {container['name']}: image {container['image']} is not pinned by digest"
                )


def validate(
    manifests: list[Manifest],
    version: str,
    external_secrets: set[str],
    external_config_maps: frozenset[str] = frozenset(),
    require_digests: bool = False,
) -> list[str]:
    report = Report()
    if not manifests:
        report.add("(render)", "no objects at all")
    check_schemas(manifests, version, report)
    if report.problems:
        # Rules read fields the schema guarantees; a malformed object would only add noise.
        return report.problems
    check_references(manifests, external_secrets, set(external_config_maps), report)
    check_selectors(manifests, report)
    check_autoscaling(manifests, report)
    check_keda_authentication(manifests, external_secrets, report)
    check_network_policies(manifests, report)
    check_ingresses(manifests, report)
    check_service_monitors(manifests, report)
    check_secret_handling(manifests, report)
    if require_digests:
        check_image_digests(manifests, report)
    mess = [d for d in by_kind(manifests, "Deployment") if d["metadata"].get("labels", {}).get(PART_OF) == "mess"]
    if not mess:
        report.add("(render)", f"no Deployment labelled {PART_OF}=mess")
    for deployment in mess:
        check_mess_deployment(deployment, manifests, report)
    return report.problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.32")
    parser.add_argument(
        "--external-secret", action="append", default=[], help="a Secret created outside git (may be referenced)"
    )
    parser.add_argument(
        "--external-configmap", action="append", default=[], help="a ConfigMap created outside git (may be referenced)"
    )
    parser.add_argument(
        "--require-image-digests", action="store_true", help="every mess image must be pinned by digest"
    )
    parser.add_argument("rendered", type=Path)
    args = parser.parse_args(argv)
    manifests = load_manifests(args.rendered)
    problems = validate(
        manifests,
        args.kubernetes_version,
        set(args.external_secret),
        frozenset(args.external_configmap),
        args.require_image_digests,
    )
    for problem in problems:
        print(f"  {args.rendered.name}: {problem}", file=sys.stderr)
    kinds = sorted({m["kind"] for m in manifests})
    if problems:
        print(f"{args.rendered.name}: {len(problems)} problem(s) in {len(manifests)} objects", file=sys.stderr)
        return 1
    version = args.kubernetes_version
    print(f"{args.rendered.name}: {len(manifests)} objects valid for Kubernetes {version} ({', '.join(kinds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
