//! Sealing and opening datagrams: the header codec, the per-direction crypto, and [`DataChannel`], one session's
//! both directions for a single owner (the client, bots, tests).
//!
//! The invariant a reader must not break: **a (key, sequence) pair seals at most one datagram.** The sending
//! sequence only moves forward and is never reset for the lifetime of the keys; sealing fails rather than wraps.

use prost::Message;
use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};

use super::keys::{DataKeys, Direction};
use super::replay::ReplayWindow;
use super::{UdpError, HEADER_BYTES, KIND_DATA_V1, MAX_DATAGRAM_BYTES, MIN_DATAGRAM_BYTES, TAG_BYTES};
use crate::proto::{data_message::Body, DataMessage, UdpChallenge, UdpChallengeResponse, UdpHello};

/// The cleartext header of a datagram (authenticated as AEAD associated data, not encrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramHeader {
    /// Session the datagram belongs to.
    pub session_id: u64,
    /// Per-direction sequence number; also the AEAD nonce.
    pub sequence: u64,
}

impl DatagramHeader {
    /// Validates the size and kind of `datagram` and reads its header. No decryption, no allocation.
    #[inline]
    pub fn parse(datagram: &[u8]) -> Result<DatagramHeader, UdpError> {
        if datagram.len() < MIN_DATAGRAM_BYTES {
            return Err(UdpError::TooShort);
        }
        if datagram.len() > MAX_DATAGRAM_BYTES {
            return Err(UdpError::TooLarge);
        }
        if datagram[0] != KIND_DATA_V1 {
            return Err(UdpError::UnknownKind);
        }
        let mut session_id = [0u8; 8];
        session_id.copy_from_slice(&datagram[1..9]);
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&datagram[9..HEADER_BYTES]);
        Ok(DatagramHeader { session_id: u64::from_be_bytes(session_id), sequence: u64::from_be_bytes(sequence) })
    }

    fn write(&self, out: &mut [u8]) {
        out[0] = KIND_DATA_V1;
        out[1..9].copy_from_slice(&self.session_id.to_be_bytes());
        out[9..HEADER_BYTES].copy_from_slice(&self.sequence.to_be_bytes());
    }
}

/// `00 00 00 00 || sequence (big-endian)`.
fn nonce(sequence: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[4..].copy_from_slice(&sequence.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The sending half of one direction: a key and the session id it stamps. Stateless; the caller owns the
/// sequence counter (a plain `u64` in [`DataChannel`], an atomic in the session table).
pub(crate) struct Sealer {
    key: LessSafeKey,
    session_id: u64,
}

/// The plaintext of a datagram: a message encoded while sealing, or a `DataMessage` encoded beforehand (the
/// simulation assembles snapshots from per-tick entity encodings, so the io thread only encrypts them).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Plaintext<'a> {
    Message(&'a DataMessage),
    Encoded(&'a [u8]),
}

impl Plaintext<'_> {
    fn len(&self) -> usize {
        match self {
            Plaintext::Message(msg) => msg.encoded_len(),
            Plaintext::Encoded(bytes) => bytes.len(),
        }
    }

    /// Writes the plaintext into `body`, which is exactly [`Plaintext::len`] bytes.
    fn write(&self, body: &mut [u8]) -> Result<(), UdpError> {
        match self {
            Plaintext::Message(msg) => {
                let mut cursor: &mut [u8] = body;
                msg.encode(&mut cursor).map_err(|_| UdpError::BufferTooSmall)
            }
            Plaintext::Encoded(bytes) => {
                body.copy_from_slice(bytes);
                Ok(())
            }
        }
    }
}

impl Sealer {
    pub(crate) fn new(keys: &DataKeys, direction: Direction, session_id: u64) -> Self {
        Self { key: keys.aead_key(direction), session_id }
    }

    /// The sealed size of `msg`, or an error when it cannot fit one datagram.
    #[inline]
    pub(crate) fn sealed_len(msg: Plaintext<'_>) -> Result<usize, UdpError> {
        let total = HEADER_BYTES + msg.len() + TAG_BYTES;
        if total > MAX_DATAGRAM_BYTES {
            return Err(UdpError::MessageTooLarge);
        }
        Ok(total)
    }

    /// Encodes (or copies) `msg` straight into `out` after the header and encrypts it in place. `sequence` must
    /// never have been used with this key before.
    pub(crate) fn seal(&self, sequence: u64, msg: Plaintext<'_>, out: &mut [u8]) -> Result<usize, UdpError> {
        let total = Self::sealed_len(msg)?;
        if out.len() < total {
            return Err(UdpError::BufferTooSmall);
        }
        let body_len = total - HEADER_BYTES - TAG_BYTES;
        let (header, rest) = out[..total].split_at_mut(HEADER_BYTES);
        DatagramHeader { session_id: self.session_id, sequence }.write(header);
        let (body, tag_out) = rest.split_at_mut(body_len);
        msg.write(body)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(sequence), Aad::from(&*header), body)
            .map_err(|_| UdpError::MessageTooLarge)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(total)
    }
}

/// The receiving half of one direction: a key and the replay window.
pub(crate) struct Opener {
    key: LessSafeKey,
    pub(crate) window: ReplayWindow,
}

impl Opener {
    pub(crate) fn new(keys: &DataKeys, direction: Direction) -> Self {
        Self { key: keys.aead_key(direction), window: ReplayWindow::new() }
    }

    /// Replay check, then authentication and decryption in place. Returns the plaintext (inside `datagram`).
    /// Does **not** commit the sequence: the caller does that once it accepts the datagram.
    #[inline]
    pub(crate) fn authenticate<'a>(
        &self,
        header: &DatagramHeader,
        datagram: &'a mut [u8],
    ) -> Result<&'a [u8], UdpError> {
        self.window.check(header.sequence)?;
        let (aad, sealed) = datagram.split_at_mut(HEADER_BYTES);
        match self.key.open_in_place(nonce(header.sequence), Aad::from(&*aad), sealed) {
            Ok(plaintext) => Ok(plaintext),
            Err(_) => Err(UdpError::AuthFailed),
        }
    }
}

