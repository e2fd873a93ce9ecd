//! The wire protocol: prost types generated from `proto/realm.proto` at build time, plus small helpers.
//!
//! `ControlMessage` travels over TLS in length-prefixed frames (see [`crate::net::framing`]); `DataMessage` is
//! the sealed plaintext of a UDP datagram. Bump [`PROTOCOL_VERSION`] on any incompatible change.

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/realm.v1.rs"));
}

pub use generated::*;

/// The protocol version this build speaks; `Hello.protocol_version` must match it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest UDP payload we send or accept: fits the IPv6 minimum MTU minus headers, so no fragmentation.
pub const MAX_DATAGRAM_BYTES: usize = 1200;

impl ControlMessage {
    /// Wraps a body into an envelope.
    pub fn new(body: control_message::Body) -> Self {
        Self { body: Some(body) }
    }

    /// A short, stable name of the message kind, for logs, metrics and "not allowed in this state" errors.
    pub fn kind(&self) -> &'static str {
        use control_message::Body::*;
        match &self.body {
            None => "unknown",
            Some(Hello(_)) => "hello",
            Some(HelloOk(_)) => "hello_ok",
            Some(Register(_)) => "register",
            Some(Login(_)) => "login",
            Some(TransferLogin(_)) => "transfer_login",
            Some(LoginOk(_)) => "login_ok",
            Some(LoginError(_)) => "login_error",
            Some(Chat(_)) => "chat",
            Some(ChatMessage(_)) => "chat_message",
            Some(CombatEvent(_)) => "combat_event",
            Some(ZoneTransfer(_)) => "zone_transfer",
            Some(Ping(_)) => "ping",
            Some(Pong(_)) => "pong",
            Some(Logout(_)) => "logout",
            Some(Kick(_)) => "kick",
            Some(UdpRebind(_)) => "udp_rebind",
            Some(PlayerStats(_)) => "player_stats",
            Some(Error(_)) => "error",
            Some(Loot(_)) => "loot",
        }
    }
}

impl DataMessage {
    /// Wraps a body into an envelope.
    pub fn new(body: data_message::Body) -> Self {
        Self { body: Some(body) }
    }
}

impl Kick {
    /// A kick with a reason and a human-readable message.
    pub fn new(reason: KickReason, message: impl Into<String>) -> Self {
        Self { reason: reason as i32, message: message.into() }
    }
}
