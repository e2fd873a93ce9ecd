//! The admin HTTP listener as a network peer reaches it.
//!
//! The request-head parser (`parse_head` in src/admin/http.rs) is private to `realm::admin`, so this target goes
//! through the one public way in: a real listener (`realm::admin::spawn` on 127.0.0.1, port 0, started once per
//! process) and a TCP connection per input. That covers the parser and the connection state machine around it
//! (reading, the head limit, answering, the lingering close).
//!
//! Input: `[flags] [request...]`. Flags bit 0 puts the server in phase Ready (else Starting); the other bits seed
//! how the request is split into writes. After the last write the client shuts down its sending side and reads to
//! EOF.
//!
//! Checked: the server answers or closes within 10 s (nothing hangs on a peer that stopped sending); an answer is
//! one HTTP/1.1 response with a status the listener documents, and its `Content-Length` is the length of its body
//! (or the body is absent, for `HEAD`).
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use realm::admin::{AdminServer, AdminState, Phase};
use realm::config::Config;
use realm::metrics::Metrics;
use realm_fuzz::{ignore_sigpipe, Chunker, Input};

struct Admin {
    server: AdminServer,
    state: Arc<AdminState>,
}

fn admin() -> &'static Admin {
    static ADMIN: OnceLock<Admin> = OnceLock::new();
    ADMIN.get_or_init(|| {
        ignore_sigpipe();
        let mut config = Config::default();
        config.admin.host = "127.0.0.1".parse().expect("loopback");
        config.admin.port = 0;
        let metrics = Arc::new(Metrics::new(&config.server.zone));
        let state = Arc::new(AdminState::from_config(&config, &metrics));
        let server = realm::admin::spawn(&config, Arc::clone(&state), metrics).expect("admin listener");
        Admin { server, state }
    })
}

const STATUSES: &[&str] = &["200", "400", "404", "405", "408", "414", "431", "503"];

fuzz_target!(|data: &[u8]| {
    let admin = admin();
    let mut input = Input::new(data);
    let flags = input.byte();
    let request = input.rest();
    admin.state.set_phase(if flags & 1 != 0 { Phase::Ready } else { Phase::Starting });
    let response = exchange(admin.server.local_addr(), Chunker::new(flags >> 1), request);
    check(&response);
});

fn exchange(addr: SocketAddr, chunker: Chunker, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin listener");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    for chunk in chunker.split(request) {
        // The server may answer and stop reading early (a head over the limit): later writes may fail.
        if stream.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the admin listener neither answered nor closed within 10 s"
        );
    }
    abort_on_close(&stream);
    response
}

/// Closes with a reset rather than a FIN, so the loopback's TIME_WAIT sockets do not use up the ephemeral ports at
/// thousands of connections a second.
fn abort_on_close(stream: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `linger` is a valid `struct linger` that outlives the call, and the length passed is its size; the
    // descriptor is open (owned by `stream`).
    #[allow(unsafe_code)]
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn check(response: &[u8]) {
    if response.is_empty() {
        // Closed without an answer: only for a head that never completed (EOF before the end of the head).
        return;
    }
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").expect("response head ends with CRLF CRLF");
    let head = std::str::from_utf8(&response[..end]).expect("response head is ASCII");
    let body = &response[end + 4..];
    let status = head.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)).expect("HTTP/1.1 status line");
    assert!(STATUSES.contains(&status), "undocumented status {status}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("numeric Content-Length");
    assert!(body.len() == length || body.is_empty(), "Content-Length {length}, body {} bytes", body.len());
    assert!(head.contains("\r\nConnection: close"), "every answer closes");
}
