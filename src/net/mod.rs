//! Networking: the io layer. Framing of the TLS control channel, the sans-IO TLS session core, the UDP data
//! channel, the session table and the mio io threads. No game logic lives here: packets go to the simulation
//! thread through the queue.

pub mod framing;
pub mod io;
pub mod session;
pub mod tls;
pub mod udp;
pub mod web;
