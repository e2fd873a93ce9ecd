#!/usr/bin/env bash
# Build, test, push and deploy a Realm release, then wait for it to be ready and roll back if it is not.
#
# Usage: scripts/deploy.sh [options] <target>
#
# Targets:
#   compose      docker compose on this host (docker-compose.yml + docker-compose.prod.yml); readiness = every
#                zone's /ready on its loopback admin port; rollback = redeploy the previous image tag
#   dev | prod   a Kubernetes overlay (k8s/overlays/<target>) with the image pinned to this release; readiness =
#                kubectl rollout status; rollback = kubectl rollout undo
#
# Options:
#   --tag TAG          image tag (default: git describe --tags --always --dirty)
#   --registry REG     image repository prefix, e.g. registry.example.com/realm (default: $REALM_REGISTRY;
#                      required unless --skip-push)
#   --skip-build       use an image already built and tagged
#   --skip-tests       do not run scripts/test.sh (the full suite) before pushing
#   --skip-push        do not push (a local cluster that shares the host's images, e.g. `compose`)
#   --context CTX      kubectl context (default: the current one)
#   --timeout SECS     readiness timeout (default 300)
#   --dry-run          print every command instead of running it (nothing is built, pushed or deployed)
#   -h, --help         this help
#
# Steps: preflight -> build (docker build) -> test (scripts/test.sh) -> tag + push -> deploy -> wait for
# readiness -> on failure roll back and exit 1. The previous release is recorded before deploying.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TAG=""
REGISTRY=${REALM_REGISTRY:-}
SKIP_BUILD=0
SKIP_TESTS=0
SKIP_PUSH=0
CONTEXT=""
TIMEOUT=300
DRY_RUN=0
TARGET=""
IMAGE_NAME=realm-server
COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.prod.yml)
COMPOSE_STATE=${REALM_DEPLOY_STATE:-$ROOT/.local/deploy}

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
log() { echo "deploy: $*" >&2; }
die() { echo "deploy: ERROR: $*" >&2; exit 1; }
usage_error() { echo "deploy: $*" >&2; echo "Run scripts/deploy.sh --help for usage." >&2; exit 2; }

# run CMD...: the single place commands are executed, so --dry-run shows exactly what would run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    log "+ $*"
    "$@"
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || usage_error "--tag needs a value"; TAG=$2; shift 2 ;;
    --registry) [ $# -ge 2 ] || usage_error "--registry needs a value"; REGISTRY=${2%/}; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --skip-push) SKIP_PUSH=1; shift ;;
    --context) [ $# -ge 2 ] || usage_error "--context needs a value"; CONTEXT=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || usage_error "--timeout needs a value"; TIMEOUT=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage_error "unknown option: $1" ;;
    *) [ -z "$TARGET" ] || usage_error "one target only (got $TARGET and $1)"; TARGET=$1; shift ;;
  esac
done

OVERLAYS=$(find k8s/overlays -mindepth 1 -maxdepth 1 -type d -printf '%f ' | sort)
[ -n "$TARGET" ] || usage_error "missing target: compose, or a Kubernetes overlay: $OVERLAYS"
case "$TARGET" in
  compose) ;;
  *) [ -f "k8s/overlays/$TARGET/kustomization.yaml" ] ||
       usage_error "unknown target '$TARGET': use compose or a Kubernetes overlay: $OVERLAYS" ;;
esac
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || usage_error "--timeout must be a number of seconds, got '$TIMEOUT'"
if [ -z "$TAG" ]; then
  TAG=$(git describe --tags --always --dirty 2>/dev/null || true)
  [ -n "$TAG" ] || die "no --tag given and git describe failed"
fi
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || usage_error "invalid image tag '$TAG'"
if [ "$SKIP_PUSH" = 0 ] && [ -z "$REGISTRY" ]; then
  usage_error "no registry: pass --registry REG (or set REALM_REGISTRY), or --skip-push for a local target"
fi
IMAGE=${REGISTRY:+$REGISTRY/}$IMAGE_NAME
# The backup image (Dockerfile target `backup`: scripts/backup.sh + restore.sh of the same release).
BACKUP_IMAGE=${REGISTRY:+$REGISTRY/}realm-backup
KUBECTL=(kubectl)
[ -z "$CONTEXT" ] || KUBECTL+=(--context "$CONTEXT")

