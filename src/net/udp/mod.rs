//! The UDP data channel: AEAD-sealed datagrams, endpoint binding and the batched socket path.
//!
//! Everything here except [`batch`] is sans-IO: the io threads hand in received bytes with their source address
//! and a timestamp, and get back a decoded message or a reply to send. [`SessionTable`] is the per-process state
//! (session id -> keys, replay window, bound endpoint; endpoint -> session id) shared by all io threads, because
//! with `SO_REUSEPORT` a client's datagrams may arrive on any io thread's socket. [`DataChannel`] is the same
//! protocol for a single session (the client side, tests, bots).
//!
//! # Datagram format (version 1)
//!
//! Every datagram, in both directions, is:
//!
//! ```text
//! offset  size  field
//! 0       1     kind         0x01 = sealed DataMessage, version 1 (anything else is dropped)
//! 1       8     session_id   big-endian u64, from LoginOk.session_id
//! 9       8     sequence     big-endian u64, per direction, starts at 0, +1 per datagram sent, never reused
//! 17      n     ciphertext   ChaCha20-Poly1305 (RFC 8439) of one protobuf-encoded realm.v1.DataMessage
//! 17+n    16    tag          Poly1305 tag
//! ```
//!
//! * Nonce (12 bytes) = `00 00 00 00` followed by the 8-byte big-endian sequence.
//! * Associated data = the 17 header bytes, so kind, session id and sequence are authenticated.
//! * Key = the client -> server key for datagrams the client sends and the server -> client key for datagrams the
//!   server sends ([`keys`]: RFC 5705 exporter, label `EXPORTER-realm-udp-v1`, context = big-endian session id,
//!   64 bytes, first half client -> server). Because each direction has its own key, equal sequence numbers in the
//!   two directions never share a nonce.
//! * Sizes: at least 33 bytes ([`MIN_DATAGRAM_BYTES`], an empty message), at most 1200
//!   ([`MAX_DATAGRAM_BYTES`]); larger or smaller datagrams are dropped unread.
//! * Replay: the receiver keeps a 256-entry sliding window per direction ([`replay`]). A sequence seen before,
//!   or 256 or more below the highest seen, is dropped. Reordering within the window is fine.
//!
//! # Binding an endpoint
//!
//! 1. After `LoginOk` the client sends a `DataMessage { udp_hello: UdpHello { session_id, padding } }`, padding
//!    chosen so the whole datagram is exactly 1200 bytes ([`MAX_DATAGRAM_BYTES`]); the server drops hellos under
//!    [`MIN_HELLO_BYTES`] (and, like every datagram, over 1200). The client repeats it (new sequence each time,
//!    every 250 ms or so) until a challenge or a welcome arrives.
//! 2. An authentic hello from an address the session is not bound to binds nothing. The server answers that
//!    address with a sealed `UdpChallenge { session_id, challenge }` (16 random bytes, about 60 bytes in all:
//!    always smaller than the hello, so the exchange cannot amplify traffic towards a spoofed address).
//! 3. The client answers with `UdpChallengeResponse { session_id, challenge }` from the same address. A response
//!    from that address with those bytes within `net.udp_challenge_timeout_ms` (default 5 s) binds the address
//!    and the server answers `UdpWelcome { session_id, server_tick }`. Only the latest challenge counts. Someone
//!    who holds the session's keys but not the address (a spoofed source) never sees the challenge and so can
//!    never point the session's stream at a victim.
//! 4. Only the bound address may use the session. A datagram from any other address is dropped (before
//!    decryption) — unless the client asked for a rebind with `UdpRebind` over its live TLS session; then an
//!    authentic hello from a new address is challenged as in 2-3 and the response moves the binding there. An
//!    address already bound to another live session cannot be taken over. A hello from the bound address is
//!    answered with a welcome at once.
//! 5. The server sends only to the bound address, and only while it hears from it: a bound address silent for
//!    `net.udp_silence_timeout_ms` (default 10 s; the server pings every 2 s and clients answer) gets nothing
//!    more until any authentic datagram (a hello, an input, a pong) arrives from it again. The session itself
//!    stays on TLS until it re-binds or times out there.
//!
//! # The invariant a reader must not break
//!
//! **Nothing a peer sends changes state before its AEAD tag has verified, and nothing is allocated for a datagram
//! that is dropped before that.** Cheap checks (size, kind, session, address, replay window) come first, the
//! window is updated only for authentic datagrams from an acceptable address, and protobuf decoding (the first
//! allocation) happens only after authentication. Errors are plain enum values so the drop path formats nothing.

