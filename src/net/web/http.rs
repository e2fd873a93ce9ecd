//! The browser endpoint's HTTP/1.1 subset, sans-IO: [`parse`] turns the bytes received so far into a decision,
//! [`Response`] renders an answer with the security headers every response carries. No sockets here, so every
//! limit is unit-tested (and fuzzed) on plain byte strings.
//!
//! Routes: `GET /` (and `/index.html`, `/app.js`, `/style.css`: the web client, built into the binary),
//! `POST /api/login`, `POST /api/register` (JSON `{"username","password"}`), `OPTIONS /api/*` (CORS preflight) and
//! `GET /ws` with `Upgrade: websocket` and one of `?token=`, `?resume=`, `?transfer=&username=`.
//!
//! Invariant: nothing here trusts the peer — every input ends in `NeedMore` or a decision; no panic path, and no
//! allocation beyond [`MAX_HEAD_BYTES`] + [`MAX_BODY_BYTES`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

use crate::proto::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Largest request head accepted; more is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body accepted (a login is ~100 bytes); more is answered 413.
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// Most header fields.
pub const MAX_HEADERS: usize = 32;

/// `Content-Security-Policy` of every response: the page loads only its own script and style and talks only to its
/// own origin (HTTP and WebSocket), and nobody may frame it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One file of the web client, served from memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Request path.
    pub path: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
}

/// The web client (`web/dist`, built by `scripts/web.sh build` and committed, so no npm is needed to build the
/// server).
pub static ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_bytes!("../../../web/dist/index.html") },
    Asset {
        path: "/index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../web/dist/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../web/dist/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../web/dist/style.css"),
    },
    // Browsers ask for it whatever the page says; an empty icon instead of a 404 in every console.
    Asset { path: "/favicon.ico", content_type: "image/x-icon", body: &[] },
];

/// How a `/ws` connection enters the game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `?token=` from `POST /api/login` or `/api/register`.
    Token(String),
    /// `?resume=` with the session token of the last `LoginOk` (base64url).
    Resume(Vec<u8>),
    /// `?transfer=` (base64url) and `&username=`, after a `ZoneTransfer`.
    Transfer {
        /// The one-time token.
        token: Vec<u8>,
        /// The player's name.
        username: String,
    },
}

/// A request the gateway acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A file of the web client.
    Asset {
        /// Which (compared by path).
        asset: &'static Asset,
        /// `HEAD`: headers only.
        head_only: bool,
    },
    /// `POST /api/login` or `/api/register`.
    Api {
        /// Registration.
        register: bool,
        /// Username.
        username: String,
        /// Password.
        password: String,
        /// `Origin`, if the request had one (echoed when allowed).
        origin: Option<String>,
    },
    /// `OPTIONS /api/...` from an allowed origin.
    Preflight {
        /// The origin.
        origin: String,
    },
    /// `GET /ws` with a valid upgrade.
    Upgrade {
        /// `Sec-WebSocket-Key`.
        key: String,
        /// How the session enters.
        entry: Entry,
        /// Protocol version (`&protocol=`, 1 when absent): 2 gets delta snapshots.
        protocol: u32,
        /// Bytes after the head (a client may send frames before reading the 101).
        rest: Vec<u8>,
    },
}

/// What the bytes received so far mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Incomplete and within limits.
    NeedMore,
    /// A request to act on.
    Request(Request),
    /// A request to refuse: answer this and close.
    Reject(Response),
}

/// Which origins may call the API and open `/ws`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Allowed besides the page's own (`scheme://host[:port]`, compared exactly).
    pub allowed: Vec<String>,
    /// Whether the endpoint is served over TLS (the page's own origin is then `https://`).
    pub tls: bool,
}