# --- preflight -----------------------------------------------------------------------------------------------------
need() { command -v "$1" >/dev/null || die "$1 is required for this deployment ($2)"; }
compose_cmd() { # docker compose v2 plugin, else the v1 docker-compose
  if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo "docker-compose"; fi
}
if [ "$DRY_RUN" = 0 ]; then
  if [ "$SKIP_BUILD" = 0 ] || [ "$SKIP_PUSH" = 0 ]; then need docker "build/push the image"; fi
  if [ "$TARGET" = compose ]; then
    need curl "readiness checks"
    docker info >/dev/null 2>&1 || die "no Docker engine reachable (docker info failed)"
    [ -f .env ] || die "no .env: copy .env.example to .env and set the secrets"
  else
    need kubectl "apply the overlay"
    "${KUBECTL[@]}" version >/dev/null 2>&1 || die "kubectl cannot reach the cluster${CONTEXT:+ (context $CONTEXT)}"
  fi
  [ -z "$(git status --porcelain 2>/dev/null)" ] || log "warning: the working tree has uncommitted changes (tag $TAG)"
fi
read -r -a COMPOSE <<<"$(compose_cmd)"
if [ "$DRY_RUN" = 1 ]; then
  log "release $IMAGE:$TAG -> $TARGET (dry run: printing the commands, running none)"
else
  log "release $IMAGE:$TAG -> $TARGET"
fi

# --- build, test, push ---------------------------------------------------------------------------------------------
if [ "$SKIP_BUILD" = 0 ]; then
  run docker build --pull --tag "$IMAGE:$TAG" --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --label "org.opencontainers.image.version=$TAG" .
  run docker build --target backup --tag "$BACKUP_IMAGE:$TAG" --label "org.opencontainers.image.version=$TAG" .
fi
if [ "$SKIP_TESTS" = 0 ]; then
  run scripts/test.sh
fi
if [ "$SKIP_PUSH" = 0 ]; then
  run docker push "$IMAGE:$TAG"
  run docker push "$BACKUP_IMAGE:$TAG"
fi

# --- deploy + readiness + rollback -------------------------------------------------------------------------------
wait_ready_compose() { # every zone's /ready answers 200 within the timeout
  local port deadline=$((SECONDS + TIMEOUT))
  # Admin ports as published by docker-compose.yml (loopback), from .env or their defaults.
  local ports=("$(env_value ZONE_A_ADMIN_PORT 9101)" "$(env_value ZONE_B_ADMIN_PORT 9102)")
  for port in "${ports[@]}"; do
    if [ "$DRY_RUN" = 1 ]; then
      run curl -fsS --max-time 2 "http://127.0.0.1:$port/ready"
      continue
    fi
    until curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$port/ready"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "zone on admin port $port not ready after ${TIMEOUT}s"
        return 1
      fi
      sleep 2
    done
    log "zone on admin port $port is ready"
  done
}
env_value() { # env_value NAME DEFAULT: a value from .env, else the default
  local v=""
  [ -f .env ] && v=$(sed -n "s/^$1=//p" .env | tail -n 1)
  echo "${v:-$2}"
}

deploy_compose() {
  local previous_file="$COMPOSE_STATE/compose-current-tag" previous=""
  [ -f "$previous_file" ] && previous=$(cat "$previous_file")
  log "previous release: ${previous:-none recorded}"
  # Schema first, as its own step so a failed migration stops the release before any zone is replaced: the
  # one-shot migrate service (`run` starts its dependencies and leaves them running; its exit code is ours).
  # Pull only what was pushed; with --skip-push the image was built on this host.
  if [ "$SKIP_PUSH" = 0 ]; then
    run env REALM_IMAGE="$IMAGE" REALM_BACKUP_IMAGE="$BACKUP_IMAGE" REALM_TAG="$TAG" "${COMPOSE[@]}" "${COMPOSE_FILES[@]}" pull --quiet
  fi
  run env REALM_IMAGE="$IMAGE" REALM_BACKUP_IMAGE="$BACKUP_IMAGE" REALM_TAG="$TAG" "${COMPOSE[@]}" "${COMPOSE_FILES[@]}" run --rm migrate
  run env REALM_IMAGE="$IMAGE" REALM_BACKUP_IMAGE="$BACKUP_IMAGE" REALM_TAG="$TAG" "${COMPOSE[@]}" "${COMPOSE_FILES[@]}" up -d --no-build --remove-orphans
  if wait_ready_compose; then
    run mkdir -p "$COMPOSE_STATE"
    if [ "$DRY_RUN" = 1 ]; then
      run tee "$previous_file" <<<"$TAG"
      echo "# if a zone is not ready within ${TIMEOUT}s (rollback to the previous tag recorded in $previous_file):"
      run env REALM_IMAGE="$IMAGE" REALM_BACKUP_IMAGE="$BACKUP_IMAGE" REALM_TAG="<previous>" "${COMPOSE[@]}" "${COMPOSE_FILES[@]}" up -d --no-build --remove-orphans
      log "dry run complete"
      return 0
    fi
    echo "$TAG" >"$previous_file"
    log "deployed $IMAGE:$TAG"
    return 0
  fi
  if [ -z "$previous" ]; then
    die "release $TAG is not ready and there is no previous release to roll back to; inspect: ${COMPOSE[*]} logs zone-a zone-b"
  fi
  log "rolling back to $previous"
  run env REALM_IMAGE="$IMAGE" REALM_BACKUP_IMAGE="$BACKUP_IMAGE" REALM_TAG="$previous" "${COMPOSE[@]}" "${COMPOSE_FILES[@]}" up -d --no-build --remove-orphans
  wait_ready_compose || die "rollback to $previous is not ready either: manual intervention needed"
  die "release $TAG failed its readiness check; rolled back to $previous"
}

