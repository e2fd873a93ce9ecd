//! Realm: an MMORPG zone server.
//!
//! One process hosts one zone. Pinned mio io threads own the TLS and UDP sockets (`net`), hand packets to the
//! single simulation thread through our Vyukov MPSC queue (`queue`), and everything that blocks runs on a worker
//! pool. See README.md for the architecture picture.
#![deny(unsafe_code)]

pub mod account;
pub mod admin;
pub mod bots;
pub mod cache;
pub mod client;
pub mod config;
pub mod db;
pub mod game_client;
#[allow(unsafe_code)]
pub mod hint;
pub mod limits;
pub mod link;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod net;
#[allow(unsafe_code)]
pub mod os;
pub mod proto;
#[allow(unsafe_code)]
pub mod queue;
pub mod server;
pub mod sim;
#[allow(unsafe_code)]
pub mod sync;
pub mod worker;