/// Both directions of one session for a single owner: seals with the local direction's key, opens the peer's.
///
/// Used by the client (and bots and tests); the server keeps the same state inside [`super::SessionTable`] so that
/// several io threads can share it.
pub struct DataChannel {
    session_id: u64,
    sealer: Sealer,
    next_sequence: u64,
    opener: Opener,
}

impl DataChannel {
    /// The client's side: seals client -> server, opens server -> client.
    pub fn client(session_id: u64, keys: &DataKeys) -> Self {
        Self::new(session_id, keys, Direction::ClientToServer, Direction::ServerToClient)
    }

    /// The server's side of a single session (the shared server state is [`super::SessionTable`]).
    pub fn server(session_id: u64, keys: &DataKeys) -> Self {
        Self::new(session_id, keys, Direction::ServerToClient, Direction::ClientToServer)
    }

    fn new(session_id: u64, keys: &DataKeys, send: Direction, receive: Direction) -> Self {
        Self {
            session_id,
            sealer: Sealer::new(keys, send, session_id),
            next_sequence: 0,
            opener: Opener::new(keys, receive),
        }
    }

    /// The session this channel belongs to.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The sequence number the next sealed datagram will carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The receive side's replay window (for diagnostics and tests).
    pub fn replay_window(&self) -> &ReplayWindow {
        &self.opener.window
    }

    /// Seals `msg` into `out` (header + ciphertext + tag) and returns the datagram length. Encodes directly into
    /// `out`; allocates nothing. The sequence advances only when sealing succeeds.
    pub fn seal(&mut self, msg: &DataMessage, out: &mut [u8]) -> Result<usize, UdpError> {
        if self.next_sequence == u64::MAX {
            return Err(UdpError::SequenceExhausted);
        }
        let len = self.sealer.seal(self.next_sequence, Plaintext::Message(msg), out)?;
        self.next_sequence += 1;
        Ok(len)
    }

    /// Seals a `UdpHello` padded so the datagram is exactly [`MAX_DATAGRAM_BYTES`] long (client side). Send it
    /// until a `UdpWelcome` arrives.
    pub fn seal_hello(&mut self, out: &mut [u8]) -> Result<usize, UdpError> {
        let hello = padded_hello(self.session_id, MAX_DATAGRAM_BYTES);
        self.seal(&hello, out)
    }

    /// Seals the answer to a server's `UdpChallenge` (client side): send it from the address the challenge came
    /// to; the server binds that address and answers `UdpWelcome`.
    pub fn seal_challenge_response(&mut self, challenge: &UdpChallenge, out: &mut [u8]) -> Result<usize, UdpError> {
        let response = DataMessage::new(Body::UdpChallengeResponse(UdpChallengeResponse {
            session_id: self.session_id,
            challenge: challenge.challenge.clone(),
        }));
        self.seal(&response, out)
    }

    /// Opens a received datagram in place: header checks, replay check (before any crypto), authentication and
    /// decryption, window update (only once authentic), then protobuf decoding.
    pub fn open(&mut self, datagram: &mut [u8]) -> Result<DataMessage, UdpError> {
        let header = DatagramHeader::parse(datagram)?;
        if header.session_id != self.session_id {
            return Err(UdpError::UnknownSession);
        }
        let plaintext = self.opener.authenticate(&header, datagram)?;
        self.opener.window.commit(header.sequence);
        let msg = DataMessage::decode(plaintext).map_err(UdpError::InvalidMessage)?;
        if msg.body.is_none() {
            return Err(UdpError::EmptyMessage);
        }
        Ok(msg)
    }
}

