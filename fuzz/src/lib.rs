//! Shared pieces of the fuzz targets: a cursor over the fuzz input, a non-blocking socket stand-in, the server's
//! TLS configuration (built once per process), the session limits, the data channel's fixed keys and a sealer
//! written from the datagram format in `src/net/udp/mod.rs` (so arbitrary plaintext, not only valid protobuf,
//! reaches the decoder behind the AEAD check).
//!
//! Everything here uses the `realm` library's public API only. The seed-corpus generator
//! (`examples/make_corpus.rs`) uses the same encoders, so the committed seeds match the input formats below.

use std::io::{self, Read};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use realm::net::session::{CloseReason, ControlSession, SessionEvent, SessionLimits};
use realm::net::udp::{HEADER_BYTES, KIND_DATA_V1, TAG_BYTES};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

/// A byte cursor over the fuzz input. Reads past the end yield zeros / empty slices, so every input is valid.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Next byte, 0 past the end.
    pub fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.data.split_first() else { return 0 };
        self.data = rest;
        b
    }

    /// Next big-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Next big-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        b.iter_mut().for_each(|x| *x = self.byte());
        u64::from_be_bytes(b)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (u16) slice: the encoders in the corpus generator write `len` then the bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Appends a u16-length-prefixed chunk (the inverse of [`Input::chunk`]).
pub fn put_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("corpus chunks are small");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Chunk sizes for splitting a byte stream, from a one-byte seed: 0 = everything at once, 1 = byte by byte,
/// otherwise a deterministic pseudo-random walk of sizes in `1..=seed`.
pub struct Chunker {
    state: u32,
    max: usize,
}

impl Chunker {
    /// A chunker for `seed`.
    pub fn new(seed: u8) -> Self {
        Self { state: 0x9E37_79B9 ^ u32::from(seed), max: usize::from(seed) }
    }

    /// Size of the next chunk.
    pub fn next_len(&mut self) -> usize {
        match self.max {
            0 => usize::MAX,
            1 => 1,
            max => {
                // xorshift32: cheap and deterministic; quality does not matter here.
                self.state ^= self.state << 13;
                self.state ^= self.state >> 17;
                self.state ^= self.state << 5;
                1 + (self.state as usize % max)
            }
        }
    }

    /// Splits `bytes` into consecutive chunks.
    pub fn split(mut self, mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
        std::iter::from_fn(move || {
            if bytes.is_empty() {
                return None;
            }
            let (head, rest) = bytes.split_at(self.next_len().min(bytes.len()));
            bytes = rest;
            Some(head)
        })
    }
}

/// A non-blocking socket's read side: `WouldBlock` once drained (a slice reader would report EOF).
pub struct WouldBlockReader<'a>(pub &'a [u8]);

impl Read for WouldBlockReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.0.read(buf)
    }
}

/// The server's production TLS configuration (`realm::net::tls::server_config` with the generated development
/// certificate), built once per process: certificate generation would dominate every iteration otherwise.
pub fn server_tls_config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let tls = realm::net::tls::server_config(&Default::default(), &std::env::temp_dir())
                .expect("server TLS config with a development certificate");
            if let Some(path) = tls.dev_cert_path {
                let _ = std::fs::remove_file(path);
            }
            tls.config
        })
        .clone()
}

/// A client configuration that accepts the development certificate.
pub fn client_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            realm::net::tls::client_config(&realm::net::tls::ServerTrust::InsecureAcceptAny).expect("client config")
        })
        .clone()
}

/// Small limits, so a short input reaches every one of them: a 1 KiB frame, 8 messages per 50 ms window, kicked
/// after 3 flooded windows, 5 s handshake, 60 s idle. Built from the default configuration, so limits added to
/// the session later get their production defaults here.
pub fn session_limits() -> SessionLimits {
    let mut limits = SessionLimits::from_config(&realm::config::Config::default());
    limits.max_frame = 1024;
    limits.handshake_timeout = Duration::from_secs(5);
    limits.idle_timeout = Duration::from_secs(60);
    limits.write_buffer_cap = 64 * 1024;
    limits.credits_per_window = 8;
    limits.credit_window = Duration::from_millis(50);
    limits.flood_kick_windows = 3;
    limits.zone = "fuzz-zone".into();
    limits
}

