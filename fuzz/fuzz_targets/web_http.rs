//! The browser endpoint's parsers as a network peer reaches them: the HTTP request parser (`realm::net::web::http::
//! parse`, sans-IO: every byte a browser port receives before an upgrade goes through it), the login-token verifier
//! (`TokenSigner::verify`, fed from `?token=`) and the `WsFrame` decoder (every WebSocket message).
//!
//! Input: `[selector] [bytes...]`. Selector bit 0 and 1 pick the origin policy (TLS or not, an allowed origin or
//! none); the bytes are offered to all three parsers.
//!
//! Checked: nothing panics; `parse` returns `NeedMore` only for inputs within the head and body limits; a
//! request it accepts respects the limits it promises (credentials from a body within `MAX_BODY_BYTES`, an entry
//! token within `MAX_TOKEN_BYTES`); every response it would send renders with the security headers; a token
//! verified by a signer it was not signed with is refused.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use realm::account::token::{TokenSigner, MAX_TOKEN_BYTES};
use realm::net::web::http::{parse, Entry, OriginPolicy, Parsed, Request, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use realm::proto::WsFrame;
use realm_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.byte();
    let bytes = input.rest();
    let policy = OriginPolicy {
        allowed: if selector & 2 != 0 { vec!["https://play.example.com".into()] } else { Vec::new() },
        tls: selector & 1 != 0,
    };
    match parse(bytes, &policy) {
        Parsed::NeedMore => assert!(bytes.len() <= MAX_HEAD_BYTES + MAX_BODY_BYTES, "NeedMore past the limits"),
        Parsed::Reject(r) => {
            let text = r.to_bytes();
            assert!(text.starts_with(b"HTTP/1.1 4"), "a refusal is a 4xx");
            assert!(text.windows(23).any(|w| w == b"Content-Security-Policy"));
        }
        Parsed::Request(Request::Api { username, password, .. }) => {
            assert!(username.len() + password.len() <= MAX_BODY_BYTES);
        }
        Parsed::Request(Request::Upgrade { key, entry, .. }) => {
            assert_eq!(key.len(), 24);
            if let Entry::Token(t) = entry {
                assert!(!t.is_empty() && t.len() <= MAX_TOKEN_BYTES);
            }
        }
        Parsed::Request(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let signer = TokenSigner::new(b"fuzzing secret, 32 bytes or more", "zone", Duration::from_secs(60));
        assert!(signer.verify(text, SystemTime::now()).is_err(), "a token nobody signed verified");
    }
    let _ = WsFrame::decode(bytes);
});