#![warn(missing_docs)]

#[allow(unsafe_code)]
pub mod batch;
mod channel;
pub mod keys;
pub mod replay;
mod table;

pub use self::channel::{DataChannel, DatagramHeader};
pub use self::keys::{DataKeys, Direction, EXPORTER_LABEL, KEYING_MATERIAL_BYTES};
pub use self::replay::{ReplayWindow, REPLAY_WINDOW};
pub use self::table::{BindingLimits, Inbound, SessionTable, UdpSessionInfo, CHALLENGE_BYTES};
pub use crate::proto::MAX_DATAGRAM_BYTES;

/// The only datagram kind of protocol version 1: a sealed `DataMessage`.
pub const KIND_DATA_V1: u8 = 0x01;

/// Bytes before the ciphertext: kind, session id, sequence.
pub const HEADER_BYTES: usize = 1 + 8 + 8;

/// Poly1305 tag length.
pub const TAG_BYTES: usize = 16;

/// The shortest well-formed datagram (an empty plaintext).
pub const MIN_DATAGRAM_BYTES: usize = HEADER_BYTES + TAG_BYTES;

/// The smallest hello datagram the server answers. Clients pad to [`MAX_DATAGRAM_BYTES`]; the server's welcome is
/// a small fraction of this, which is what makes the exchange non-amplifying.
pub const MIN_HELLO_BYTES: usize = 1000;

/// Why a datagram was dropped or could not be sealed.
///
/// Every variant is a unit or carries an already-allocated decode error, so constructing one on the drop path
/// costs nothing; [`UdpError::reason`] gives the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UdpError {
    /// Shorter than a header plus a tag.
    #[error("datagram too short")]
    TooShort,
    /// Longer than [`MAX_DATAGRAM_BYTES`].
    #[error("datagram too large")]
    TooLarge,
    /// The kind byte is not [`KIND_DATA_V1`].
    #[error("unknown datagram kind")]
    UnknownKind,
    /// No registered session has the header's session id.
    #[error("unknown session")]
    UnknownSession,
    /// The sequence number was already received.
    #[error("replayed sequence")]
    Replayed,
    /// The sequence number is below the replay window.
    #[error("sequence too old")]
    TooOld,
    /// The AEAD tag did not verify: wrong key, tampered header or ciphertext.
    #[error("authentication failed")]
    AuthFailed,
    /// Authentic, but not a valid protobuf `DataMessage`.
    #[error("invalid DataMessage: {0}")]
    InvalidMessage(prost::DecodeError),
    /// Authentic, but the envelope has no body (or one this version does not know).
    #[error("empty DataMessage")]
    EmptyMessage,
    /// Authentic, but a message that never travels in this direction (a client sending a snapshot).
    #[error("message not allowed in this direction")]
    UnexpectedMessage,
    /// A non-hello datagram for a session that has no bound endpoint yet, or a send to such a session.
    #[error("session has no bound UDP endpoint")]
    NotBound,
    /// The session is bound to a different address (and no rebind was allowed, or this was not a hello).
    #[error("datagram from an address not bound to the session")]
    WrongAddress,
    /// A hello smaller than [`MIN_HELLO_BYTES`]: answering it could amplify traffic.
    #[error("hello datagram below the minimum size")]
    HelloTooSmall,
    /// A hello whose inner session id differs from the header's.
    #[error("hello session id does not match the header")]
    HelloSessionMismatch,
    /// A hello from an address already bound to another live session.
    #[error("endpoint already bound to another session")]
    EndpointInUse,
    /// `register` with a session id that is already registered.
    #[error("session already registered")]
    SessionExists,
    /// The output buffer cannot hold the sealed datagram.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The sealed message would exceed [`MAX_DATAGRAM_BYTES`].
    #[error("message does not fit one datagram")]
    MessageTooLarge,
    /// The sending sequence reached `u64::MAX`; the session must be re-keyed (log in again).
    #[error("sequence numbers exhausted")]
    SequenceExhausted,
    /// A challenge response from another address than the challenge went to, with the wrong bytes, too late,
    /// or with no challenge outstanding.
    #[error("challenge response does not answer the outstanding challenge")]
    ChallengeFailed,
    /// Not sent: the bound endpoint has been silent for longer than `net.udp_silence_timeout_ms`.
    #[error("bound endpoint is silent")]
    Silent,
}