deploy_k8s() {
  local overlay="$ROOT/k8s/overlays/$TARGET" render ns
  render=$(mktemp -d "${TMPDIR:-/tmp}/realm-deploy.XXXXXX")
  # A throwaway kustomization on top of the overlay pins this release's image, so the repository is not edited.
  cat >"$render/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $overlay
images:
  - name: $IMAGE_NAME
    newName: $IMAGE
    newTag: "$TAG"
  - name: realm-backup
    newName: $BACKUP_IMAGE
    newTag: "$TAG"
EOF
  ns=$(kubectl kustomize "$overlay" | sed -n '/^kind: Namespace$/,/^---$/s/^  name: //p' | head -n 1)
  [ -n "$ns" ] || die "k8s/overlays/$TARGET renders no Namespace"
  if [ "$DRY_RUN" = 1 ]; then
    echo "# $render/kustomization.yaml:"; sed 's/^/#   /' "$render/kustomization.yaml"
  else
    local previous
    previous=$("${KUBECTL[@]}" -n "$ns" get statefulset realm-zone -o jsonpath='{.spec.template.spec.containers[0].image}' 2>/dev/null || true)
    log "previous release in $ns: ${previous:-none (first deploy)}"
  fi
  run "${KUBECTL[@]}" kustomize "$render" -o "$render/manifests.yaml"
  run "${KUBECTL[@]}" apply --server-side --field-manager=realm-deploy -f "$render/manifests.yaml"
  if run "${KUBECTL[@]}" -n "$ns" rollout status statefulset/realm-zone --timeout="${TIMEOUT}s"; then
    rm -rf "$render"
    if [ "$DRY_RUN" = 0 ]; then
      log "deployed $IMAGE:$TAG to $ns"
      return 0
    fi
    echo "# if the rollout does not finish within ${TIMEOUT}s:"
    rollback_k8s "$ns"
    log "dry run complete"
    return 0
  fi
  rm -rf "$render"
  log "rollout of $TAG failed in $ns; rolling back"
  rollback_k8s "$ns"
  die "release $TAG failed its rollout; rolled back in $ns"
}

rollback_k8s() { # rollback_k8s NAMESPACE
  local ns=$1
  run "${KUBECTL[@]}" -n "$ns" rollout undo statefulset/realm-zone
  # A StatefulSet does not replace a pod of the failed revision that never became ready (it waits for it
  # forever); delete the not-ready zone pods so they are recreated from the restored template.
  local broken
  if [ "$DRY_RUN" = 1 ]; then
    run "${KUBECTL[@]}" -n "$ns" get pods -l app.kubernetes.io/component=zone -o jsonpath='<name> <Ready status>'
    broken="<not-ready-pods>"
  else
    broken=$("${KUBECTL[@]}" -n "$ns" get pods -l app.kubernetes.io/component=zone \
      -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
      awk '$2 != "True" {print $1}' | tr '\n' ' ')
  fi
  if [ -n "${broken// /}" ]; then
    # shellcheck disable=SC2086 # a list of pod names
    run "${KUBECTL[@]}" -n "$ns" delete pod $broken --wait=false
  fi
  run "${KUBECTL[@]}" -n "$ns" rollout status statefulset/realm-zone --timeout="${TIMEOUT}s" ||
    die "rollback in $ns did not become ready either: manual intervention needed"
}

case "$TARGET" in
  compose) deploy_compose ;;
  *) deploy_k8s ;;
esac
