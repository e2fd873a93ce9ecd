//! The admin event loop: one mio `Poll` on the `realm-admin` thread, a listener, at most [`MAX_CONNECTIONS`]
//! non-blocking connections (plus a few refusal slots), each moving Reading -> Writing -> Lingering under a deadline.
//!
//! Invariant: every connection always has a deadline and no socket call can block, so one stalled or hostile
//! peer delays nobody else; the loop wakes at least every watchdog interval to run the freeze check.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::http::{parse_head, Head, Response, Route, Status, MAX_HEAD_BYTES};
use super::{AdminState, Phase};
use crate::metrics::{self, Metrics};

/// The listener's token.
const LISTENER: Token = Token(0);
/// The stop waker's token.
pub(super) const WAKER: Token = Token(1);
/// Connection `i` uses `Token(FIRST_CONNECTION + i)`.
const FIRST_CONNECTION: usize = 2;

/// Most admin requests served at once; more connections are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections beyond [`MAX_CONNECTIONS`] held just long enough to be told 503; past these they are dropped.
const REFUSAL_SLOTS: usize = 16;
/// The whole request head must arrive within this (slowloris: dribbling bytes does not extend it).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// The response must be taken by the client within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, unread client bytes are drained for at most this long before closing, so the close is a FIN,
/// not a reset that could destroy the answer in flight.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// ... and at most this many bytes.
const LINGER_MAX_BYTES: usize = 64 * 1024;

enum Stage {
    Reading,
    Writing { out: Vec<u8>, written: usize },
    Lingering { discarded: usize },
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    stage: Stage,
    deadline: Instant,
}

/// What a socket step ended with.
enum Next {
    /// Wait for readiness.
    Wait,
    /// Close the connection now.
    Close,
}

pub(super) struct AdminLoop {
    poll: Poll,
    listener: TcpListener,
    state: Arc<AdminState>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    conns: Vec<Option<Conn>>,
    events: Events,
    ready: Vec<Token>,
    watchdog_every: Duration,
}

