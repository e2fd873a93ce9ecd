//! Sans-IO framing of the control channel: a 4-byte big-endian length followed by one encoded `ControlMessage`.
//!
//! The invariant a reader must not break: **the length is checked before anything is allocated**. The decoder
//! owns one buffer of `HEADER_BYTES + max_frame` bytes, allocated once; a peer can never make it grow. Bytes are
//! read straight into [`FrameDecoder::spare`] (no intermediate copy) and frames are decoded in place.
//!
//! Errors are typed ([`FrameError`]) and every one of them is fatal for the connection: after an error the stream
//! position is unknown, so the caller sends a `Kick` with [`FrameError::kick_reason`] and closes.

use prost::Message;

use crate::proto::{ControlMessage, KickReason};

/// Size of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Smallest `max_frame` a codec accepts (a Hello with a short client name must fit).
pub const MIN_MAX_FRAME: usize = 64;

/// Largest `max_frame` a codec accepts; larger frames would defeat the per-connection memory bound.
pub const MAX_MAX_FRAME: usize = 1 << 20;

/// Why a byte stream is not a valid sequence of control frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A length prefix of zero: every message has at least a body tag.
    #[error("zero-length frame")]
    ZeroLength,
    /// The length prefix announces more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversized {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// The frame is not a valid protobuf `ControlMessage`.
    #[error("invalid protobuf: {0}")]
    InvalidProtobuf(#[from] prost::DecodeError),
    /// A valid envelope whose body is missing or of a kind this version does not know.
    #[error("unknown message")]
    UnknownMessage,
}

impl FrameError {
    /// The reason sent to the peer in the `Kick` before closing.
    pub fn kick_reason(&self) -> KickReason {
        KickReason::ProtocolError
    }
}