impl OriginPolicy {
    /// A request without `Origin` is not from a browser page (curl, bots) and is allowed: CORS protects browsers'
    /// users, and a non-browser client can send any Origin anyway. With one, it must be the page's own origin
    /// (its scheme plus the `Host` it addressed) or a configured one.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.allowed.iter().any(|a| a == origin) {
            return true;
        }
        let scheme = if self.tls { "https://" } else { "http://" };
        host.is_some_and(|h| origin.strip_prefix(scheme) == Some(h))
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// Extra headers (CORS).
    pub headers: Vec<(&'static str, String)>,
    /// Omit the body (`HEAD`).
    pub head_only: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            headers: Vec::new(),
            head_only: false,
        }
    }

    /// A JSON error `{"reason": ..., "message": ...}`.
    pub fn error(status: u16, reason_name: &str, message: &str) -> Response {
        Self::json(status, &serde_json::json!({"reason": reason_name, "message": message, "retry_after_ms": 0}))
    }

    /// With `Access-Control-Allow-Origin` for `origin` (an allowed one).
    pub fn with_cors(mut self, origin: Option<String>) -> Response {
        if let Some(o) = origin {
            self.headers.push(("Access-Control-Allow-Origin", o));
            self.headers.push(("Vary", "Origin".into()));
        }
        self
    }

    /// The bytes on the wire, with the security headers; the connection closes after it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
             Referrer-Policy: no-referrer\r\nCross-Origin-Opener-Policy: same-origin\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The `101 Switching Protocols` answer to a valid upgrade.
