//! The contract between the io threads and the simulation thread: what crosses the queues, and nothing else.
//!
//! This module names no socket, TLS or mio type, so the game and its session machine (`sim`) depend on it and not
//! on the network layer (`net`), and a new transport (the WebSocket gateway) feeds the same [`Inbound`] events and
//! carries the same [`Outbound`] items. Ownership of a session's state is split cleanly:
//!
//! * the io thread owns the connection (bytes, TLS, framing, timeouts, UDP keys) and reports what happened to it
//!   as [`Inbound`] events;
//! * the simulation owns the player (login, the world, saves) and tells the io thread what to do with the
//!   connection by [`Outbound`] items. In particular the io thread never infers a session's state from the
//!   messages it carries: [`Outbound::Admit`] says "this session is logged in" (open its UDP channel, count it as
//!   authenticated), [`Outbound::Refuse`] says "this login failed".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::proto::{ControlMessage, DataMessage, KickReason, LoginError, LoginOk};
use crate::queue::Producer;

/// Encoded bytes in a buffer shared with others: the simulation writes a tick's snapshots into one buffer, so a
/// tick costs one allocation instead of one per snapshot (measured: the allocations were about a tenth of the v2
/// snapshot phase at 2,000 players), and the io threads free nothing per snapshot. The buffer goes back to the
/// simulation for the next tick once every holder lets go ([`Shared::reclaim`]).
#[derive(Clone)]
pub struct Shared {
    buf: Arc<Vec<u8>>,
    start: u32,
    end: u32,
}

impl Shared {
    /// `buf[range]`.
    pub fn new(buf: &Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= buf.len() && buf.len() <= u32::MAX as usize);
        Self { buf: Arc::clone(buf), start: range.start as u32, end: range.end as u32 }
    }

    /// Bytes of their own.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let end = bytes.len();
        Self::new(&Arc::new(bytes), 0..end)
    }

    /// `buf` emptied for reuse if nothing else holds it, else a new buffer of the same capacity.
    pub fn reclaim(buf: Arc<Vec<u8>>) -> Vec<u8> {
        let capacity = buf.capacity();
        match Arc::try_unwrap(buf) {
            Ok(mut buf) => {
                buf.clear();
                buf
            }
            Err(_) => Vec::with_capacity(capacity),
        }
    }
}

impl std::ops::Deref for Shared {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start as usize..self.end as usize]
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({} bytes)", self.len())
    }
}

impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// Identifies one client session for its whole life: the same id is used on the TLS and the UDP channel.
pub type SessionId = u64;

/// How a session's connection ended, as far as the simulation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The connection dropped (the peer closed it, or the network or TLS failed): a player in game may come back
    /// with `Resume` within the resume grace period.
    Dropped,
    /// The session was ended on purpose (kicked, logged out, timed out, a protocol violation): it leaves now.
    Ended,
}

/// From the io threads to the simulation.
#[derive(Debug)]
pub enum Inbound {
    /// TLS and Hello completed; the session may now log in.
    Connected {
        /// The session.
        session: SessionId,
        /// The io thread that owns it (where its [`Outbound`] items go).
        io: usize,
        /// The client's address.
        addr: SocketAddr,
        /// The protocol version it speaks (2: delta snapshots).
        protocol: u32,
    },
    /// A control message allowed in the session's state.
    Control {
        /// The session.
        session: SessionId,
        /// The message (never Hello or Ping: the io layer answers those).
        msg: ControlMessage,
    },
    /// An authenticated UDP message from the session's bound endpoint.
    Data {
        /// The session.
        session: SessionId,
        /// The message.
        msg: DataMessage,
    },
    /// A browser login over HTTP (`POST /api/login` or `/api/register`): no session in the game yet; the answer
    /// is [`Outbound::Token`].
    Authenticate {
        /// The HTTP connection (answers are addressed to it).
        session: SessionId,
        /// Its io thread.
        io: usize,
        /// The client's address.
        addr: SocketAddr,
        /// Registration rather than login.
        register: bool,
        /// Username.
        username: String,
        /// Password.
        password: String,
    },
    /// The session's data channel is ready: its UDP endpoint was bound (or rebound), or, for a browser, its
    /// WebSocket was admitted.
    UdpBound {
        /// The session.
        session: SessionId,
        /// The endpoint.
        addr: SocketAddr,
    },
    /// The session ended; nothing more will come from it.
    Disconnected {
        /// The session.
        session: SessionId,
        /// Dropped or ended.
        departure: Departure,
        /// The io layer's close reason (`game_server_sessions_closed_total`'s label), for logs.
        reason: &'static str,
    },
}

