//! The io threads: pinned mio event loops that own the game sockets and only move bytes.
//!
//! Each thread `realm-io-K` has its own `Poll`, a `SO_REUSEPORT` TCP listener and UDP socket on the game port, and
//! the TLS connections it accepted. It reads like mio's `tcp_server` example: `match token`, handle until
//! `WouldBlock`. Protocol decisions are made by the sans-IO cores ([`ControlSession`], [`SessionTable`]); this
//! module feeds them bytes and instants and carries their output:
//!
//! * inbound — everything one poll iteration produced is linked privately and published to the simulation's
//!   queue with one `push_chain` (one atomic swap per iteration, not per packet);
//! * outbound — the simulation pushes [`Outbound`] items to this thread's own queue and wakes it with its
//!   `mio::Waker` once per tick.
//!
//! Invariant: an io thread never blocks on anything but `Poll::poll`, and never runs game logic.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use rustls::ServerConfig;

use crate::net::session::{CloseReason, ControlSession, SessionEvent, SessionLimits, SessionState};
use crate::net::udp::batch::{bind_reuseport, RecvBatch, SendBatch};
use crate::net::udp::{self, DataKeys, SessionTable, EXPORTER_LABEL};
use crate::proto::{control_message::Body, KickReason};
use crate::queue::{self, Pop, Producer};

pub use crate::link::{Inbound, IoHandle, Outbound, SessionId, SimWaker};

/// The next connection waiting on `listener`; `None` once there is none (or accepting failed: EMFILE and friends
/// are logged, and tried again at the next readiness event).
pub(crate) fn accept_one(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    loop {
        match listener.accept() {
            Ok(pair) => return Some(pair),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("accept on {:?} failed: {e}", listener.local_addr().ok());
                return None;
            }
        }
    }
}

/// The simulation's view of a session's end.
fn disconnected(session: SessionId, reason: &CloseReason) -> Inbound {
    let departure = match reason {
        CloseReason::PeerClosed | CloseReason::Io(_) | CloseReason::Tls(_) => crate::link::Departure::Dropped,
        _ => crate::link::Departure::Ended,
    };
    Inbound::Disconnected { session, departure, reason: reason.label() }
}

/// Counters shared by all io threads (exported as metrics).
#[derive(Debug, Default)]
pub struct NetStats {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Connections refused because `net.max_connections` was reached.
    pub refused_max_connections: AtomicU64,
    /// Connections refused by the per-IP rate limit.
    pub refused_rate_limited: AtomicU64,
    /// Connections refused because their address had `net.max_connections_per_ip` open.
    pub refused_per_ip: AtomicU64,
    /// Connections refused because their address had `net.max_unauthenticated_per_ip` open and not logged in.
    pub refused_unauthenticated_per_ip: AtomicU64,
    /// Sessions that completed TLS + Hello.
    pub handshakes: AtomicU64,
    /// Open TCP connections.
    pub open_connections: AtomicUsize,
    /// Open TCP connections that logged in (the rest can be evicted to make room at `max_connections`).
    pub authenticated_connections: AtomicUsize,
    /// io threads whose event loop is running.
    pub io_threads_running: AtomicUsize,
    /// Inbound control messages dropped for lack of credits.
    pub control_dropped_flood: AtomicU64,
    /// Sessions closed, by [`CloseReason::label`] (index in [`CLOSE_LABELS`]).
    pub closed: [AtomicU64; CLOSE_LABELS.len()],
    /// Datagrams accepted.
    pub udp_in: AtomicU64,
    /// Datagrams sent.
    pub udp_out: AtomicU64,
    /// Control frames received.
    pub tcp_frames_in: AtomicU64,
    /// Control frames sent.
    pub tcp_frames_out: AtomicU64,
    /// TLS bytes received.
    pub tcp_bytes_in: AtomicU64,
    /// TLS bytes sent.
    pub tcp_bytes_out: AtomicU64,
    /// UDP payload bytes received (accepted or not).
    pub udp_bytes_in: AtomicU64,
    /// UDP payload bytes sent.
    pub udp_bytes_out: AtomicU64,
    /// Datagrams not sent because the socket's buffer was full or the kernel refused them.
    pub udp_send_dropped: AtomicU64,
    /// Datagrams dropped, by [`udp::UdpError::reason`] (index in `UdpError::REASONS`).
    pub udp_dropped: [AtomicU64; 32],
}

/// Labels of [`NetStats::closed`].
pub const CLOSE_LABELS: &[&str] = &[
    "peer_closed",
    "tls_error",
    "frame_error",
    "protocol_error",
    "handshake_timeout",
    "idle_timeout",
    "flood",
    "slow_consumer",
    "kicked",
    "io_error",
    "login_timeout",
    "login_attempts",
    "evicted",
];