/// Incremental decoder with a fixed-size buffer.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Box<[u8]>,
    /// Start of unconsumed bytes.
    start: usize,
    /// End of valid bytes.
    end: usize,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder accepting frames of at most `max_frame` bytes (clamped to `MIN_MAX_FRAME..=MAX_MAX_FRAME`).
    pub fn new(max_frame: usize) -> Self {
        let max_frame = max_frame.clamp(MIN_MAX_FRAME, MAX_MAX_FRAME);
        Self { buf: vec![0; HEADER_BYTES + max_frame].into_boxed_slice(), start: 0, end: 0, max_frame }
    }

    /// The configured maximum frame size (prefix excluded).
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Free space to read into; call [`FrameDecoder::filled`] with the number of bytes written. Empty only when
    /// a complete frame is waiting to be decoded (call [`FrameDecoder::decode`] first).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && self.end == self.buf.len() {
            self.compact();
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`FrameDecoder::spare`] as received.
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len(), "filled past the spare space");
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies as much of `bytes` as fits; returns how many were taken. Convenience for tests and non-rustls
    /// sources; the io layer reads directly into [`FrameDecoder::spare`].
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(bytes.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.filled(n);
        n
    }

    /// Decodes the next complete frame, `Ok(None)` when more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<ControlMessage>, FrameError> {
        let Some(len) = self.peek_len()? else { return Ok(None) };
        let frame_end = self.start + HEADER_BYTES + len;
        if frame_end > self.end {
            if frame_end > self.buf.len() {
                // The frame fits the buffer but not behind the bytes already consumed: move it to the front.
                self.compact();
            }
            return Ok(None);
        }
        let body = &self.buf[self.start + HEADER_BYTES..frame_end];
        let msg = ControlMessage::decode(body);
        self.start = frame_end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let msg = msg?;
        if msg.body.is_none() {
            return Err(FrameError::UnknownMessage);
        }
        Ok(Some(msg))
    }

    /// Called when the peer closed its side: leftover bytes mean a truncated frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }

    /// Validates the length prefix as soon as its four bytes are here, before waiting for (or storing) the body.
    fn peek_len(&self) -> Result<Option<usize>, FrameError> {
        if self.buffered() < HEADER_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; HEADER_BYTES];
        prefix.copy_from_slice(&self.buf[self.start..self.start + HEADER_BYTES]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        if len > self.max_frame {
            return Err(FrameError::Oversized { len, max: self.max_frame });
        }
        Ok(Some(len))
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// Appends `msg` as one frame to `out`. Fails (appending nothing) when the encoding exceeds `max_frame`.
pub fn encode_frame(msg: &ControlMessage, max_frame: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    if len > max_frame {
        return Err(FrameError::Oversized { len, max: max_frame });
    }
    out.reserve(HEADER_BYTES + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(out).map_err(|_| FrameError::Oversized { len, max: max_frame })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{control_message::Body, Chat, Hello, Ping};
    use proptest::prelude::*;

    fn ping(nonce: u64) -> ControlMessage {
        ControlMessage::new(Body::Ping(Ping { nonce, client_time_us: 7 }))
    }

    #[test]
    fn frames_split_at_every_byte_boundary_decode() {
        let mut wire = Vec::new();
        for n in 0..5 {
            encode_frame(&ping(n), 256, &mut wire).unwrap();
        }
        let mut dec = FrameDecoder::new(256);
        let mut got = Vec::new();
        for b in &wire {
            assert_eq!(dec.feed(std::slice::from_ref(b)), 1);
            while let Some(m) = dec.decode().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, (0..5).map(ping).collect::<Vec<_>>());
        dec.finish().unwrap();
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(128);
        dec.feed(&(129u32).to_be_bytes());
        assert!(matches!(dec.decode(), Err(FrameError::Oversized { len: 129, max: 128 })));
        let mut dec = FrameDecoder::new(128);
        dec.feed(&u32::MAX.to_be_bytes());
        assert!(matches!(dec.decode(), Err(FrameError::Oversized { .. })));
    }

    #[test]
    fn zero_length_frame_is_an_error() {
        let mut dec = FrameDecoder::new(128);
        dec.feed(&[0, 0, 0, 0]);
        assert!(matches!(dec.decode(), Err(FrameError::ZeroLength)));
    }

    #[test]
    fn truncated_stream_is_reported_at_finish() {
        let mut wire = Vec::new();
        encode_frame(&ping(1), 128, &mut wire).unwrap();
        let mut dec = FrameDecoder::new(128);
        dec.feed(&wire[..wire.len() - 1]);
        assert!(dec.decode().unwrap().is_none());
        assert!(matches!(dec.finish(), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn garbage_is_invalid_protobuf() {
        let mut dec = FrameDecoder::new(128);
        dec.feed(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.decode(), Err(FrameError::InvalidProtobuf(_))));
    }

    #[test]
    fn unknown_message_kind_is_reported() {
        // Field 99 of the envelope (a varint) is unknown to this version: the body decodes as None.
        let body = [0x98, 0x06, 0x01];
        let mut dec = FrameDecoder::new(128);
        dec.feed(&(body.len() as u32).to_be_bytes());
        dec.feed(&body);
        assert!(matches!(dec.decode(), Err(FrameError::UnknownMessage)));
    }

    #[test]
    fn encoder_refuses_frames_over_the_maximum() {
        let msg = ControlMessage::new(Body::Chat(Chat { channel: 0, text: "x".repeat(300) }));
        let mut out = Vec::new();
        assert!(matches!(encode_frame(&msg, 256, &mut out), Err(FrameError::Oversized { .. })));
        assert!(out.is_empty());
    }

    #[test]
    fn a_max_size_frame_fits_after_partial_consumption() {
        // A small frame, then a frame of exactly max size: the decoder must compact rather than stall.
        let max = 200;
        let hello =
            |pad: usize| ControlMessage::new(Body::Hello(Hello { protocol_version: 1, client_name: "a".repeat(pad) }));
        let pad = (0..max).rev().find(|&pad| hello(pad).encoded_len() == max).unwrap();
        let big = hello(pad);
        assert_eq!(big.encoded_len(), max);
        let mut wire = Vec::new();
        encode_frame(&ping(1), max, &mut wire).unwrap();
        encode_frame(&big, max, &mut wire).unwrap();
        let mut dec = FrameDecoder::new(max);
        let mut got = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = dec.feed(rest);
            rest = &rest[n..];
            while let Some(m) = dec.decode().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![ping(1), big]);
    }

    fn arb_message() -> impl Strategy<Value = ControlMessage> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(nonce, t)| ControlMessage::new(Body::Ping(Ping { nonce, client_time_us: t }))),
            (any::<u32>(), ".{0,40}").prop_map(|(v, name)| ControlMessage::new(Body::Hello(Hello {
                protocol_version: v,
                client_name: name
            }))),
            (0i32..2, ".{0,100}").prop_map(|(channel, text)| ControlMessage::new(Body::Chat(Chat { channel, text }))),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msgs in proptest::collection::vec(arb_message(), 1..20), chunk in 1usize..64) {
            let mut wire = Vec::new();
            for m in &msgs {
                encode_frame(m, 4096, &mut wire).unwrap();
            }
            let mut dec = FrameDecoder::new(4096);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = dec.feed(rest);
                    rest = &rest[n..];
                    while let Some(m) = dec.decode().unwrap() {
                        got.push(m);
                    }
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert!(dec.finish().is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_grow_the_buffer(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut dec = FrameDecoder::new(256);
            let capacity = dec.buf.len();
            let mut rest = &bytes[..];
            'outer: while !rest.is_empty() {
                let n = dec.feed(rest);
                rest = &rest[n..];
                loop {
                    match dec.decode() {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
                if n == 0 {
                    break;
                }
            }
            prop_assert_eq!(dec.buf.len(), capacity);
            prop_assert!(capacity <= HEADER_BYTES + 256);
        }
    }
}