impl std::fmt::Debug for DataChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataChannel")
            .field("session_id", &self.session_id)
            .field("next_sequence", &self.next_sequence)
            .field("replay_window", &self.opener.window)
            .finish_non_exhaustive()
    }
}

/// A hello whose sealed datagram is exactly `datagram_len` bytes (or as close as the varint lengths allow, never
/// longer).
pub(crate) fn padded_hello(session_id: u64, datagram_len: usize) -> DataMessage {
    let overhead = HEADER_BYTES + TAG_BYTES;
    let mut padding = datagram_len.saturating_sub(overhead);
    loop {
        let msg = DataMessage::new(Body::UdpHello(UdpHello { session_id, padding: vec![0; padding] }));
        let len = overhead + msg.encoded_len();
        if len <= datagram_len || padding == 0 {
            return msg;
        }
        padding -= (len - datagram_len).min(padding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Input, Snapshot, Vec2};

    fn keys(seed: u8) -> DataKeys {
        let mut material = [0u8; 64];
        for (i, b) in material.iter_mut().enumerate() {
            *b = seed.wrapping_add(i as u8);
        }
        DataKeys::from_keying_material(&material)
    }

    fn pair() -> (DataChannel, DataChannel) {
        let k = keys(7);
        (DataChannel::client(42, &k), DataChannel::server(42, &k))
    }

    fn input(sequence: u32) -> DataMessage {
        DataMessage::new(Body::Input(Input {
            sequence,
            move_dir: Some(Vec2 { x: 1.0, y: -0.5 }),
            ability: 3,
            target_entity: 99,
            client_time_us: 123_456,
            snapshot_ack: 0,
        }))
    }

    #[test]
    fn sealed_input_opens_to_the_same_message() {
        let (mut client, mut server) = pair();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&input(1), &mut buf).unwrap();
        assert_eq!(server.open(&mut buf[..n]).unwrap(), input(1));
    }

    #[test]
    fn header_is_kind_session_and_sequence_in_big_endian() {
        let (mut client, _) = pair();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        client.seal(&input(1), &mut buf).unwrap();
        let n = client.seal(&input(2), &mut buf).unwrap();
        assert_eq!(buf[0], KIND_DATA_V1);
        assert_eq!(buf[1..9], 42u64.to_be_bytes());
        assert_eq!(buf[9..17], 1u64.to_be_bytes());
        assert_eq!(n, HEADER_BYTES + input(2).encoded_len() + TAG_BYTES);
        assert_eq!(DatagramHeader::parse(&buf[..n]).unwrap(), DatagramHeader { session_id: 42, sequence: 1 });
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let (mut client, _) = pair();
        let msg = input(77);
        let plain = msg.encode_to_vec();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&msg, &mut buf).unwrap();
        assert_ne!(&buf[HEADER_BYTES..n - TAG_BYTES], &plain[..]);
    }

    #[test]
    fn replayed_datagram_is_dropped() {
        let (mut client, mut server) = pair();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&input(1), &mut buf).unwrap();
        let copy = buf;
        server.open(&mut buf[..n]).unwrap();
        let mut again = copy;
        assert_eq!(server.open(&mut again[..n]), Err(UdpError::Replayed));
    }

    #[test]
    fn sequence_older_than_the_window_is_dropped() {
        let (mut client, mut server) = pair();
        let mut old = [0u8; MAX_DATAGRAM_BYTES];
        let old_len = client.seal(&input(0), &mut old).unwrap();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        for i in 1..=256 {
            let n = client.seal(&input(i), &mut buf).unwrap();
            if i == 256 {
                server.open(&mut buf[..n]).unwrap();
            }
        }
        assert_eq!(server.open(&mut old[..old_len]), Err(UdpError::TooOld));
    }

    #[test]
    fn out_of_order_datagrams_within_the_window_are_accepted_once() {
        let (mut client, mut server) = pair();
        let mut sealed = Vec::new();
        for i in 0..5 {
            let mut buf = [0u8; MAX_DATAGRAM_BYTES];
            let n = client.seal(&input(i), &mut buf).unwrap();
            sealed.push((buf, n));
        }
        for &i in &[4usize, 1, 3, 0, 2] {
            let (mut buf, n) = sealed[i];
            assert_eq!(server.open(&mut buf[..n]).unwrap(), input(i as u32));
        }
        for (mut buf, n) in sealed {
            assert_eq!(server.open(&mut buf[..n]), Err(UdpError::Replayed));
        }
    }

    #[test]
    fn tampered_ciphertext_fails_authentication_and_does_not_advance_the_window() {
        let (mut client, mut server) = pair();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&input(1), &mut buf).unwrap();
        let original = buf;
        for pos in [HEADER_BYTES, n / 2, n - 1] {
            let mut tampered = original;
            tampered[pos] ^= 0x01;
            assert_eq!(server.open(&mut tampered[..n]), Err(UdpError::AuthFailed), "flip at {pos}");
        }
        assert_eq!(server.replay_window().highest(), None);
        let mut genuine = original;
        assert_eq!(server.open(&mut genuine[..n]).unwrap(), input(1));
    }

    #[test]
    fn tampered_header_sequence_fails_authentication_and_does_not_advance_the_window() {
        let (mut client, mut server) = pair();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&input(1), &mut buf).unwrap();
        let original = buf;
        let mut tampered = original;
        tampered[16] ^= 0x80; // sequence 0 -> 128
        assert_eq!(server.open(&mut tampered[..n]), Err(UdpError::AuthFailed));
        assert_eq!(server.replay_window().highest(), None);
        let mut genuine = original;
        assert!(server.open(&mut genuine[..n]).is_ok());
    }

    #[test]
    fn datagram_sealed_with_the_other_direction_key_fails_authentication() {
        let (mut client, _) = pair();
        let mut client_b = DataChannel::client(42, &keys(7));
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&input(1), &mut buf).unwrap();
        // A client opening its own direction's datagram uses the server -> client key: reflection is rejected.
        assert_eq!(client_b.open(&mut buf[..n]), Err(UdpError::AuthFailed));
    }

    #[test]
    fn datagram_from_another_session_is_unknown() {
        let k = keys(7);
        let mut client = DataChannel::client(41, &k);
        let mut server = DataChannel::server(42, &k);
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&input(1), &mut buf).unwrap();
        assert_eq!(server.open(&mut buf[..n]), Err(UdpError::UnknownSession));
    }

    #[test]
    fn header_parse_rejects_short_long_and_unknown_kind() {
        assert_eq!(DatagramHeader::parse(&[KIND_DATA_V1; MIN_DATAGRAM_BYTES - 1]), Err(UdpError::TooShort));
        assert_eq!(DatagramHeader::parse(&[KIND_DATA_V1; MAX_DATAGRAM_BYTES + 1]), Err(UdpError::TooLarge));
        assert_eq!(DatagramHeader::parse(&[0x02; 64]), Err(UdpError::UnknownKind));
        assert!(DatagramHeader::parse(&[KIND_DATA_V1; MIN_DATAGRAM_BYTES]).is_ok());
    }

    #[test]
    fn message_larger_than_a_datagram_is_refused_and_sequence_is_not_consumed() {
        let (mut client, _) = pair();
        let big = DataMessage::new(Body::UdpHello(UdpHello { session_id: 42, padding: vec![0; MAX_DATAGRAM_BYTES] }));
        let mut buf = [0u8; 2 * MAX_DATAGRAM_BYTES];
        assert_eq!(client.seal(&big, &mut buf), Err(UdpError::MessageTooLarge));
        let mut small = [0u8; 20];
        assert_eq!(client.seal(&input(1), &mut small), Err(UdpError::BufferTooSmall));
        assert_eq!(client.next_sequence(), 0);
    }

    #[test]
    fn hello_is_padded_to_exactly_the_maximum_datagram() {
        let (mut client, mut server) = pair();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal_hello(&mut buf).unwrap();
        assert_eq!(n, MAX_DATAGRAM_BYTES);
        match server.open(&mut buf[..n]).unwrap().body {
            Some(Body::UdpHello(h)) => assert_eq!(h.session_id, 42),
            other => panic!("expected a hello, got {other:?}"),
        }
        for target in [super::super::MIN_HELLO_BYTES, 130, 200, 16_400] {
            let len = HEADER_BYTES + TAG_BYTES + padded_hello(u64::MAX, target).encoded_len();
            assert!(len <= target && len + 2 >= target, "target {target} got {len}");
        }
    }

    #[test]
    fn snapshot_round_trips_server_to_client() {
        let (mut client, mut server) = pair();
        let snapshot = DataMessage::new(Body::Snapshot(Snapshot {
            tick: 9,
            last_processed_input: 3,
            input_client_time_us: 5,
            entities: vec![],
            total_visible: 0,
        }));
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = server.seal(&snapshot, &mut buf).unwrap();
        assert_eq!(client.open(&mut buf[..n]).unwrap(), snapshot);
    }

    #[test]
    fn authentic_empty_envelope_is_rejected() {
        let (mut client, mut server) = pair();
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(&DataMessage { body: None }, &mut buf).unwrap();
        assert_eq!(n, MIN_DATAGRAM_BYTES);
        assert_eq!(server.open(&mut buf[..n]), Err(UdpError::EmptyMessage));
    }
}