impl NetStats {
    fn count_close(&self, reason: &CloseReason) {
        if let Some(i) = CLOSE_LABELS.iter().position(|l| *l == reason.label()) {
            self.closed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_udp_drop(&self, e: &udp::UdpError) {
        let reason = e.reason();
        let i = udp::UdpError::REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        if let Some(c) = self.udp_dropped.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closed sessions for one label.
    pub fn closed_by(&self, label: &str) -> u64 {
        CLOSE_LABELS.iter().position(|l| *l == label).map_or(0, |i| self.closed[i].load(Ordering::Relaxed))
    }

    /// Dropped datagrams for one reason.
    pub fn udp_dropped_by(&self, reason: &str) -> u64 {
        udp::UdpError::REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.udp_dropped.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Per-source-IP connection rate limit shared by all io threads (with SO_REUSEPORT one address's connections
/// land on several threads, so a per-thread limit would multiply the budget).
pub struct ConnectRateLimiter {
    max: u32,
    seen: crate::limits::PerAddressWindow,
}

impl ConnectRateLimiter {
    /// At most `max` connections per address per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self { max, seen: crate::limits::PerAddressWindow::new(window) }
    }

    /// Counts a connection attempt; false when the address is over its budget.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        self.seen.add(ip, now) <= self.max
    }
}

/// Open connections per source address, shared by all io threads: how many, and how many of them have not logged
/// in. A flood of silent or half-open connections from a few addresses cannot take every slot.
pub struct PerAddress {
    max_open: usize,
    max_unauthenticated: usize,
    open: Mutex<HashMap<IpAddr, (u32, u32)>>,
}

/// Why [`PerAddress::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRefusal {
    /// `net.max_connections_per_ip` connections from this address are open.
    Open,
    /// `net.max_unauthenticated_per_ip` connections from this address are open and not logged in.
    Unauthenticated,
}

impl PerAddress {
    /// Caps of open and of not-yet-authenticated connections per address (0 = no cap).
    pub fn new(max_open: usize, max_unauthenticated: usize) -> Self {
        Self { max_open, max_unauthenticated, open: Mutex::new(HashMap::new()) }
    }

    /// Counts a new (unauthenticated) connection from `ip`, or refuses it.
    pub fn admit(&self, ip: IpAddr) -> Result<(), AddressRefusal> {
        let mut open = self.open.lock();
        let (all, unauthenticated) = open.entry(ip).or_insert((0, 0));
        if self.max_open > 0 && *all as usize >= self.max_open {
            return Err(AddressRefusal::Open);
        }
        if self.max_unauthenticated > 0 && *unauthenticated as usize >= self.max_unauthenticated {
            return Err(AddressRefusal::Unauthenticated);
        }
        *all += 1;
        *unauthenticated += 1;
        Ok(())
    }

    /// A connection from `ip` logged in.
    pub fn authenticated(&self, ip: IpAddr) {
        if let Some((_, unauthenticated)) = self.open.lock().get_mut(&ip) {
            *unauthenticated = unauthenticated.saturating_sub(1);
        }
    }

    /// A connection from `ip` ended.
    pub fn release(&self, ip: IpAddr, was_authenticated: bool) {
        let mut open = self.open.lock();
        if let Some((all, unauthenticated)) = open.get_mut(&ip) {
            *all = all.saturating_sub(1);
            if !was_authenticated {
                *unauthenticated = unauthenticated.saturating_sub(1);
            }
            if *all == 0 {
                open.remove(&ip);
            }
        }
    }

    /// (open, unauthenticated) connections from `ip`.
    pub fn count(&self, ip: IpAddr) -> (u32, u32) {
        self.open.lock().get(&ip).copied().unwrap_or((0, 0))
    }
}

/// Everything the io threads share.
pub struct NetShared {
    /// UDP sessions (any io thread may receive any session's datagrams).
    pub udp: SessionTable<u32>,
    /// Counters.
    pub stats: NetStats,
    /// Per-IP connection rate limit.
    pub rate: ConnectRateLimiter,
    /// Per-IP caps of open and of unauthenticated connections.
    pub per_address: PerAddress,
    /// Max simultaneous connections.
    pub max_connections: usize,
    /// Set when the io threads stop accepting (drain).
    pub draining: AtomicBool,
    /// io threads started by [`spawn`].
    pub io_threads: AtomicUsize,
    /// Wakes the simulation between ticks for logins and resumes.
    pub sim_waker: Arc<SimWaker>,
    /// Connections accepted over `max_connections` by a thread that had none of its own to evict: another io
    /// thread closes one of its connections that have not logged in for each (at its next sweep).
    pub evictions_owed: AtomicUsize,
}

/// Whether a new player could connect now, as `/ready` and `/health` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepting {
    /// A connection would be accepted (a free slot, or one not logged in to evict).
    Yes,
    /// Every slot holds a logged-in player: new connections are refused until one leaves.
    Full,
    /// An io thread stopped: its sockets and players are gone and it accepts nothing.
    IoStopped,
}

impl std::fmt::Debug for NetShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetShared")
            .field("max_connections", &self.max_connections)
            .field("open", &self.stats.open_connections.load(Ordering::Relaxed))
            .field("accepting", &self.accepting())
            .finish_non_exhaustive()
    }
}

