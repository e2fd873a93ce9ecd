//! The simulation: one thread, a fixed tick, the whole world of one zone.
//!
//! [`game::Simulation`] is the pure, deterministic world (commands in, outputs out); [`tick`] paces it at a fixed
//! rate and measures every tick; the sim thread that connects it to the io threads and the worker pool lives in
//! [`runner`]. The invariant a reader must not break: nothing reachable from the simulation thread blocks — it
//! holds no database or Redis handle, only a job sender (see `crate::worker`).

pub mod aoi;
pub mod chat;
pub mod game;
pub mod rng;
pub mod runner;
pub mod tick;
pub mod world;
pub mod zone;

#[cfg(test)]
mod tests;

pub use game::{EncodedSnapshot, Output, PlayerRecord, PlayerSpawn, Simulation};