/// From the simulation to one io thread.
#[derive(Debug)]
pub enum Outbound {
    /// The session logged in (or resumed): send `LoginOk`, count the connection as authenticated and open its UDP
    /// channel with keys derived from its TLS session.
    Admit {
        /// The session.
        session: SessionId,
        /// The answer sent to the client.
        msg: LoginOk,
    },
    /// A login, registration, transfer login or resume failed: send `LoginError`; the session may try again
    /// (within its attempt limit).
    Refuse {
        /// The session.
        session: SessionId,
        /// The answer sent to the client.
        error: LoginError,
    },
    /// The answer to [`Inbound::Authenticate`]: a signed login token and its lifetime, or the refusal.
    Token {
        /// The HTTP connection.
        session: SessionId,
        /// The token, or the refusal.
        result: Result<(String, std::time::Duration), LoginError>,
    },
    /// Send a control message over TLS (never `LoginOk`/`LoginError`: those are [`Outbound::Admit`] and
    /// [`Outbound::Refuse`]).
    Control {
        /// The session.
        session: SessionId,
        /// The message.
        msg: ControlMessage,
    },
    /// Seal and send a datagram to the session's bound endpoint (dropped if none is bound yet).
    Data {
        /// The session.
        session: SessionId,
        /// The message.
        msg: DataMessage,
    },
    /// As `Data`, for a `DataMessage` encoded beforehand (snapshots: see `proto::encode_snapshot`).
    Encoded {
        /// The session.
        session: SessionId,
        /// The encoded `DataMessage`.
        msg: Shared,
    },
    /// Close a session with a reason.
    Close {
        /// The session.
        session: SessionId,
        /// Reason sent in the `Kick`.
        reason: KickReason,
        /// Human-readable text.
        message: String,
    },
    /// Stop accepting, close every session with this reason, flush, and end the thread.
    Shutdown {
        /// Reason sent in every `Kick`.
        reason: KickReason,
        /// Human-readable text.
        message: String,
    },
}

impl Outbound {
    /// The session the item is for; `None` for `Shutdown` (every session).
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Outbound::Admit { session, .. }
            | Outbound::Refuse { session, .. }
            | Outbound::Token { session, .. }
            | Outbound::Control { session, .. }
            | Outbound::Data { session, .. }
            | Outbound::Encoded { session, .. }
            | Outbound::Close { session, .. } => Some(*session),
            Outbound::Shutdown { .. } => None,
        }
    }
}

/// Wakes whatever drains an [`IoHandle`]'s queue (an io thread's `mio::Waker`; a test's closure).
pub type Wake = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The simulation's handle on one io thread.
#[derive(Clone)]
pub struct IoHandle {
    tx: Producer<Outbound>,
    wake: Wake,
    backlog: Arc<AtomicUsize>,
}

impl IoHandle {
    /// A handle pushing to `tx`; `backlog` is shared with the consumer, which calls [`IoHandle::taken`] per item.
    pub fn new(tx: Producer<Outbound>, wake: Wake, backlog: Arc<AtomicUsize>) -> Self {
        Self { tx, wake, backlog }
    }

    /// Queues an item; call [`IoHandle::wake`] once after a batch.
    pub fn send(&self, item: Outbound) {
        // Relaxed: an approximate depth is all back-pressure needs; the queue itself orders the items.
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.tx.push(item);
    }

    /// Items queued for this io thread and not yet taken. The simulation stops queueing snapshots (which the next
    /// tick supersedes) for a thread that is this far behind, so a saturated io thread costs dropped snapshots,
    /// never unbounded memory.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Wakes the io thread to process what was queued.
    pub fn wake(&self) {
        if let Err(e) = (self.wake)() {
            log::error!("cannot wake io thread: {e}");
        }
    }
}

/// Called by the consumer of an [`IoHandle`]'s queue for each item it takes.
pub fn taken(backlog: &AtomicUsize) {
    backlog.fetch_sub(1, Ordering::Relaxed);
}

/// Wakes the simulation thread between ticks for what a player waits on (a login, a resume): otherwise it is
/// handled at the next tick, up to a tick later. Inputs and chat never wake it: they wait for their tick anyway.
#[derive(Debug, Default)]
pub struct SimWaker(std::sync::OnceLock<std::thread::Thread>);

impl SimWaker {
    /// Called once by the simulation thread: wake-ups go to the calling thread.
    pub fn register_current(&self) {
        let _ = self.0.set(std::thread::current());
    }

    /// Wakes the simulation thread if it is parked between ticks (a no-op before it registered).
    pub fn wake(&self) {
        if let Some(t) = self.0.get() {
            t.unpark();
        }
    }

    /// Whether a simulation thread registered (it then parks between ticks instead of sleeping).
    pub fn registered(&self) -> bool {
        self.0.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_buffer_is_reused_only_when_nobody_holds_it() {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(b"firstsecond");
        let buf = Arc::new(buf);
        let (a, b) = (Shared::new(&buf, 0..5), Shared::new(&buf, 5..11));
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        let address = buf.as_ptr();
        // Still held by `a`: a new buffer of the same capacity, and `a` keeps its bytes.
        let fresh = Shared::reclaim(Arc::clone(&buf));
        assert!(fresh.is_empty() && fresh.capacity() >= 4096 && fresh.as_ptr() != address);
        assert_eq!(&a[..], b"first");
        drop((a, b));
        let reused = Shared::reclaim(buf);
        assert!(reused.is_empty() && reused.as_ptr() == address);
    }
}
