//! The admin event loop: one mio `Poll` on the `realm-admin` thread, a listener, at most [`MAX_CONNECTIONS`]
//! non-blocking connections (plus a few refusal slots), each moving Reading -> Writing -> Lingering under a deadline.
//!
//! # Slow clients
//!
//! A deadline alone does not protect probes: ~70 clients that connect, dribble a byte now and then and reconnect
//! when closed keep all [`MAX_CONNECTIONS`] slots busy, and every kubelet probe or Prometheus scrape that arrives
//! meanwhile is refused. So when the table is full, a new connection **evicts** the connection that has held its
//! slot longest without being answered, never the newcomer (nginx does the same when it runs out of connections:
//! `ngx_drain_connections` closes the oldest ones still waiting for a request). A probe sends its whole head in
//! one packet and each new connection's head is read at once, right after its accept, so a probe is answered in
//! microseconds and never becomes the oldest reader; the slow clients only evict each other. Victims, oldest
//! first: a lingering connection (its answer is already written; closing it early costs an honest client
//! nothing), then a reading one (told 408). Connections still
//! writing an answer are never evicted; only when all 64 are writing is a newcomer refused 503 (at most
//! [`WRITE_TIMEOUT`] later a slot frees). Each loop turn drives the ready connections before it accepts, and
//! accepts at most [`ACCEPT_BURST`] (half the table) before polling again, so a connection accepted before its
//! head arrived is read as soon as the head is there, before enough newer ones can come to make it the oldest.
//!
//! Not chosen: a per-address cap (kubelet probes come from the node's address and Prometheus from one pod, as
//! can an attacker on the same node or behind the same NAT; on the default loopback bind everyone is 127.0.0.1,
//! so the cap would shed the probes with the attacker), and a shorter head deadline under pressure (a flood
//! that reconnects refills the table within the shorter deadline too; eviction makes the pressure itself the
//! deadline). Every refusal, eviction, drop and head timeout is counted in
//! `game_server_admin_connections_shed_total{reason}`.
//!
//! Invariant: every connection always has a deadline and no socket call can block, so one stalled or hostile
//! peer delays nobody else; a new connection always gets a slot unless every slot is writing an answer; the loop
//! wakes at least every watchdog interval to run the freeze check.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::http::{parse_head, Head, Response, Route, Status, MAX_HEAD_BYTES};
use super::{AdminState, Phase};
use crate::metrics::{self, Metrics};

/// The listener's token.
const LISTENER: Token = Token(0);
/// The stop waker's token.
pub(super) const WAKER: Token = Token(1);
/// Connection `i` uses `Token(FIRST_CONNECTION + i)`.
const FIRST_CONNECTION: usize = 2;

/// Most admin connections held at once; past this a new connection evicts the oldest unanswered one (see the
/// module doc), and is answered 503 only when every connection is busy writing an answer.
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
/// Most connections accepted before the loop polls again: fewer than [`MAX_CONNECTIONS`], so a connection whose
/// head had not arrived at its accept is read in the next turn, before a burst of newer ones can evict it.
const ACCEPT_BURST: usize = MAX_CONNECTIONS / 2;

/// `game_server_admin_connections_shed_total{reason}`: admin connections closed or turned away before being
/// served, by reason. Pre-resolved: the admin loop increments a handle, never looks up a label.
struct ShedCounters {
    /// Evicted while reading its head, for a newer connection (the table was full).
    evicted: IntCounter,
    /// Answered 503 from a refusal slot (every connection was writing an answer).
    refused: IntCounter,
    /// Closed unanswered: the refusal slots were full too.
    dropped: IntCounter,
    /// Answered 408: the head did not arrive within [`HEAD_TIMEOUT`].
    head_timeout: IntCounter,
}

impl ShedCounters {
    const NAME: &'static str = "game_server_admin_connections_shed_total";

    fn register(registry: &Registry) -> io::Result<ShedCounters> {
        let help = "Admin HTTP connections closed or refused before being served, by reason (evicted, refused, \
                    dropped, head_timeout)";
        let family = IntCounterVec::new(Opts::new(Self::NAME, help), &["reason"]).map_err(io::Error::other)?;
        registry.register(Box::new(family.clone())).map_err(|e| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: {e} (one admin listener per Metrics)", Self::NAME),
            )
        })?;
        let reason = |r: &str| family.with_label_values(&[r]);
        Ok(ShedCounters {
            evicted: reason("evicted"),
            refused: reason("refused"),
            dropped: reason("dropped"),
            head_timeout: reason("head_timeout"),
        })
    }
}

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
    /// Accept order: the lowest among the evictable is the eviction victim.
    admitted: u64,
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
    /// Connections accepted so far (the next one's `admitted`).
    admitted: u64,
    /// The last accept burst stopped at [`ACCEPT_BURST`] with the backlog maybe not empty: accept again without
    /// waiting for a listener event (readiness is edge-triggered, none may come).
    accept_pending: bool,
    shed: ShedCounters,
}