impl NetShared {
    /// The per-address checks every new connection passes (game port and browser endpoint alike): the connect
    /// rate, then the address's caps on open and on unauthenticated connections. A refusal is counted by reason;
    /// an admitted connection must be given back with `per_address.release`.
    pub fn admit_address(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.rate.allow(ip, now) {
            self.stats.refused_rate_limited.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if let Err(refusal) = self.per_address.admit(ip) {
            let counter = match refusal {
                AddressRefusal::Open => &self.stats.refused_per_ip,
                AddressRefusal::Unauthenticated => &self.stats.refused_unauthenticated_per_ip,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether a new player could connect now.
    pub fn accepting(&self) -> Accepting {
        let s = &self.stats;
        if s.io_threads_running.load(Ordering::Relaxed) < self.io_threads.load(Ordering::Relaxed) {
            return Accepting::IoStopped;
        }
        let open = s.open_connections.load(Ordering::Relaxed);
        let authenticated = s.authenticated_connections.load(Ordering::Relaxed);
        if open >= self.max_connections && authenticated >= open {
            Accepting::Full
        } else {
            Accepting::Yes
        }
    }
}

impl NetShared {
    /// Shared state from the configuration.
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            udp: SessionTable::with_limits(udp::BindingLimits {
                challenge_timeout: Duration::from_millis(config.net.udp_challenge_timeout_ms),
                silence_timeout: Duration::from_millis(config.net.udp_silence_timeout_ms),
            }),
            stats: NetStats::default(),
            rate: ConnectRateLimiter::new(
                config.net.connect_rate_max,
                Duration::from_secs(config.net.connect_rate_window_secs),
            ),
            per_address: PerAddress::new(config.net.max_connections_per_ip, config.net.max_unauthenticated_per_ip),
            max_connections: config.net.max_connections,
            draining: AtomicBool::new(false),
            io_threads: AtomicUsize::new(0),
            sim_waker: Arc::new(SimWaker::default()),
            evictions_owed: AtomicUsize::new(0),
        }
    }
}

/// The running io threads.
pub struct IoThreads {
    /// One handle per thread, indexed by [`Inbound::Connected::io`].
    pub handles: Vec<IoHandle>,
    /// The game address actually bound (port resolved when configured as 0).
    pub local_addr: SocketAddr,
    /// Thread handles, for joining at shutdown.
    pub joins: Vec<JoinHandle<()>>,
    /// The browser endpoint's address, when enabled.
    pub web_addr: Option<SocketAddr>,
}

/// How many io threads to run when the configuration says 0: one per core but one (the simulation's), between 1
/// and 4. On a 2-core machine that is one io thread and the simulation on the other core.
pub fn default_io_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).clamp(1, 4)
}