impl UdpError {
    /// A stable `snake_case` label for the "packets dropped by reason" counter. Never allocates.
    pub fn reason(&self) -> &'static str {
        match self {
            UdpError::TooShort => "too_short",
            UdpError::TooLarge => "too_large",
            UdpError::UnknownKind => "unknown_kind",
            UdpError::UnknownSession => "unknown_session",
            UdpError::Replayed => "replayed",
            UdpError::TooOld => "too_old",
            UdpError::AuthFailed => "auth_failed",
            UdpError::InvalidMessage(_) => "invalid_message",
            UdpError::EmptyMessage => "empty_message",
            UdpError::UnexpectedMessage => "unexpected_message",
            UdpError::NotBound => "not_bound",
            UdpError::WrongAddress => "wrong_address",
            UdpError::HelloTooSmall => "hello_too_small",
            UdpError::HelloSessionMismatch => "hello_session_mismatch",
            UdpError::EndpointInUse => "endpoint_in_use",
            UdpError::SessionExists => "session_exists",
            UdpError::BufferTooSmall => "buffer_too_small",
            UdpError::MessageTooLarge => "message_too_large",
            UdpError::SequenceExhausted => "sequence_exhausted",
            UdpError::ChallengeFailed => "challenge_failed",
            UdpError::Silent => "silent",
        }
    }

    /// Every label [`UdpError::reason`] can return, so a metrics registry can create all series up front.
    pub const REASONS: &'static [&'static str] = &[
        "too_short",
        "too_large",
        "unknown_kind",
        "unknown_session",
        "replayed",
        "too_old",
        "auth_failed",
        "invalid_message",
        "empty_message",
        "unexpected_message",
        "not_bound",
        "wrong_address",
        "hello_too_small",
        "hello_session_mismatch",
        "endpoint_in_use",
        "session_exists",
        "buffer_too_small",
        "message_too_large",
        "sequence_exhausted",
        "challenge_failed",
        "silent",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_label_is_listed_and_unique() {
        let all = [
            UdpError::TooShort,
            UdpError::TooLarge,
            UdpError::UnknownKind,
            UdpError::UnknownSession,
            UdpError::Replayed,
            UdpError::TooOld,
            UdpError::AuthFailed,
            UdpError::InvalidMessage(prost::DecodeError::new("x")),
            UdpError::EmptyMessage,
            UdpError::UnexpectedMessage,
            UdpError::NotBound,
            UdpError::WrongAddress,
            UdpError::HelloTooSmall,
            UdpError::HelloSessionMismatch,
            UdpError::EndpointInUse,
            UdpError::SessionExists,
            UdpError::BufferTooSmall,
            UdpError::MessageTooLarge,
            UdpError::SequenceExhausted,
            UdpError::ChallengeFailed,
            UdpError::Silent,
        ];
        let labels: Vec<_> = all.iter().map(UdpError::reason).collect();
        assert_eq!(labels, UdpError::REASONS);
        let unique: std::collections::HashSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), labels.len());
    }
}
