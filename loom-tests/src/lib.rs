//! Model checks of Realm's lock-free structures.
//!
//! This crate compiles the very same source files as the `realm` crate (`src/sync.rs`, `src/queue/`) without
//! depending on `realm` itself, so that `--cfg realm_loom` does not have to build postgres, tokio and friends
//! under loom. Run the model checks with `scripts/loom.sh`; without `--cfg realm_loom` the same test bodies run
//! once each as plain tests, next to multi-threaded stress tests.
//!
//! Cost on the 2-core dev VM (release): `LOOM_MAX_PREEMPTIONS=2` (the script's default) about 25 s for the whole
//! suite; `LOOM_MAX_PREEMPTIONS=3 scripts/loom.sh` about 5 minutes (worth running before changing an ordering).
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

#[allow(unsafe_code)]
#[path = "../../src/sync.rs"]
pub mod sync;

#[allow(unsafe_code)]
#[path = "../../src/queue/mod.rs"]
pub mod queue;
