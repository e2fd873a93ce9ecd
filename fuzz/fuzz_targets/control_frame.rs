//! The control channel as a network peer reaches it, below and at the TLS layer.
//!
//! Input: `[mode] [max_frame: u16] [chunk seed] [stream...]`.
//!
//! * mode even: `stream` is plaintext for `realm::net::framing::FrameDecoder`, decoded until `None` or an error,
//!   once fed all at once (`feed`) and once in the chunks the seed picks (`spare`/`filled`, as the session does).
//!   Both must yield the same frames and the same error: chunking is invisible to a reader of the stream. After
//!   `Ok(None)` there is always room to read into (a decoder that stalls would spin the io thread), the buffer
//!   never exceeds `HEADER_BYTES + max_frame`, and every decoded message re-encodes to bytes that decode to the
//!   same encoding.
//! * mode odd: `stream` is ciphertext from the socket for a fresh `ControlSession`, delivered in the chosen chunks
//!   through a `Read` that returns `WouldBlock` when drained; between chunks events are polled, pending ciphertext
//!   is written out, the virtual clock advances and `handle_timeout` runs; finally the peer closes (EOF). The
//!   session's event invariant is checked throughout (`realm_fuzz::EventChecker`), and EOF must close it.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use realm::net::framing::{FrameDecoder, FrameError, HEADER_BYTES, MAX_MAX_FRAME, MIN_MAX_FRAME};
use realm::net::session::ControlSession;
use realm::proto::ControlMessage;
use realm_fuzz::{server_tls_config, session_limits, Chunker, EventChecker, Input, WouldBlockReader};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let max_frame = usize::from(input.u16());
    let seed = input.byte();
    let stream = input.rest();
    if mode & 1 == 0 {
        frames(max_frame, seed, stream);
    } else {
        ciphertext(seed, stream);
    }
});

/// What a decoder made of a stream: the frames (re-encoded), then the error that stopped it, or the result of
/// `finish` when the stream ran out.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Vec<u8>>,
    error: Option<String>,
    finish: Option<String>,
}

fn frames(max_frame: usize, seed: u8, stream: &[u8]) {
    let whole = decode(max_frame, std::iter::once(stream), false);
    let chunked = decode(max_frame, Chunker::new(seed).split(stream), true);
    assert_eq!(whole, chunked, "chunking changed what the decoder produced");
}

fn decode<'a>(max_frame: usize, chunks: impl Iterator<Item = &'a [u8]>, via_spare: bool) -> Decoded {
    let mut dec = FrameDecoder::new(max_frame);
    assert_eq!(dec.max_frame(), max_frame.clamp(MIN_MAX_FRAME, MAX_MAX_FRAME));
    let capacity = HEADER_BYTES + dec.max_frame();
    let mut out = Decoded { frames: Vec::new(), error: None, finish: None };
    for chunk in chunks {
        let mut rest = chunk;
        while !rest.is_empty() {
            let n = if via_spare {
                let spare = dec.spare();
                let n = spare.len().min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                dec.filled(n);
                n
            } else {
                dec.feed(rest)
            };
            rest = &rest[n..];
            assert!(dec.buffered() <= capacity, "buffer grew past {capacity}: {}", dec.buffered());
            loop {
                match dec.decode() {
                    Ok(Some(msg)) => out.frames.push(reencode(&msg)),
                    Ok(None) => break,
                    Err(e) => {
                        check_error(&e, dec.max_frame());
                        out.error = Some(e.to_string());
                        return out;
                    }
                }
            }
            assert!(!dec.spare().is_empty(), "decoder stalled: needs more bytes but has no room for them");
        }
    }
    out.finish = dec.finish().err().map(|e| e.to_string());
    out
}

fn check_error(e: &FrameError, max_frame: usize) {
    if let FrameError::Oversized { len, max } = e {
        assert_eq!(*max, max_frame);
        assert!(*len > max_frame);
    }
}

/// The message's encoding, checked to survive a decode/encode round trip unchanged.
fn reencode(msg: &ControlMessage) -> Vec<u8> {
    assert!(msg.body.is_some(), "decoder returned a message without a body");
    let bytes = msg.encode_to_vec();
    let again = ControlMessage::decode(&bytes[..]).expect("a message we encoded decodes");
    assert_eq!(again.encode_to_vec(), bytes, "encoding is not stable across a round trip");
    bytes
}

fn ciphertext(seed: u8, stream: &[u8]) {
    let start = Instant::now();
    let mut now = start;
    let mut session = ControlSession::new(server_tls_config(), session_limits(), now).expect("new session");
    let mut checker = EventChecker::default();
    let mut wire = Vec::new();
    for chunk in Chunker::new(seed).split(stream) {
        let eof = session.read_tls(&mut WouldBlockReader(chunk), now);
        assert!(!eof, "a reader that would block is not EOF");
        checker.drain(&mut session, |_| {});
        wire.clear();
        let _ = session.write_tls(&mut wire);
        // Virtual time: 10 ms per byte of the chunk, so long inputs cross the 5 s handshake timeout.
        now += Duration::from_millis(10 * chunk.len() as u64);
        session.handle_timeout(now);
        checker.drain(&mut session, |_| {});
    }
    // The peer closes its side.
    let eof = session.read_tls(&mut &[][..], now);
    assert!(eof || session.is_closing(), "EOF not reported by an open session");
    checker.drain(&mut session, |_| {});
    assert!(session.is_closing(), "EOF must close the session");
    wire.clear();
    let _ = session.write_tls(&mut wire);
    session.handle_timeout(start + Duration::from_secs(3600));
    checker.drain(&mut session, |_| {});
}