/// Binds the game sockets and starts the io threads. Sockets are bound here, before any thread starts, so a
/// bind error is returned to the caller and port 0 resolves to one port shared by every thread.
///
/// Inbound items are converted into the consumer's event type `E`, so io threads and workers can feed one queue.
pub fn spawn<E: From<Inbound> + Send + 'static>(
    config: &crate::config::Config,
    tls: Arc<ServerConfig>,
    inbound: Producer<E>,
    shared: Arc<NetShared>,
) -> io::Result<IoThreads> {
    let threads = match config.server.io_threads {
        0 => default_io_threads(),
        n => n,
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut addr = SocketAddr::new(config.server.host, config.server.port);
    let mut sockets = Vec::with_capacity(threads);
    let mut web_addr = config.server.web_enabled.then(|| SocketAddr::new(config.server.host, config.server.ws_port));
    for _ in 0..threads {
        let listener = bind_listener(addr)?;
        addr = listener.local_addr()?;
        let udp = bind_reuseport(addr, 4 << 20)?;
        let web = match web_addr {
            Some(a) => {
                let l = bind_listener(a)?;
                web_addr = Some(l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        sockets.push((listener, udp, web));
    }
    let web_settings = super::web::WebSettings {
        origins: super::web::http::OriginPolicy {
            allowed: config.server.web_allowed_origins.clone(),
            tls: config.server.ws_tls,
        },
        max_message: config.server.ws_max_message_bytes,
        idle_timeout: Duration::from_millis(config.net.idle_timeout_ms),
        login_timeout: Duration::from_millis(config.net.login_timeout_ms),
    };
    let limits = SessionLimits::from_config(config);
    let mut handles = Vec::with_capacity(threads);
    let mut joins = Vec::with_capacity(threads);
    for (index, (listener, udp, web)) in sockets.into_iter().enumerate() {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = queue::channel::<Outbound>();
        let backlog = Arc::new(AtomicUsize::new(0));
        handles.push(IoHandle::new(tx, Arc::new(move || waker.wake()), Arc::clone(&backlog)));
        let core = match config.server.io_cores.get(index) {
            Some(&c) => cores.iter().find(|id| id.id == c).copied(),
            None => cores.get(index % cores.len().max(1)).copied(),
        };
        let mut thread = IoThread {
            index,
            poll,
            listener,
            udp,
            tls: Arc::clone(&tls),
            limits: limits.clone(),
            conns: Vec::new(),
            free: Vec::new(),
            by_session: HashMap::new(),
            unauthenticated: std::collections::VecDeque::new(),
            outbound: rx,
            backlog,
            inbound: inbound.clone(),
            pending: Vec::with_capacity(256),
            wake_sim: false,
            shared: Arc::clone(&shared),
            next_session: 0,
            recv: RecvBatch::new(32),
            send: SendBatch::new(32),
            shutting_down: None,
            web: web.map(|l| {
                let tls = config.server.ws_tls.then(|| Arc::clone(&tls));
                super::web::Gateway::new(l, tls, web_settings.clone(), index)
            }),
        };
        let nice = config.server.io_nice;
        let running = Arc::clone(&shared);
        running.io_threads.fetch_add(1, Ordering::Relaxed);
        running.stats.io_threads_running.fetch_add(1, Ordering::Relaxed);
        let join = std::thread::Builder::new().name(format!("realm-io-{index}")).spawn(move || {
            crate::os::place_current_thread(&format!("realm-io-{index}"), core, nice, 0);
            let result = thread.run();
            if let Err(e) = &result {
                log::error!("realm-io-{index} stopped: {e}");
            }
            // Counted as stopped unless it ended because it was told to shut down.
            if result.is_err() || thread.shutting_down.is_none() {
                running.stats.io_threads_running.fetch_sub(1, Ordering::Relaxed);
            }
        })?;
        joins.push(join);
    }
    log::info!("listening on {addr} (TLS over TCP, UDP data channel) with {threads} io thread(s)");
    Ok(IoThreads { handles, local_addr: addr, joins, web_addr })
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // A connection reaches `accept` with its ClientHello: one wake-up of the io thread per new connection
    // instead of two, and a client that connects and says nothing costs a kernel request for about a second
    // (then it is accepted and meets the handshake timeout) instead of a session slot from the first moment.
    if let Err(e) = crate::os::set_tcp_defer_accept(&socket, 1) {
        log::warn!("TCP_DEFER_ACCEPT not available on {addr}: {e}");
    }
    Ok(TcpListener::from_std(socket.into()))
}

const LISTENER: Token = Token(0);
const UDP: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 16;
/// How often deadlines are checked; handshake/idle timeouts are seconds, so 100 ms resolution is plenty.
const SWEEP: Duration = Duration::from_millis(100);

struct Conn {
    stream: TcpStream,
    session: ControlSession,
    id: SessionId,
    addr: SocketAddr,
    interest: Interest,
    reported_disconnect: bool,
    udp_registered: bool,
    /// Counted as authenticated in [`PerAddress`] (the session sent `LoginOk`).
    authenticated: bool,
    /// Accepted over `max_connections` on another thread's eviction (`owe_eviction`): never the one evicted to
    /// pay that debt.
    on_credit: bool,
}

struct IoThread<E> {
    index: usize,
    poll: Poll,
    listener: TcpListener,
    udp: UdpSocket,
    tls: Arc<ServerConfig>,
    limits: SessionLimits,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_session: HashMap<SessionId, usize>,
    /// Connections in accept order that had not logged in when accepted (lazily pruned): at `max_connections`
    /// the oldest of them still not logged in is closed to make room.
    unauthenticated: std::collections::VecDeque<(usize, SessionId)>,
    outbound: queue::Consumer<Outbound>,
    backlog: Arc<AtomicUsize>,
    inbound: Producer<E>,
    /// Inbound items of this poll iteration, published with one `push_chain`.
    pending: Vec<Inbound>,
    /// `pending` holds a login or resume: wake the simulation when publishing.
    wake_sim: bool,
    shared: Arc<NetShared>,
    next_session: u64,
    recv: RecvBatch,
    send: SendBatch,
    shutting_down: Option<Instant>,
    /// The browser endpoint on this thread, when enabled.
    web: Option<super::web::Gateway>,
}

impl<E: From<Inbound>> IoThread<E> {
    fn run(&mut self) -> io::Result<()> {
        self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE)?;
        self.poll.registry().register(&mut self.udp, UDP, Interest::READABLE)?;
        if let Some(web) = &mut self.web {
            self.poll.registry().register(web.listener(), super::web::LISTENER, Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let timeout = next_sweep.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.shared.udp.advance_clock(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    UDP => self.receive_datagrams(now),
                    WAKER => {}
                    super::web::LISTENER => self.web_accept(now),
                    Token(t) if t >= super::web::FIRST_CONN => {
                        if let Some(web) = &mut self.web {
                            let ctx = super::web::Ctx { registry: self.poll.registry(), shared: &self.shared };
                            web.ready(&ctx, t, now);
                        }
                    }
                    // A reset arrives as an error/hang-up event: read it too, so the session sees the error.
                    Token(t) => self.conn_ready(
                        t - FIRST_CONN,
                        event.is_readable() || event.is_error() || event.is_read_closed(),
                        now,
                    ),
                }
            }
            self.drain_outbound(now);
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP;
            }
            self.publish();
            if let Some(deadline) = self.shutting_down {
                if (self.by_session.is_empty() && self.web.as_ref().is_none_or(|w| w.is_empty())) || now >= deadline {
                    return Ok(());
                }
            }
        }
    }

    fn web_accept(&mut self, now: Instant) {
        let refuse_all = self.shutting_down.is_some() || self.shared.draining.load(Ordering::Relaxed);
        if let Some(web) = &mut self.web {
            let ctx = super::web::Ctx { registry: self.poll.registry(), shared: &self.shared };
            web.accept(&ctx, now, refuse_all);
        }
    }

    /// Publishes this iteration's inbound items with one swap.
    fn publish(&mut self) {
        if let Some(web) = &mut self.web {
            self.pending.append(&mut web.pending);
            self.wake_sim |= std::mem::take(&mut web.wake_sim);
        }
        if self.pending.is_empty() {
            return;
        }
        let mut chain = self.inbound.chain();
        for item in self.pending.drain(..) {
            chain.push(E::from(item));
        }
        self.inbound.push_chain(chain);
        if std::mem::take(&mut self.wake_sim) {
            self.shared.sim_waker.wake();
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some((mut stream, addr)) = accept_one(&self.listener) else { return };
            if self.shutting_down.is_some() || self.shared.draining.load(Ordering::Relaxed) {
                continue; // dropping the stream closes it
            }
            // The address's own caps first: a connection they refuse must not cost anyone else their slot.
            if !self.shared.admit_address(addr.ip(), now) {
                continue;
            }
            let full = self.shared.stats.open_connections.load(Ordering::Relaxed) >= self.shared.max_connections;
            let on_credit = full && !self.evict_oldest_unauthenticated(false);
            if on_credit && !self.owe_eviction() {
                self.shared.per_address.release(addr.ip(), false);
                self.shared.stats.refused_max_connections.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let stats = &self.shared.stats;
            let session = match ControlSession::new(Arc::clone(&self.tls), self.limits.clone(), now) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot create TLS session: {e}");
                    self.shared.per_address.release(addr.ip(), false);
                    continue;
                }
            };
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if let Err(e) = self.poll.registry().register(&mut stream, Token(slot + FIRST_CONN), Interest::READABLE) {
                log::warn!("cannot register connection from {addr}: {e}");
                self.free.push(slot);
                self.shared.per_address.release(addr.ip(), false);
                continue;
            }
            let _ = stream.set_nodelay(true);
            // Session ids: io thread index in the top byte, a per-thread counter below. Unique per process; the
            // UDP channel's proof is the AEAD key, not the id, so predictability is harmless.
            self.next_session += 1;
            let id = ((self.index as u64) << 56) | self.next_session;
            self.by_session.insert(id, slot);
            self.unauthenticated.push_back((slot, id));
            self.conns[slot] = Some(Conn {
                stream,
                session,
                id,
                addr,
                interest: Interest::READABLE,
                reported_disconnect: false,
                udp_registered: false,
                authenticated: false,
                on_credit,
            });
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            stats.open_connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// At capacity: closes this thread's oldest connection that has not logged in, so a flood of silent or
    /// half-open connections costs its own members their slots instead of refusing every new player. Returns
    /// whether a slot was freed. Paying a debt (`paying`), a connection accepted on credit is spared: the debt
    /// was made to let it in, and the thread that accepted it would otherwise pay with the newcomer itself (its
    /// only connection not logged in) and keep the oldest elsewhere.
    #[cold]
    fn evict_oldest_unauthenticated(&mut self, paying: bool) -> bool {
        for _ in 0..self.unauthenticated.len() {
            let Some((slot, id)) = self.unauthenticated.pop_front() else { break };
            let Some(Some(conn)) = self.conns.get_mut(slot) else { continue };
            if conn.id != id || conn.session.is_authenticated() || conn.session.is_closing() {
                continue;
            }
            if paying && conn.on_credit {
                self.unauthenticated.push_back((slot, id));
                continue;
            }
            if conn.session.state() == SessionState::Authenticating {
                // Its login is with the server now: it is spared, and goes to the back of the line in case that
                // login fails.
                self.unauthenticated.push_back((slot, id));
                continue;
            }
            log::debug!("session {id:#x} from {} evicted: at net.max_connections", conn.addr);
            conn.session.close(
                KickReason::ConnectionLimit,
                "server full: closing connections that have not logged in",
                CloseReason::Evicted,
            );
            // One attempt to hand over the Kick; the slot is needed now, so nothing waits for the peer.
            let _ = conn.session.write_tls(&mut conn.stream);
            self.after_io(slot);
            self.remove(slot);
            return true;
        }
        false
    }

    /// At capacity with nothing of its own to evict: accepts anyway when another thread holds a connection that
    /// has not logged in and is not already owed, and leaves that thread a debt to pay at its next sweep.
    #[cold]
    fn owe_eviction(&self) -> bool {
        let s = &self.shared.stats;
        let evictable = s
            .open_connections
            .load(Ordering::Relaxed)
            .saturating_sub(s.authenticated_connections.load(Ordering::Relaxed));
        self.shared
            .evictions_owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owed| (owed < evictable).then_some(owed + 1))
            .is_ok()
    }

    /// Pays evictions another thread owed (see `owe_eviction`), from this thread's connections not logged in.
    fn pay_evictions(&mut self) {
        let shared = Arc::clone(&self.shared);
        let owed = &shared.evictions_owed;
        if shared.stats.open_connections.load(Ordering::Relaxed) <= shared.max_connections {
            // Back under the limit (connections closed on their own): nothing is owed any more.
            owed.store(0, Ordering::Relaxed);
            return;
        }
        while owed.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            if !self.evict_oldest_unauthenticated(true) {
                owed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    fn conn_ready(&mut self, slot: usize, readable: bool, now: Instant) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        if readable {
            conn.session.read_tls(&mut conn.stream, now);
        }
        self.after_io(slot);
    }

    /// Forwards session events, flushes, fixes the interest and removes a finished connection.
    fn after_io(&mut self, slot: usize) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        while let Some(event) = conn.session.poll_event() {
            match event {
                SessionEvent::Greeted { protocol } => {
                    self.shared.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                    self.pending.push(Inbound::Connected {
                        session: conn.id,
                        io: self.index,
                        addr: conn.addr,
                        protocol,
                    });
                }
                SessionEvent::Message(msg) => {
                    if let Some(Body::UdpRebind(_)) = msg.body {
                        self.shared.udp.allow_rebind(conn.id);
                    } else {
                        self.wake_sim |= matches!(
                            msg.body,
                            Some(
                                Body::Login(_)
                                    | Body::Register(_)
                                    | Body::TransferLogin(_)
                                    | Body::TokenLogin(_)
                                    | Body::Resume(_)
                            )
                        );
                        self.pending.push(Inbound::Control { session: conn.id, msg });
                    }
                }
                SessionEvent::Dropped => {
                    self.shared.stats.control_dropped_flood.fetch_add(1, Ordering::Relaxed);
                }
                SessionEvent::Closed(reason) => {
                    self.shared.stats.count_close(&reason);
                    log::debug!("session {:#x} from {} closing: {reason:?}", conn.id, conn.addr);
                    if conn.udp_registered {
                        self.shared.udp.unregister(conn.id);
                        conn.udp_registered = false;
                    }
                    conn.reported_disconnect = true;
                    self.pending.push(disconnected(conn.id, &reason));
                }
            }
        }
        // A write error closes and abandons the session (its Closed event is collected below, next call).
        let _ = conn.session.write_tls(&mut conn.stream);
        while let Some(SessionEvent::Closed(reason)) = conn.session.poll_event() {
            self.shared.stats.count_close(&reason);
            if conn.udp_registered {
                self.shared.udp.unregister(conn.id);
                conn.udp_registered = false;
            }
            conn.reported_disconnect = true;
            self.pending.push(disconnected(conn.id, &reason));
        }
        let t = conn.session.take_traffic();
        let stats = &self.shared.stats;
        if t != Default::default() {
            stats.tcp_frames_in.fetch_add(t.frames_in, Ordering::Relaxed);
            stats.tcp_frames_out.fetch_add(t.frames_out, Ordering::Relaxed);
            stats.tcp_bytes_in.fetch_add(t.bytes_in, Ordering::Relaxed);
            stats.tcp_bytes_out.fetch_add(t.bytes_out, Ordering::Relaxed);
        }
        if conn.session.is_finished() {
            self.remove(slot);
            return;
        }
        let wanted =
            if conn.session.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if wanted != conn.interest {
            conn.interest = wanted;
            if let Err(e) = self.poll.registry().reregister(&mut conn.stream, Token(slot + FIRST_CONN), wanted) {
                log::warn!("reregister failed: {e}");
            }
        }
    }

    fn remove(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        if conn.udp_registered {
            self.shared.udp.unregister(conn.id);
        }
        if !conn.reported_disconnect {
            self.pending.push(disconnected(conn.id, &CloseReason::PeerClosed));
        }
        self.shared.per_address.release(conn.addr.ip(), conn.authenticated);
        if conn.authenticated {
            self.shared.stats.authenticated_connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.by_session.remove(&conn.id);
        self.free.push(slot);
        self.shared.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    fn drain_outbound(&mut self, now: Instant) {
        let mut touched: Vec<usize> = Vec::new();
        loop {
            let item = match self.outbound.pop() {
                Pop::Item(item) => {
                    crate::link::taken(&self.backlog);
                    item
                }
                Pop::Empty => break,
                // A producer is between its swap and its link: the item will be there on the next wake-up
                // (the producer wakes us after pushing), so stop rather than spin on the hot loop.
                Pop::Inconsistent => break,
            };
            let item = match (&mut self.web, &item) {
                (Some(web), Outbound::Shutdown { reason, message }) => {
                    let ctx = super::web::Ctx { registry: self.poll.registry(), shared: &self.shared };
                    web.shutdown(&ctx, *reason, message);
                    item
                }
                (Some(web), _) if !item.session().is_some_and(|id| self.by_session.contains_key(&id)) => {
                    let ctx = super::web::Ctx { registry: self.poll.registry(), shared: &self.shared };
                    web.outbound(&ctx, item);
                    continue;
                }
                _ => item,
            };
            match item {
                Outbound::Token { .. } => {}
                Outbound::Admit { session, msg } => {
                    let Some(&slot) = self.by_session.get(&session) else { continue };
                    let Some(Some(conn)) = self.conns.get_mut(slot) else { continue };
                    if conn.session.admit(&msg).is_ok() {
                        if !conn.authenticated {
                            conn.authenticated = true;
                            self.shared.per_address.authenticated(conn.addr.ip());
                            self.shared.stats.authenticated_connections.fetch_add(1, Ordering::Relaxed);
                        }
                        if !conn.udp_registered {
                            match conn.session.export_keying_material(EXPORTER_LABEL, &session.to_be_bytes()) {
                                Ok(material) => {
                                    let keys = DataKeys::from_keying_material(&material);
                                    conn.udp_registered =
                                        self.shared.udp.register(session, &keys, self.index as u32).is_ok();
                                }
                                Err(e) => log::warn!("session {session:#x}: cannot export UDP keys: {e}"),
                            }
                        }
                    }
                    touched.push(slot);
                }
                Outbound::Refuse { session, error } => {
                    let Some(&slot) = self.by_session.get(&session) else { continue };
                    let Some(Some(conn)) = self.conns.get_mut(slot) else { continue };
                    let _ = conn.session.refuse(&error);
                    touched.push(slot);
                }
                Outbound::Control { session, msg } => {
                    let Some(&slot) = self.by_session.get(&session) else { continue };
                    let Some(Some(conn)) = self.conns.get_mut(slot) else { continue };
                    let _ = conn.session.send(&msg);
                    touched.push(slot);
                }
                Outbound::Data { session, msg } => {
                    self.queue_datagram(|udp, slot| udp.seal_for(session, &msg, slot));
                }
                Outbound::Encoded { session, msg } => {
                    self.queue_datagram(|udp, slot| udp.seal_encoded_for(session, &msg, slot));
                }
                Outbound::Close { session, reason, message } => {
                    let Some(&slot) = self.by_session.get(&session) else { continue };
                    if let Some(Some(conn)) = self.conns.get_mut(slot) {
                        conn.session.close(reason, &message, CloseReason::Kicked(reason));
                        touched.push(slot);
                    }
                }
                Outbound::Shutdown { reason, message } => {
                    let _ = self.poll.registry().deregister(&mut self.listener);
                    self.shutting_down = Some(now + Duration::from_secs(5));
                    for slot in 0..self.conns.len() {
                        if let Some(Some(conn)) = self.conns.get_mut(slot) {
                            conn.session.close(reason, &message, CloseReason::Kicked(reason));
                            touched.push(slot);
                        }
                    }
                }
            }
        }
        self.flush_datagrams();
        touched.sort_unstable();
        touched.dedup();
        for slot in touched {
            self.after_io(slot);
        }
    }

    /// Seals a datagram straight into the next send slot (no copy, no allocation), flushing first when the batch
    /// is full; failures are counted by reason.
    fn queue_datagram(
        &mut self,
        seal: impl FnOnce(&SessionTable<u32>, &mut [u8]) -> Result<(usize, std::net::SocketAddr), udp::UdpError>,
    ) {
        if self.send.is_full() {
            self.flush_datagrams();
        }
        let udp = &self.shared.udp;
        let mut sealed = 0;
        let pushed = self.send.push_with(|slot| {
            let (len, dst) = seal(udp, slot)?;
            sealed = len;
            Ok((len, dst))
        });
        match pushed {
            Ok(_) => {
                self.shared.stats.udp_bytes_out.fetch_add(sealed as u64, Ordering::Relaxed);
            }
            Err(e) => self.shared.stats.count_udp_drop(&e),
        }
    }

    fn flush_datagrams(&mut self) {
        if self.send.is_empty() {
            return;
        }
        let flushed = self.send.flush(&self.udp);
        self.shared.stats.udp_out.fetch_add(flushed.sent as u64, Ordering::Relaxed);
        // Still queued = the kernel's send buffer is full. Datagrams are unreliable and the next snapshot
        // supersedes this one, so drop rather than queue behind a full socket.
        let dropped = (flushed.dropped + self.send.len()) as u64;
        if dropped > 0 {
            self.shared.stats.udp_send_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        self.send.clear();
    }

    fn receive_datagrams(&mut self, now: Instant) {
        loop {
            match self.recv.recv(&self.udp) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("udp receive failed: {e}");
                    break;
                }
            }
            let shared = &self.shared;
            for (src, buf) in self.recv.iter_mut() {
                shared.stats.udp_bytes_in.fetch_add(buf.len() as u64, Ordering::Relaxed);
                match shared.udp.handle_datagram(src, buf, now) {
                    Ok(udp::Inbound::Challenged { reply_len, .. }) => {
                        reply(&mut self.send, &self.udp, &shared.stats, src, &buf[..reply_len]);
                    }
                    Ok(udp::Inbound::Bound { session_id, reply_len, .. }) => {
                        reply(&mut self.send, &self.udp, &shared.stats, src, &buf[..reply_len]);
                        self.pending.push(Inbound::UdpBound { session: session_id, addr: src });
                    }
                    Ok(udp::Inbound::Message { session_id, msg, .. }) => {
                        shared.stats.udp_in.fetch_add(1, Ordering::Relaxed);
                        self.pending.push(Inbound::Data { session: session_id, msg });
                    }
                    Err(e) => shared.stats.count_udp_drop(&e),
                }
            }
        }
        self.flush_datagrams();
    }

    fn sweep(&mut self, now: Instant) {
        if let Some(web) = &mut self.web {
            let ctx = super::web::Ctx { registry: self.poll.registry(), shared: &self.shared };
            web.sweep(&ctx, now);
        }
        if self.shared.evictions_owed.load(Ordering::Relaxed) > 0 {
            self.pay_evictions();
        }
        // The eviction order is pruned lazily; keep it proportional to the connections it can name.
        if self.unauthenticated.len() > 2 * self.by_session.len() + 64 {
            let conns = &self.conns;
            self.unauthenticated.retain(
                |&(slot, id)| matches!(conns.get(slot), Some(Some(c)) if c.id == id && !c.session.is_authenticated()),
            );
        }
        for slot in 0..self.conns.len() {
            let Some(Some(conn)) = self.conns.get_mut(slot) else { continue };
            if conn.session.next_deadline().is_some_and(|d| now >= d) {
                // Authenticated UDP traffic is activity too (looked up only when the TLS deadline is due).
                if conn.udp_registered {
                    if let Some(seen) = self.shared.udp.info(conn.id).and_then(|i| i.last_seen) {
                        conn.session.note_activity(seen);
                    }
                }
                conn.session.handle_timeout(now);
                self.after_io(slot);
            }
        }
    }
}

/// Queues the answer to a datagram that was accepted (a challenge or a welcome) for its source address, flushing
/// first when the batch is full.
fn reply(send: &mut SendBatch, socket: &UdpSocket, stats: &NetStats, to: SocketAddr, bytes: &[u8]) {
    stats.udp_in.fetch_add(1, Ordering::Relaxed);
    if send.is_full() {
        let flushed = send.flush(socket);
        stats.udp_out.fetch_add(flushed.sent as u64, Ordering::Relaxed);
        send.clear();
    }
    send.push(to, bytes);
    stats.udp_bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_the_budget_then_refuses_until_the_window_passes() {
        let rl = ConnectRateLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.allow(ip, t0)));
        assert!(!rl.allow(ip, t0));
        assert!(rl.allow("10.0.0.2".parse().unwrap(), t0), "other addresses are unaffected");
        assert!(rl.allow(ip, t0 + Duration::from_secs(61)));
    }
}
