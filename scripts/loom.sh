#!/usr/bin/env bash
# Model-checks the lock-free code (src/sync.rs, src/queue/) with loom through the realm-loom-tests crate.
# Separate target dir: --cfg realm_loom must not invalidate the normal build cache.
# Preemption bound 2 keeps the suite at ~25 s on 2 cores; LOOM_MAX_PREEMPTIONS=3 scripts/loom.sh takes ~5 min.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
RUSTFLAGS="--cfg realm_loom" cargo test -p realm-loom-tests --release --target-dir target/loom "$@"
