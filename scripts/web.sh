#!/usr/bin/env bash
# The browser client (web/): build it, check that the committed bundle is current, run its unit tests.
#
#   scripts/web.sh build   npm ci, generate the protobuf code from proto/realm.proto, type-check, bundle into web/dist/
#   scripts/web.sh check   rebuild into a temporary directory and fail if it differs from the committed web/dist/
#                          (CI: the server embeds web/dist/ with include_bytes!, so a stale bundle ships stale code)
#   scripts/web.sh test    unit tests of the client's pure logic (node's test runner), no server needed
#   scripts/web.sh smoke   load web/dist/ in headless Chromium (/usr/bin/chromium, `apt-get install chromium`) under
#                          the gateway's CSP; fails on any console error or CSP violation; screenshots in web/out/
#
# web/dist/ is committed so that the Rust server builds on a fresh machine with cargo alone, without node or npm.
set -euo pipefail
cd "$(dirname "$0")/../web"

deps() {
  # npm ci installs exactly package-lock.json; skip it when node_modules already matches the lock file.
  if [[ ! -f node_modules/.package-lock.json ]] || ! cmp -s package-lock.json node_modules/.web-sh-lock; then
    npm ci --no-audit --no-fund
    cp package-lock.json node_modules/.web-sh-lock
  fi
}

case "${1:-}" in
  build)
    deps
    node tools/build.mjs --outdir dist
    ;;
  check)
    deps
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    node tools/build.mjs --outdir "$tmp/dist"
    if ! diff -r dist "$tmp/dist" >"$tmp/diff.txt"; then
      head -c 4000 "$tmp/diff.txt"
      echo
      echo "web/dist/ is not what the sources build: run scripts/web.sh build and commit web/dist/" >&2
      exit 1
    fi
    echo "web/dist/ is current"
    ;;
  test)
    deps
    node tools/gen-proto.mjs
    node tools/test.mjs
    ;;
  smoke)
    deps
    node tools/screenshot.mjs "${@:2}"
    ;;
  *)
    echo "usage: $0 build|check|test|smoke" >&2
    exit 2
    ;;
esac