pub fn switching_protocols(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \
         {accept}\r\n\r\n"
    )
    .into_bytes()
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))?
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Decides what `buf` (everything received on the connection so far) asks for.
pub fn parse(buf: &[u8], policy: &OriginPolicy) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Parsed::Reject(Response::error(431, "HEAD_TOO_LARGE", "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Parsed::NeedMore,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Reject(Response::error(431, "TOO_MANY_HEADERS", "too many header fields"))
        }
        Err(_) => return Parsed::Reject(Response::error(400, "BAD_REQUEST", "malformed request")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Parsed::Reject(Response::error(431, "HEAD_TOO_LARGE", "request head too large"));
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Reject(Response::error(400, "BAD_REQUEST", "malformed request"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let origin = header(req.headers, "origin");
    let host = header(req.headers, "host");
    let allowed = policy.allows(origin, host);
    let cors_origin = origin.filter(|_| allowed).map(str::to_owned);
    match (method, path) {
        ("GET" | "HEAD", "/ws") if method == "GET" => upgrade(req.headers, query, allowed, &buf[head_len..]),
        ("GET" | "HEAD", p) => match ASSETS.iter().find(|a| a.path == p) {
            Some(asset) => Parsed::Request(Request::Asset { asset, head_only: method == "HEAD" }),
            None => Parsed::Reject(Response::error(404, "NOT_FOUND", "no such page")),
        },
        ("POST", "/api/login" | "/api/register") => {
            if !allowed {
                return Parsed::Reject(Response::error(403, "ORIGIN_NOT_ALLOWED", "origin not allowed"));
            }
            let length = match header(req.headers, "content-length").map(|v| v.trim().parse::<usize>()) {
                Some(Ok(n)) => n,
                Some(Err(_)) => return Parsed::Reject(Response::error(400, "BAD_REQUEST", "bad Content-Length")),
                None => return Parsed::Reject(Response::error(411, "LENGTH_REQUIRED", "Content-Length required")),
            };
            if length > MAX_BODY_BYTES {
                return Parsed::Reject(Response::error(413, "BODY_TOO_LARGE", "request body too large"));
            }
            let body = &buf[head_len..];
            if body.len() < length {
                return Parsed::NeedMore;
            }
            #[derive(serde::Deserialize)]
            struct Credentials {
                username: String,
                password: String,
            }
            match serde_json::from_slice::<Credentials>(&body[..length]) {
                Ok(c) => Parsed::Request(Request::Api {
                    register: path == "/api/register",
                    username: c.username,
                    password: c.password,
                    origin: cors_origin,
                }),
                Err(_) => Parsed::Reject(
                    Response::error(400, "BAD_REQUEST", "expected JSON {\"username\": ..., \"password\": ...}")
                        .with_cors(cors_origin),
                ),
            }
        }
        ("OPTIONS", p) if p.starts_with("/api/") => match (origin, allowed) {
            (Some(o), true) => Parsed::Request(Request::Preflight { origin: o.to_owned() }),
            _ => Parsed::Reject(Response::error(403, "ORIGIN_NOT_ALLOWED", "origin not allowed")),
        },
        (_, "/api/login" | "/api/register" | "/ws") | (_, "/") => {
            Parsed::Reject(Response::error(405, "METHOD_NOT_ALLOWED", "method not allowed"))
        }
        _ => Parsed::Reject(Response::error(404, "NOT_FOUND", "no such page")),
    }
}

fn upgrade(headers: &[httparse::Header<'_>], query: &str, allowed: bool, rest: &[u8]) -> Parsed {
    if !allowed {
        return Parsed::Reject(Response::error(403, "ORIGIN_NOT_ALLOWED", "origin not allowed"));
    }
    if !has_token(header(headers, "upgrade"), "websocket") || !has_token(header(headers, "connection"), "upgrade") {
        return Parsed::Reject(Response::error(426, "UPGRADE_REQUIRED", "GET /ws is a WebSocket endpoint"));
    }
    if header(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        return Parsed::Reject(Response::error(426, "UPGRADE_REQUIRED", "WebSocket version 13 only"));
    }
    let Some(key) = header(headers, "sec-websocket-key").map(str::trim).filter(|k| k.len() == 24) else {
        return Parsed::Reject(Response::error(400, "BAD_REQUEST", "missing or bad Sec-WebSocket-Key"));
    };
    let bad =
        || Parsed::Reject(Response::error(400, "BAD_REQUEST", "expected ?token=, ?resume= or ?transfer=&username="));
    let entry = if let Some(token) = query_param(query, "token") {
        if token.is_empty() || token.len() > crate::account::token::MAX_TOKEN_BYTES {
            return bad();
        }
        Entry::Token(token)
    } else if let Some(resume) = query_param(query, "resume") {
        match B64.decode(resume.trim_end_matches('=')) {
            Ok(t) if !t.is_empty() && t.len() <= 64 => Entry::Resume(t),
            _ => return bad(),
        }
    } else if let (Some(t), Some(username)) = (query_param(query, "transfer"), query_param(query, "username")) {
        match B64.decode(t.trim_end_matches('=')) {
            Ok(token) if !token.is_empty() && token.len() <= 64 && username.len() <= 64 => {
                Entry::Transfer { token, username }
            }
            _ => return bad(),
        }
    } else {
        return bad();
    };
    let protocol = match query_param(query, "protocol").as_deref() {
        None => 1,
        Some(v) => match v.parse::<u32>() {
            Ok(p) if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&p) => p,
            _ => {
                return Parsed::Reject(Response::error(
                    400,
                    "PROTOCOL_VERSION",
                    &format!("protocol must be {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"),
                ))
            }
        },
    };
    Parsed::Request(Request::Upgrade { key: key.to_owned(), entry, protocol, rest: rest.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OriginPolicy {
        OriginPolicy { allowed: vec!["https://play.example.com".into()], tls: false }
    }

    fn status(p: Parsed) -> u16 {
        match p {
            Parsed::Reject(r) => r.status,
            other => panic!("{other:?}"),
        }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn ws(query: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET /ws{query} HTTP/1.1\r\nHost: a:1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn the_client_files_are_served_and_unknown_paths_are_404() {
        let p = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &policy());
        assert!(matches!(p, Parsed::Request(Request::Asset { asset, head_only: false }) if asset.path == "/"));
        let p = parse(b"HEAD /app.js HTTP/1.1\r\n\r\n", &policy());
        assert!(matches!(p, Parsed::Request(Request::Asset { head_only: true, .. })));
        assert_eq!(status(parse(b"GET /etc/passwd HTTP/1.1\r\n\r\n", &policy())), 404);
        assert_eq!(status(parse(b"DELETE / HTTP/1.1\r\n\r\n", &policy())), 405);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost:", &policy()), Parsed::NeedMore);
    }

    #[test]
    fn api_requests_need_a_length_a_small_json_body_and_an_allowed_origin() {
        let body = r#"{"username":"alice","password":"password123"}"#;
        let req = format!("POST /api/login HTTP/1.1\r\nHost: a:1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        match parse(req.as_bytes(), &policy()) {
            Parsed::Request(Request::Api { register: false, username, password, origin: None }) => {
                assert_eq!((username.as_str(), password.as_str()), ("alice", "password123"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(&req.as_bytes()[..req.len() - 3], &policy()), Parsed::NeedMore);
        let foreign = req.replace("Host: a:1", "Host: a:1\r\nOrigin: https://evil.example");
        assert_eq!(status(parse(foreign.as_bytes(), &policy())), 403);
        let same = req.replace("Host: a:1", "Host: a:1\r\nOrigin: http://a:1");
        assert!(matches!(parse(same.as_bytes(), &policy()), Parsed::Request(Request::Api { origin: Some(_), .. })));
        let listed = req.replace("Host: a:1", "Host: a:1\r\nOrigin: https://play.example.com");
        assert!(matches!(parse(listed.as_bytes(), &policy()), Parsed::Request(Request::Api { .. })));
        assert_eq!(status(parse(b"POST /api/login HTTP/1.1\r\n\r\n", &policy())), 411);
        assert_eq!(status(parse(b"POST /api/login HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", &policy())), 413);
        assert_eq!(status(parse(b"POST /api/login HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", &policy())), 400);
        assert_eq!(status(parse(b"POST /api/login HTTP/1.1\r\nContent-Length: x\r\n\r\n", &policy())), 400);
    }

    #[test]
    fn oversized_and_malformed_heads_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        assert_eq!(status(parse(&big, &policy())), 431);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status(parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), &policy())), 431);
        assert_eq!(status(parse(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n", &policy())), 400);
    }

    #[test]
    fn upgrades_need_the_websocket_headers_and_an_entry() {
        match parse(&ws("?token=abc.def.ghi", ""), &policy()) {
            Parsed::Request(Request::Upgrade { key, entry: Entry::Token(t), protocol, rest }) => {
                assert_eq!((key.as_str(), t.as_str(), protocol, rest.len()), (KEY, "abc.def.ghi", 1, 0));
            }
            other => panic!("{other:?}"),
        }
        // The protocol version: 2 asked for, else 1; anything else is refused, not guessed.
        assert!(matches!(
            parse(&ws("?token=abc.def.ghi&protocol=2", ""), &policy()),
            Parsed::Request(Request::Upgrade { protocol: 2, .. })
        ));
        for bad in ["0", "3", "x", "", "99999999999"] {
            assert_eq!(status(parse(&ws(&format!("?token=a.b.c&protocol={bad}"), ""), &policy())), 400, "{bad}");
        }
        let resume = B64.encode([7u8; 32]);
        assert!(matches!(
            parse(&ws(&format!("?resume={resume}"), ""), &policy()),
            Parsed::Request(Request::Upgrade { entry: Entry::Resume(t), .. }) if t == vec![7u8; 32]
        ));
        assert!(matches!(
            parse(&ws(&format!("?transfer={resume}&username=bob%5F1"), ""), &policy()),
            Parsed::Request(Request::Upgrade { entry: Entry::Transfer { username, .. }, .. }) if username == "bob_1"
        ));
        assert_eq!(status(parse(&ws("", ""), &policy())), 400);
        assert_eq!(status(parse(&ws("?resume=!!!", ""), &policy())), 400);
        assert_eq!(status(parse(&ws("?token=a", "Origin: https://evil.example\r\n"), &policy())), 403);
        assert_eq!(status(parse(b"GET /ws?token=a HTTP/1.1\r\nHost: a\r\n\r\n", &policy())), 426);
        let accept = String::from_utf8(switching_protocols(KEY)).unwrap();
        assert!(accept.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455's example");
    }

    #[test]
    fn every_response_carries_the_security_headers() {
        let text =
            String::from_utf8(Response::error(404, "NOT_FOUND", "x").with_cors(Some("http://a".into())).to_bytes())
                .unwrap();
        for h in [
            "Content-Security-Policy: default-src 'none'",
            "frame-ancestors 'none'",
            "X-Content-Type-Options: nosniff",
            "X-Frame-Options: DENY",
            "Access-Control-Allow-Origin: http://a",
            "Connection: close",
        ] {
            assert!(text.contains(h), "{h} missing:\n{text}");
        }
    }
}