/// Checks the session's documented event invariant while draining its events: at most one `Closed`, nothing after
/// it, and `is_closing()` exactly when `Closed` was reported. Returns the events drained.
#[derive(Debug, Default)]
pub struct EventChecker {
    /// The close reason, once reported.
    pub closed: Option<CloseReason>,
    /// Events seen so far.
    pub events: usize,
}

impl EventChecker {
    /// Drains and checks every pending event; calls `on_event` for each one before the close.
    pub fn drain(&mut self, session: &mut ControlSession, mut on_event: impl FnMut(&SessionEvent)) {
        while let Some(event) = session.poll_event() {
            assert!(self.closed.is_none(), "event {event:?} after Closed({:?})", self.closed);
            self.events += 1;
            if let SessionEvent::Closed(reason) = &event {
                self.closed = Some(reason.clone());
            }
            on_event(&event);
        }
        assert_eq!(
            session.is_closing(),
            self.closed.is_some(),
            "is_closing() disagrees with the Closed event ({:?})",
            self.closed
        );
        assert!(session.is_closing() || session.next_deadline().is_some(), "a live session always has a deadline");
    }
}

/// The session id the UDP targets register.
pub const SESSION_ID: u64 = 0x0102_0304_0506_0708;

/// A second registered session (so bindings can collide).
pub const OTHER_SESSION_ID: u64 = 0x1111_2222_3333_4444;

/// The fixed keying material of [`SESSION_ID`] (the exporter's output in production).
pub const KEYING_MATERIAL: [u8; 64] = [0x5a; 64];

/// The keying material of [`OTHER_SESSION_ID`].
pub const OTHER_KEYING_MATERIAL: [u8; 64] = [0xa5; 64];

/// Seals `plaintext` as a client -> server datagram of `session_id` with sequence `sequence`, straight from the
/// documented format: header (kind, session id, sequence), ChaCha20-Poly1305 under the first 32 bytes of the
/// keying material, nonce `00000000 || sequence`, the header as associated data. Unlike
/// `DataChannel::seal`, the plaintext can be any bytes (not only an encodable `DataMessage`), so the protobuf
/// decoder behind the AEAD check sees arbitrary input. Longer plaintexts give datagrams over 1200 bytes, which
/// the receiver must drop unread.
pub fn seal_client_datagram(material: &[u8; 64], session_id: u64, sequence: u64, plaintext: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &material[..32]).expect("32-byte key"));
    let mut out = Vec::with_capacity(HEADER_BYTES + plaintext.len() + TAG_BYTES);
    out.push(KIND_DATA_V1);
    out.extend_from_slice(&session_id.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(plaintext);
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&sequence.to_be_bytes());
    let (header, body) = out.split_at_mut(HEADER_BYTES);
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&*header), body)
        .expect("ChaCha20-Poly1305 seals any length we produce");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Ignores SIGPIPE: libFuzzer's `main` is not Rust's, so the runtime did not do it, and a write to a socket the
/// server already closed must be an error, not the end of the fuzzer.
pub fn ignore_sigpipe() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it is process-wide and
        // done once, before any socket is used.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// True when `REALM_FUZZ_TRACE` is set: the targets then print what they do with an input (for reading an
/// artifact: `REALM_FUZZ_TRACE=1 cargo fuzz run --sanitizer none <target> <artifact>`).
pub fn trace_enabled() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("REALM_FUZZ_TRACE").is_some())
}

/// `eprintln!` when [`trace_enabled`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::trace_enabled() {
            eprintln!($($arg)*);
        }
    };
}