impl AdminLoop {
    pub(super) fn new(
        poll: Poll,
        mut listener: TcpListener,
        state: Arc<AdminState>,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<AdminLoop> {
        let shed = ShedCounters::register(metrics.registry())?;
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
            admitted: 0,
            accept_pending: false,
            shed,
        })
    }

    pub(super) fn run(&mut self) {
        while !self.stop.load(Ordering::Acquire) {
            let timeout = if self.accept_pending { Duration::ZERO } else { self.next_timeout(Instant::now()) };
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("admin poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            self.ready.clear();
            self.ready.extend(self.events.iter().map(|e| e.token()));
            // Connections first, then new ones: a head that arrived since the last turn is read before any newer
            // connection can make its sender the oldest reader.
            let mut accept = self.accept_pending;
            for i in 0..self.ready.len() {
                match self.ready[i] {
                    LISTENER => accept = true,
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST_CONNECTION),
                }
            }
            if accept {
                self.accept();
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
        self.accept_pending = false;
        let mut accepted = 0;
        loop {
            if accepted == ACCEPT_BURST {
                self.accept_pending = true;
                return;
            }
            match self.listener.accept() {
                Ok((stream, _peer)) => {
                    accepted += 1;
                    self.admit(stream);
                }
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
        let slot = self.free_slot(0..MAX_CONNECTIONS).or_else(|| self.evict_oldest());
        let (slot, stage, deadline) = if let Some(slot) = slot {
            (slot, Stage::Reading, now + HEAD_TIMEOUT)
        } else if let Some(slot) = self.free_slot(MAX_CONNECTIONS..self.conns.len()) {
            // Every connection is writing an answer: answered 503 at once from a refusal slot (with the same
            // lingering close, so the client reads the answer rather than a reset), never queued.
            self.shed.refused.inc();
            let out = Response::text(Status::Unavailable, "too many admin connections\n").to_bytes(false);
            (slot, Stage::Writing { out, written: 0 }, now + LINGER_TIMEOUT)
        } else {
            self.shed.dropped.inc();
            log::debug!("admin connection dropped: every slot busy");
            return;
        };
        let token = Token(FIRST_CONNECTION + slot);
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            log::warn!("cannot register admin connection: {e}");
            return;
        }
        let _ = stream.set_nodelay(true);
        self.admitted += 1;
        self.conns[slot] = Some(Conn { stream, buf: Vec::new(), stage, deadline, admitted: self.admitted });
        // Read the head now rather than after the next poll: a probe's head is usually here already, and once it
        // is answered it can no longer be evicted as a reader.
        self.drive(slot);
    }

    fn free_slot(&self, mut range: std::ops::Range<usize>) -> Option<usize> {
        range.find(|&i| self.conns[i].is_none())
    }

    /// Frees the slot of the oldest evictable connection (lingering first, then reading) and returns it; `None`
    /// when every connection is writing an answer.
    #[cold]
    fn evict_oldest(&mut self) -> Option<usize> {
        let oldest = |lingering: bool| {
            (0..MAX_CONNECTIONS)
                .filter_map(|i| self.conns[i].as_ref().map(|c| (i, c)))
                .filter(|(_, c)| match c.stage {
                    Stage::Lingering { .. } => lingering,
                    Stage::Reading => !lingering,
                    Stage::Writing { .. } => false,
                })
                .min_by_key(|(_, c)| c.admitted)
                .map(|(i, _)| i)
        };
        let slot = oldest(true).or_else(|| oldest(false))?;
        let mut conn = self.conns[slot].take()?;
        if matches!(conn.stage, Stage::Reading) {
            // Best effort, one non-blocking write: say why, then close. A reader too slow to have sent its head
            // by now is the slow client the table is full of.
            self.shed.evicted.inc();
            let out = Response::error(Status::RequestTimeout).to_bytes(false);
            let _ = write_all_nonblocking(&mut conn.stream, &out, &mut 0);
            let _ = conn.stream.shutdown(Shutdown::Write);
        } else {
            // Lingering: drain what the client sent since, so the close is a FIN behind its answer, not a reset.
            let _ = linger(&mut conn.stream, &mut 0);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        Some(slot)
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
                self.shed.head_timeout.inc();
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
                    Phase::Ready if !self.state.accepts_players() => Response::text(Status::Unavailable, "full\n"),
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