impl AdminLoop {
    pub(super) fn new(
        poll: Poll,
        mut listener: TcpListener,
        state: Arc<AdminState>,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<AdminLoop> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let watchdog_every = (state.freeze_after() / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
        Ok(AdminLoop {
            poll,
            listener,
            state,
            metrics,
            stop,
            conns: (0..MAX_CONNECTIONS + REFUSAL_SLOTS).map(|_| None).collect(),
            events: Events::with_capacity(128),
            ready: Vec::with_capacity(128),
            watchdog_every,
        })
    }

    pub(super) fn run(&mut self) {
        while !self.stop.load(Ordering::Acquire) {
            let timeout = self.next_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("admin poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            self.ready.clear();
            self.ready.extend(self.events.iter().map(|e| e.token()));
            for i in 0..self.ready.len() {
                match self.ready[i] {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST_CONNECTION),
                }
            }
            let now = Instant::now();
            self.expire(now);
            self.state.check_freeze(now);
        }
        for i in 0..self.conns.len() {
            self.close(i);
        }
    }

    fn next_timeout(&self, now: Instant) -> Duration {
        let soonest = self.conns.iter().flatten().map(|c| c.deadline.saturating_duration_since(now)).min();
        soonest.map_or(self.watchdog_every, |d| d.min(self.watchdog_every)).max(Duration::from_millis(1))
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _peer)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connection stays in the backlog for the next wake-up.
                    log::warn!("admin accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream) {
        let now = Instant::now();
        let free = |range: std::ops::Range<usize>| range.into_iter().find(|&i| self.conns[i].is_none());
        let (slot, stage, deadline) = if let Some(slot) = free(0..MAX_CONNECTIONS) {
            (slot, Stage::Reading, now + HEAD_TIMEOUT)
        } else if let Some(slot) = free(MAX_CONNECTIONS..self.conns.len()) {
            // Over the limit: answered 503 at once from a refusal slot (with the same lingering close, so the
            // client reads the answer rather than a reset), never queued behind the busy slots.
            let out = Response::text(Status::Unavailable, "too many admin connections\n").to_bytes(false);
            (slot, Stage::Writing { out, written: 0 }, now + LINGER_TIMEOUT)
        } else {
            log::debug!("admin connection dropped: every slot busy");
            return;
        };
        let token = Token(FIRST_CONNECTION + slot);
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            log::warn!("cannot register admin connection: {e}");
            return;
        }
        let _ = stream.set_nodelay(true);
        // Edge-triggered: readiness that predates registration is reported by the registration itself.
        self.conns[slot] = Some(Conn { stream, buf: Vec::new(), stage, deadline });
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else { continue };
            if conn.deadline > now {
                continue;
            }
            if matches!(conn.stage, Stage::Reading) {
                // Slowloris or silent client: say why (briefly), then close.
                conn.stage =
                    Stage::Writing { out: Response::error(Status::RequestTimeout).to_bytes(false), written: 0 };
                conn.deadline = now + LINGER_TIMEOUT;
                conn.buf = Vec::new();
                self.drive(slot);
            } else {
                self.close(slot);
            }
        }
    }

    /// Advances one connection as far as its socket allows.
    fn drive(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else { return };
        let next = self.step(&mut conn);
        match next {
            Next::Wait => self.conns[slot] = Some(conn),
            Next::Close => {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    fn step(&self, conn: &mut Conn) -> Next {
        if let Stage::Reading = conn.stage {
            let eof = match read_head(conn) {
                Ok(eof) => eof,
                Err(_) => return Next::Close,
            };
            let (response, head_only) = match parse_head(&conn.buf) {
                Head::NeedMore if eof => return Next::Close,
                Head::NeedMore => return Next::Wait,
                Head::Request { route, head_only } => (self.respond(route), head_only),
                Head::Reject(status) => (Response::error(status), false),
            };
            conn.stage = Stage::Writing { out: response.to_bytes(head_only), written: 0 };
            conn.deadline = Instant::now() + WRITE_TIMEOUT;
            conn.buf = Vec::new();
        }
        if let Stage::Writing { out, written } = &mut conn.stage {
            match write_all_nonblocking(&mut conn.stream, out, written) {
                Ok(true) => {}
                Ok(false) => return Next::Wait,
                Err(_) => return Next::Close,
            }
            if conn.stream.shutdown(Shutdown::Write).is_err() {
                return Next::Close;
            }
            conn.stage = Stage::Lingering { discarded: 0 };
            conn.deadline = Instant::now() + LINGER_TIMEOUT;
        }
        if let Stage::Lingering { discarded } = &mut conn.stage {
            return linger(&mut conn.stream, discarded);
        }
        Next::Wait
    }

    fn respond(&self, route: Route) -> Response {
        let now = Instant::now();
        match route {
            Route::Metrics => {
                Response { status: Status::Ok, content_type: metrics::CONTENT_TYPE, body: self.metrics.render() }
            }
            Route::Health => {
                self.state.check_freeze(now);
                let report = self.state.health(now);
                let status = if report.status.is_healthy() { Status::Ok } else { Status::Unavailable };
                Response { status, content_type: "application/json", body: report.to_json() }
            }
            Route::Ready => {
                if self.state.check_freeze(now) {
                    return Response::text(Status::Unavailable, "frozen\n");
                }
                match self.state.phase() {
                    Phase::Ready => Response::text(Status::Ok, "ready\n"),
                    other => Response::text(Status::Unavailable, format!("{}\n", other.label())),
                }
            }
        }
    }
}

/// Reads until the socket would block, the head buffer is full, or EOF; returns whether EOF was seen.
fn read_head(conn: &mut Conn) -> io::Result<bool> {
    let mut chunk = [0u8; 2048];
    loop {
        let room = MAX_HEAD_BYTES - conn.buf.len();
        if room == 0 {
            return Ok(false);
        }
        let want = room.min(chunk.len());
        match conn.stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(true),
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what is left of `out`; `Ok(true)` when all of it is written.
fn write_all_nonblocking(stream: &mut TcpStream, out: &[u8], written: &mut usize) -> io::Result<bool> {
    while *written < out.len() {
        match stream.write(&out[*written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Discards what the client still sends until it closes (or the budget runs out).
fn linger(stream: &mut TcpStream, discarded: &mut usize) -> Next {
    let mut sink = [0u8; 2048];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                *discarded += n;
                if *discarded > LINGER_MAX_BYTES {
                    return Next::Close;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}
