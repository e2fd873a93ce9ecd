//! The simulation: one thread, a fixed tick, the whole world of one zone.
//!
//! [`game::Simulation`] is the pure, deterministic world (commands in, outputs out); [`sessions`] is the players'
//! session machine (logins, saves, resumption, transfers, the drain), also sans-IO; [`jobs`] is the work it hands
//! to the worker pool, as data; [`tick`] paces the tick; [`runner`] is the loop that connects them to the io
//! threads (through `crate::link`) and the worker pool. The invariant a reader must not break: nothing reachable
//! from the simulation thread blocks — it holds no database or Redis handle, only job senders (see
//! `crate::worker`).

pub mod aoi;
pub mod chat;
pub mod delta;
pub mod game;
pub mod jobs;
pub mod phase;
pub mod rng;
pub mod runner;
pub mod sessions;
pub mod tick;
pub mod world;
pub mod zone;

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod tests;

pub use game::{EncodedSnapshot, Output, PlayerRecord, PlayerSpawn, Simulation};
pub use phase::Phase;
