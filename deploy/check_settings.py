"""Check the environment each deployment gives a service against that service's own Settings.

pydantic-settings ignores a variable it does not know (``extra="ignore"``), so a
misspelt key in a ConfigMap or in docker-compose.yml would silently leave the
default in force. For every mess service in a rendered overlay (or in the
output of ``docker compose config``) this collects the environment the
container would see (ConfigMaps through ``envFrom``, ``env`` values, and a
stand-in for each Secret), then, in a clean subprocess with only that
environment (one interpreter for all of them), loads ``mess.<service>.config.Settings``: every ``MESS_*`` name must
be one of its fields or one of ``StackSettings``', and the settings must
validate (so a value out of range fails here, not at the pod's start-up).

Usage: python check_settings.py [--k8s RENDERED.yaml ...] [--compose CONFIG.yml ...]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

SERVICES = ("ingest", "embedder", "indexer", "query")

# What a Secret key stands for when the real value is not in git: plausible
# values that pass the services' own validation. (The ingest API keys come from
# a Secret volume, read at start-up: only the file's path is a setting.)
SECRET_STAND_INS = {
    "dsn": "postgresql://mess:stand-in@postgres.example:5432/mess",
    "postgres-dsn": "postgresql://mess:stand-in@postgres.example:5432/mess",
    "redis-url": "redis://redis.example:6379/0",
    "kafka-bootstrap": "kafka-1.example:9092,kafka-2.example:9092",
    "access-key-id": "stand-in",
    "secret-access-key": "stand-in-secret",
}

# Runs in one clean subprocess; for each case it sets the environment to exactly
# the container's (pydantic-settings reads os.environ when Settings() is built).
PROBE = """
import importlib, json, os, sys
from pydantic import ValidationError
from mess.runtime.endpoints import StackSettings
answers = []
for service, env in json.load(sys.stdin):
    config = importlib.import_module(f"mess.{service}.config")
    prefix = f"MESS_{service.upper()}_"
    known = {prefix + name.upper() for name in config.Settings.model_fields}
    known |= {"MESS_" + name.upper() for name in StackSettings.model_fields}
    os.environ.clear()
    os.environ.update(env)
    # A *_FILE setting names a file the pod mounts from a Secret; stand one in so the settings that
    # read theirs at start (tokens) load as they would in the pod.
    for name, value in env.items():
        if name.endswith("_FILE") and value.startswith("/") and not os.path.exists(value):
            import tempfile
            handle, stand_in = tempfile.mkstemp(prefix="mess-stand-in-")
            os.write(handle, b"stand-in-secret-" + b"x" * 48)
            os.close(handle)
            os.environ[name] = stand_in
    problems = [f"{name} is not a setting of {service}: it would be ignored" for name in sorted(env)
                if name.startswith("MESS_") and name not in known]
    try:
        config.Settings()
    except ValidationError as error:
        for detail in error.errors():
            where = ".".join(str(part) for part in detail["loc"]) or "settings"
            problems.append(f"{where}: {detail['msg']}")
    answers.append(problems)
print(json.dumps(answers))
"""


def container_env_k8s(deployment: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps.get(source["configMapRef"]["name"], {}))
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            key = variable["valueFrom"]["secretKeyRef"]["key"]
            env[variable["name"]] = SECRET_STAND_INS.get(key, "stand-in")
        elif "fieldRef" in variable.get("valueFrom", {}):
            env[variable["name"]] = "stand-in-pod-field"
    return env


def environments_k8s(rendered: Path) -> dict[str, dict[str, str]]:
    objects = [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    return {
        o["metadata"]["name"]: container_env_k8s(o, config_maps)
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] in SERVICES
    }


def environments_compose(config: Path) -> dict[str, dict[str, str]]:
    services = yaml.safe_load(config.read_text())["services"]
    environments: dict[str, dict[str, str]] = {}
    for name in SERVICES:
        environment = services.get(name, {}).get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        environments[name] = {key: "" if value is None else str(value) for key, value in environment.items()}
    return environments


def problems_of(cases: list[tuple[str, dict[str, str]]]) -> list[list[str]]:
    """The problems of each (service, environment) case, loaded in one clean interpreter."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    result = subprocess.run(  # noqa: S603 - our own interpreter and probe
        [sys.executable, "-c", PROBE], input=json.dumps(cases), env=clean, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        message = f"could not load the services' settings (is the workspace installed?): {result.stderr.strip()[-400:]}"
        return [[message] for _ in cases]
    answers: list[list[str]] = json.loads(result.stdout)
    return answers


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--k8s", type=Path, action="append", default=[], help="a rendered overlay")
    parser.add_argument(
        "--compose", type=Path, action="append", default=[], help="the output of `docker compose config`"
    )
    args = parser.parse_args(argv)
    sources = [(path.name, environments_k8s(path)) for path in args.k8s]
    sources += [(path.name, environments_compose(path)) for path in args.compose]
    cases = [(service, env) for _, environments in sources for service, env in environments.items()]
    answers = iter(problems_of(cases))
    failed = False
    for source, environments in sources:
        missing = [service for service in SERVICES if service not in environments]
        for service in missing:
            print(f"  {source}: no {service} service", file=sys.stderr)
        failed |= bool(missing)
        checked = []
        for service, env in environments.items():
            for problem in next(answers):
                print(f"  {source}: {service}: {problem}", file=sys.stderr)
                failed = True
            checked.append(f"{service} ({sum(1 for k in env if k.startswith('MESS_'))} MESS_* variables)")
        print(f"{source}: settings load: {', '.join(checked)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
