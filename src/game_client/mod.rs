//! The player's game client behind `realm-client`: an interactive terminal UI ([`tui`]) and a script runner
//! ([`script`]) over the same pieces — network threads that own the sockets ([`net`]), a pure game state built
//! from their events ([`state`]) and own-movement prediction ([`prediction`]).
//!
//! Threads: the UI (or script) thread, one thread for the TLS control connection and one for the UDP data
//! channel; they share nothing but channels. There is no async runtime.
//!
//! Invariant: the server is authoritative. The client only predicts its own movement and always reconciles it
//! with the server's position and `last_processed_input`; everything else it shows is what the server sent, and
//! nothing the server sends is trusted to be well-formed (no panics on server data).

pub mod net;
pub mod prediction;
pub mod script;
pub mod state;
pub mod tui;

pub use net::{Credentials, Endpoint, NetEvent, NetSession, SessionEnd};
