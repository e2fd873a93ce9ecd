#!/usr/bin/env bash
# The whole test suite, as CI runs it: services up (scripts/services.sh), formatting, lints, every test against the
# real PostgreSQL primary + replica + shards and Redis, then the loom model checks. Fails if any service is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
start=$SECONDS

step "services"
eval "$(scripts/services.sh)"
env | grep '^REALM_TEST_' | sed 's/^/    /'

step "tools (promtool, nginx, compose parser, validators, chromium for the browser tests)"
scripts/tools.sh

step "web client: committed bundle is current, unit tests (scripts/web.sh; needs node + npm)"
scripts/web.sh check
scripts/web.sh test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, integration, end-to-end)"
cargo test --workspace --release -- --include-ignored

step "fuzz targets, 30 s each (scripts/fuzz.sh; the longer run is scripts/fuzz.sh 3600)"
scripts/fuzz.sh 30

step "loom model checks"
scripts/loom.sh

step "deployment artefacts (kustomize + schema, compose, promtool rules/tests, nginx -t, hadolint)"
scripts/validate-deploy.sh

step "done in $((SECONDS - start)) s"
