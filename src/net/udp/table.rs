//! The server's UDP session table: session id -> per-session UDP state, bound endpoint -> session id.
//!
//! Shared by every io thread (`Arc<SessionTable>`): with `SO_REUSEPORT` the kernel spreads datagrams over all io
//! threads' sockets by address hash, so a datagram can land on a thread that does not own the session.
//!
//! # Locking
//!
//! * One `parking_lot::RwLock` over both maps. Writes are rare (login, logout, bind, rebind); the per-datagram
//!   read lock is held only for a hash lookup and an `Arc` clone, never across crypto. With a handful of io
//!   threads a single lock word is cheaper and simpler than sharding, and keeping both maps under one lock is
//!   what makes "unregister removes both" and "bind updates both" atomic.
//! * Per session, the receive state (opener, replay window, bound endpoint, rebind flag) sits in a `Mutex`, held
//!   across check -> decrypt -> commit so two threads can never both accept the same sequence.
//! * The send side takes no session lock: the sealing key is immutable, the sequence is an atomic counter and the
//!   endpoint is copied out of the maps, so the owner io thread seals snapshots while another thread opens that
//!   session's inputs.
//!
//! Lock order: a session `Mutex`, then the maps lock (only `bind` does this). Nothing takes a session `Mutex`
//! while holding the maps lock, so there is no cycle.
//!
//! The invariant a reader must not break: **`by_endpoint[addr] == id` if and only if `by_id[id]` is bound to
//! `addr`**, and both maps change together under the write lock. A bind re-checks under that lock that the session
//! is still registered, so a concurrent `unregister` can never leave a stale endpoint behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prost::Message;

use super::channel::{DatagramHeader, Opener, Plaintext, Sealer};
use super::keys::{DataKeys, Direction};
use super::{UdpError, MIN_HELLO_BYTES};
use crate::proto::{data_message::Body, DataMessage, UdpChallenge, UdpWelcome};

/// What the io loop does with an accepted datagram.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum Inbound<O> {
    /// An authentic hello from an address the session is not bound to: the first `reply_len` bytes of the receive
    /// buffer now hold a sealed `UdpChallenge` for the source address, always smaller than the hello. Nothing is
    /// bound until the challenge comes back from that address.
    Challenged {
        /// The session the hello belongs to.
        session_id: u64,
        /// Length of the challenge written at the start of the buffer.
        reply_len: usize,
    },
    /// A hello from the bound address, or a challenge response, bound (or re-confirmed) the source address. The first `reply_len` bytes of the receive buffer now
    /// hold the sealed `UdpWelcome`: send them back to the source address. `reply_len` is always smaller than the
    /// hello that was received.
    Bound {
        /// The session that is now bound to the source address.
        session_id: u64,
        /// Owner io thread of the session, as given to [`SessionTable::register`].
        owner: O,
        /// Length of the welcome written at the start of the buffer.
        reply_len: usize,
        /// The binding moved from another address (NAT rebinding) rather than being created or confirmed.
        rebound: bool,
    },
    /// An authenticated message from the session's bound endpoint, for the simulation.
    Message {
        /// The session it belongs to.
        session_id: u64,
        /// Owner io thread of the session, as given to [`SessionTable::register`].
        owner: O,
        /// The decoded message (never a hello, welcome or snapshot).
        msg: DataMessage,
    },
}

/// A copy of one session's UDP state, for diagnostics and the io loop's idle checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSessionInfo<O> {
    /// Owner io thread.
    pub owner: O,
    /// The bound endpoint, `None` until the first hello.
    pub endpoint: Option<SocketAddr>,
    /// Whether the next hello from a new address may move the binding.
    pub rebind_allowed: bool,
    /// When the last datagram was accepted (`now` passed to [`SessionTable::handle_datagram`]).
    pub last_seen: Option<Instant>,
    /// Highest client sequence accepted so far.
    pub highest_received: Option<u64>,
    /// Sequence of the next datagram the server will send.
    pub next_send_sequence: u64,
}

struct UdpSession<O> {
    owner: O,
    sealer: Sealer,
    /// Next server -> client sequence. Only ever incremented; `u64::MAX` means exhausted.
    next_send_sequence: AtomicU64,
    /// When the bound endpoint was last heard from, in the table's clock (milliseconds since its epoch). The send
    /// side reads it without the receive lock to stop streaming to an address that fell silent.
    last_heard_ms: AtomicU64,
    receive: Mutex<ReceiveState>,
}

struct ReceiveState {
    opener: Opener,
    endpoint: Option<SocketAddr>,
    rebind_allowed: bool,
    last_seen: Option<Instant>,
    /// The challenge sent to the latest authentic hello from an unbound address.
    pending: Option<Pending>,
}

/// An outstanding challenge: only `addr` may answer it, with `challenge`, before `expires`.
struct Pending {
    addr: SocketAddr,
    challenge: [u8; CHALLENGE_BYTES],
    expires: Instant,
}

/// Length of a binding challenge.
pub const CHALLENGE_BYTES: usize = 16;

/// How long a challenge stays valid, and how long a bound endpoint may be silent before the server stops sending
/// to it (from `net.udp_challenge_timeout_ms` and `net.udp_silence_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingLimits {
    /// A challenge must come back within this.
    pub challenge_timeout: Duration,
    /// Nothing is sent to a bound endpoint not heard from for this long (a hello or any datagram revives it).
    pub silence_timeout: Duration,
}

impl Default for BindingLimits {
    fn default() -> Self {
        Self { challenge_timeout: Duration::from_secs(5), silence_timeout: Duration::from_secs(10) }
    }
}

struct Maps<O> {
    by_id: HashMap<u64, Entry<O>>,
    by_endpoint: HashMap<SocketAddr, u64>,
}

struct Entry<O> {
    session: Arc<UdpSession<O>>,
    /// The maps' copy of the bound endpoint (the session keeps its own under its receive lock); both change
    /// together in `bind`. Readers of the maps never need the session lock.
    endpoint: Option<SocketAddr>,
}

/// Session id -> UDP state and endpoint -> session id, shared by all io threads. `O` identifies the io thread
/// that owns a session's TLS connection (opaque here; e.g. its index).
pub struct SessionTable<O = u32> {
    maps: RwLock<Maps<O>>,
    server_tick: AtomicU64,
    limits: BindingLimits,
    /// The table's clock: `now_ms` is the latest instant any io thread reported ([`SessionTable::advance_clock`]
    /// and [`SessionTable::handle_datagram`]), in milliseconds since `epoch`.
    epoch: Instant,
    now_ms: AtomicU64,
}

impl<O: Copy> Default for SessionTable<O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<O: Copy> SessionTable<O> {
    /// An empty table with the default binding limits.
    pub fn new() -> Self {
        Self::with_limits(BindingLimits::default())
    }

    /// An empty table.
    pub fn with_limits(limits: BindingLimits) -> Self {
        Self {
            maps: RwLock::new(Maps { by_id: HashMap::new(), by_endpoint: HashMap::new() }),
            server_tick: AtomicU64::new(0),
            limits,
            epoch: Instant::now(),
            now_ms: AtomicU64::new(0),
        }
    }

    /// Moves the table's clock forward to `now` (never back) and returns it in the table's milliseconds. The io
    /// threads call this once per poll iteration; the send side judges silence by it, so sealing needs no clock
    /// of its own.
    pub fn advance_clock(&self, now: Instant) -> u64 {
        let ms = self.millis(now);
        // Relaxed: a clock a few microseconds stale in another thread only shifts a timeout of seconds.
        self.now_ms.fetch_max(ms, Ordering::Relaxed).max(ms)
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Adds a logged-in session with its exported keys; no endpoint is bound until its first hello.
    pub fn register(&self, session_id: u64, keys: &DataKeys, owner: O) -> Result<(), UdpError> {
        // Build the keys outside the lock: key setup is the expensive part.
        let session = Arc::new(UdpSession {
            owner,
            sealer: Sealer::new(keys, Direction::ServerToClient, session_id),
            next_send_sequence: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
            receive: Mutex::new(ReceiveState {
                opener: Opener::new(keys, Direction::ClientToServer),
                endpoint: None,
                rebind_allowed: false,
                last_seen: None,
                pending: None,
            }),
        });
        let mut maps = self.maps.write();
        if maps.by_id.contains_key(&session_id) {
            return Err(UdpError::SessionExists);
        }
        maps.by_id.insert(session_id, Entry { session, endpoint: None });
        Ok(())
    }

    /// Removes the session and its endpoint mapping. Returns whether it was registered.
    pub fn unregister(&self, session_id: u64) -> bool {
        let mut maps = self.maps.write();
        let Some(entry) = maps.by_id.remove(&session_id) else { return false };
        // No session lock here (that would invert the lock order): the entry's copy of the endpoint is exact
        // under the write lock, and a bind in flight re-checks `by_id` under the same lock and sees the removal.
        if let Some(endpoint) = entry.endpoint {
            if maps.by_endpoint.get(&endpoint) == Some(&session_id) {
                maps.by_endpoint.remove(&endpoint);
            }
        }
        true
    }

    /// Lets the next authentic hello from a new address move the session's binding there (the client asked with
    /// `UdpRebind` over its live TLS session). Returns whether the session exists. The permission is used up by
    /// the next accepted hello.
    pub fn allow_rebind(&self, session_id: u64) -> bool {
        let Some(session) = self.session(session_id) else { return false };
        session.receive.lock().rebind_allowed = true;
        true
    }

    /// The session bound to `endpoint`, if any.
    pub fn session_for_endpoint(&self, endpoint: SocketAddr) -> Option<u64> {
        self.maps.read().by_endpoint.get(&endpoint).copied()
    }

    /// The endpoint bound to `session_id`, if registered and bound.
    pub fn endpoint_of(&self, session_id: u64) -> Option<SocketAddr> {
        self.maps.read().by_id.get(&session_id)?.endpoint
    }

    /// The owner io thread of `session_id`.
    pub fn owner_of(&self, session_id: u64) -> Option<O> {
        self.maps.read().by_id.get(&session_id).map(|e| e.session.owner)
    }

    /// A snapshot of one session's UDP state.
    pub fn info(&self, session_id: u64) -> Option<UdpSessionInfo<O>> {
        let session = self.session(session_id)?;
        let receive = session.receive.lock();
        Some(UdpSessionInfo {
            owner: session.owner,
            endpoint: receive.endpoint,
            rebind_allowed: receive.rebind_allowed,
            last_seen: receive.last_seen,
            highest_received: receive.opener.window.highest(),
            next_send_sequence: session.next_send_sequence.load(Ordering::Relaxed),
        })
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.maps.read().by_id.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of bound endpoints.
    pub fn bound_endpoints(&self) -> usize {
        self.maps.read().by_endpoint.len()
    }

    /// Publishes the simulation tick that welcomes report (`UdpWelcome.server_tick`). Informational only.
    pub fn publish_server_tick(&self, tick: u64) {
        self.server_tick.store(tick, Ordering::Relaxed);
    }

    /// Processes one received datagram in place.
    ///
    /// `buf` is exactly the received bytes. On [`Inbound::Bound`] the welcome to send back to `src` has been
    /// written to `buf[..reply_len]`. Every `Err` means "drop and count `err.reason()`"; none of them is fatal for
    /// the session, and none allocates.
    pub fn handle_datagram(&self, src: SocketAddr, buf: &mut [u8], now: Instant) -> Result<Inbound<O>, UdpError> {
        let now_ms = self.advance_clock(now);
        let header = DatagramHeader::parse(buf)?;
        let session = self.session(header.session_id).ok_or(UdpError::UnknownSession)?;
        let mut receive = session.receive.lock();
        let from_bound = receive.endpoint == Some(src);
        if !from_bound && receive.endpoint.is_some() && !receive.rebind_allowed {
            // "A token seen from a second address is ignored", before spending any crypto on it.
            return Err(UdpError::WrongAddress);
        }
        let datagram_len = buf.len();
        let plaintext = receive.opener.authenticate(&header, buf)?;
        // Authentic from here on. The window is committed only if the source address may use the session, so a
        // copy of a genuine datagram raced from another address cannot burn the real one's sequence.
        let decoded = DataMessage::decode(plaintext);
        let msg = match decoded {
            Ok(msg) => msg,
            Err(e) if from_bound => {
                receive.opener.window.commit(header.sequence);
                return Err(UdpError::InvalidMessage(e));
            }
            Err(e) => return Err(UdpError::InvalidMessage(e)),
        };
        match msg.body {
            Some(Body::UdpHello(hello)) => {
                if datagram_len < MIN_HELLO_BYTES {
                    return Err(UdpError::HelloTooSmall);
                }
                if hello.session_id != header.session_id {
                    return Err(UdpError::HelloSessionMismatch);
                }
                receive.opener.window.commit(header.sequence);
                if from_bound {
                    // The bound address already proved it receives: confirm at once (and it is heard again).
                    receive.last_seen = Some(now);
                    session.last_heard_ms.store(now_ms, Ordering::Relaxed);
                    drop(receive);
                    let reply_len = self.seal_welcome(&session, header.session_id, &mut buf[..datagram_len - 1])?;
                    return Ok(Inbound::Bound {
                        session_id: header.session_id,
                        owner: session.owner,
                        reply_len,
                        rebound: false,
                    });
                }
                // A new address proves nothing yet: whoever holds the keys can put any source address on a
                // hello. Answer that address with a challenge smaller than the hello and bind only when it comes
                // back from there (netcode.io's rule), so no stream is ever aimed at an address that did not ask.
                let mut challenge = [0u8; CHALLENGE_BYTES];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut challenge);
                receive.pending = Some(Pending { addr: src, challenge, expires: now + self.limits.challenge_timeout });
                drop(receive);
                let reply = DataMessage::new(Body::UdpChallenge(UdpChallenge {
                    session_id: header.session_id,
                    challenge: challenge.to_vec(),
                }));
                // Sealing into a buffer one byte shorter than the request makes "never larger" structural.
                let reply_len = seal_next(&session, Plaintext::Message(&reply), &mut buf[..datagram_len - 1])?;
                Ok(Inbound::Challenged { session_id: header.session_id, reply_len })
            }
            Some(Body::UdpChallengeResponse(response)) => {
                let answered = match &receive.pending {
                    Some(p) => {
                        p.addr == src
                            && now < p.expires
                            && response.session_id == header.session_id
                            && crate::account::password::constant_time_eq(&p.challenge, &response.challenge)
                    }
                    None => false,
                };
                if !answered {
                    if from_bound {
                        receive.opener.window.commit(header.sequence);
                    }
                    return Err(UdpError::ChallengeFailed);
                }
                let previous = receive.endpoint;
                if !from_bound {
                    self.bind(header.session_id, &session, src, previous)?;
                    receive.endpoint = Some(src);
                }
                receive.pending = None;
                receive.rebind_allowed = false;
                receive.opener.window.commit(header.sequence);
                receive.last_seen = Some(now);
                session.last_heard_ms.store(now_ms, Ordering::Relaxed);
                drop(receive);
                // The address is proven now; the welcome still never exceeds the response that asked for it.
                let reply_len = self.seal_welcome(&session, header.session_id, &mut buf[..datagram_len])?;
                Ok(Inbound::Bound {
                    session_id: header.session_id,
                    owner: session.owner,
                    reply_len,
                    rebound: previous.is_some() && !from_bound,
                })
            }
            _ if !from_bound => {
                Err(if receive.endpoint.is_none() { UdpError::NotBound } else { UdpError::WrongAddress })
            }
            None => {
                receive.opener.window.commit(header.sequence);
                Err(UdpError::EmptyMessage)
            }
            // What only the server sends. Listed, not matched by a wildcard: a new server-to-client message
            // must be added here or to the arm below, or this stops compiling (v2's DeltaSnapshot once slipped
            // through a wildcard to the simulation thread; the udp_datagram fuzz target found it).
            Some(Body::UdpWelcome(_) | Body::Snapshot(_) | Body::UdpChallenge(_) | Body::DeltaSnapshot(_)) => {
                receive.opener.window.commit(header.sequence);
                Err(UdpError::UnexpectedMessage)
            }
            Some(Body::Input(_) | Body::Ping(_) | Body::Pong(_)) => {
                receive.opener.window.commit(header.sequence);
                receive.last_seen = Some(now);
                session.last_heard_ms.store(now_ms, Ordering::Relaxed);
                Ok(Inbound::Message { session_id: header.session_id, owner: session.owner, msg })
            }
        }
    }

    fn seal_welcome(&self, session: &UdpSession<O>, session_id: u64, out: &mut [u8]) -> Result<usize, UdpError> {
        let welcome = DataMessage::new(Body::UdpWelcome(UdpWelcome {
            session_id,
            server_tick: self.server_tick.load(Ordering::Relaxed),
        }));
        seal_next(session, Plaintext::Message(&welcome), out)
    }

    /// Whether the session's bound endpoint has been silent past the silence timeout (the send side stops).
    fn silent(&self, session: &UdpSession<O>) -> bool {
        let heard = session.last_heard_ms.load(Ordering::Relaxed);
        self.now_ms.load(Ordering::Relaxed).saturating_sub(heard) > self.limits.silence_timeout.as_millis() as u64
    }

    /// Seals `msg` for `session_id` into `out` and returns the datagram length and the address to send it to.
    /// Takes no per-session lock on the sealing path, so it runs concurrently with inbound processing.
    pub fn seal_for(
        &self,
        session_id: u64,
        msg: &DataMessage,
        out: &mut [u8],
    ) -> Result<(usize, SocketAddr), UdpError> {
        self.seal_plaintext_for(session_id, Plaintext::Message(msg), out)
    }

    /// As [`SessionTable::seal_for`], for a `DataMessage` encoded beforehand (`encoded` must be one: the client
    /// decodes the plaintext as a `DataMessage`).
    pub fn seal_encoded_for(
        &self,
        session_id: u64,
        encoded: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, SocketAddr), UdpError> {
        self.seal_plaintext_for(session_id, Plaintext::Encoded(encoded), out)
    }

    fn seal_plaintext_for(
        &self,
        session_id: u64,
        msg: Plaintext<'_>,
        out: &mut [u8],
    ) -> Result<(usize, SocketAddr), UdpError> {
        let (session, endpoint) = {
            let maps = self.maps.read();
            let entry = maps.by_id.get(&session_id).ok_or(UdpError::UnknownSession)?;
            (Arc::clone(&entry.session), entry.endpoint.ok_or(UdpError::NotBound)?)
        };
        if self.silent(&session) {
            return Err(UdpError::Silent);
        }
        let len = seal_next(&session, msg, out)?;
        Ok((len, endpoint))
    }

    fn session(&self, session_id: u64) -> Option<Arc<UdpSession<O>>> {
        self.maps.read().by_id.get(&session_id).map(|e| Arc::clone(&e.session))
    }

    /// Points `src` at the session (and unmaps `previous`), atomically with respect to other binds and to
    /// `unregister`. The caller holds the session's receive lock and updates its endpoint on success.
    #[cold]
    fn bind(
        &self,
        session_id: u64,
        session: &Arc<UdpSession<O>>,
        src: SocketAddr,
        previous: Option<SocketAddr>,
    ) -> Result<(), UdpError> {
        let mut guard = self.maps.write();
        let maps = &mut *guard;
        let entry = match maps.by_id.get_mut(&session_id) {
            Some(entry) if Arc::ptr_eq(&entry.session, session) => entry,
            _ => return Err(UdpError::UnknownSession),
        };
        match maps.by_endpoint.get(&src) {
            Some(&other) if other != session_id => return Err(UdpError::EndpointInUse),
            _ => {}
        }
        debug_assert_eq!(entry.endpoint, previous, "the two copies of the endpoint diverged");
        if let Some(previous) = previous {
            maps.by_endpoint.remove(&previous);
        }
        maps.by_endpoint.insert(src, session_id);
        entry.endpoint = Some(src);
        Ok(())
    }
}

/// Seals with the session's next send sequence. The counter is claimed with a CAS that refuses to pass
/// `u64::MAX`, so a sequence is never handed out twice (Relaxed is enough: uniqueness comes from the RMW on one
/// atomic, and nothing else is published through it).
fn seal_next<O>(session: &UdpSession<O>, msg: Plaintext<'_>, out: &mut [u8]) -> Result<usize, UdpError> {
    let needed = Sealer::sealed_len(msg)?;
    if out.len() < needed {
        return Err(UdpError::BufferTooSmall);
    }
    let sequence = session
        .next_send_sequence
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| (s < u64::MAX).then_some(s + 1))
        .map_err(|_| UdpError::SequenceExhausted)?;
    session.sealer.seal(sequence, msg, out)
}

impl<O> std::fmt::Debug for SessionTable<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let maps = self.maps.read();
        f.debug_struct("SessionTable")
            .field("sessions", &maps.by_id.len())
            .field("bound_endpoints", &maps.by_endpoint.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::udp::{DataChannel, MAX_DATAGRAM_BYTES};
    use crate::proto::{Input, Ping, Snapshot};
    use proptest::prelude::*;

    const SESSION: u64 = 0x0102_0304_0506_0708;

    fn keys(seed: u8) -> DataKeys {
        DataKeys::from_keying_material(&[seed; 64])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn input(sequence: u32) -> DataMessage {
        DataMessage::new(Body::Input(Input { sequence, ..Default::default() }))
    }

    fn table_with_client() -> (SessionTable<u32>, DataChannel) {
        let table = SessionTable::new();
        table.register(SESSION, &keys(1), 3).unwrap();
        (table, DataChannel::client(SESSION, &keys(1)))
    }

    fn seal(client: &mut DataChannel, msg: &DataMessage) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal(msg, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn hello(client: &mut DataChannel) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal_hello(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// The whole binding exchange from `from`: hello, then (for a new address) the challenge answered from there.
    fn try_bind(
        table: &SessionTable<u32>,
        client: &mut DataChannel,
        from: SocketAddr,
    ) -> Result<Inbound<u32>, UdpError> {
        let mut datagram = hello(client);
        let reply_len = match table.handle_datagram(from, &mut datagram, Instant::now())? {
            Inbound::Challenged { reply_len, .. } => reply_len,
            bound => return Ok(bound),
        };
        let challenge = match client.open(&mut datagram[..reply_len]).unwrap().body {
            Some(Body::UdpChallenge(c)) => c,
            other => panic!("expected a challenge, got {other:?}"),
        };
        let mut response = vec![0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal_challenge_response(&challenge, &mut response).unwrap();
        response.truncate(n);
        let bound = table.handle_datagram(from, &mut response, Instant::now())?;
        if let Inbound::Bound { reply_len, .. } = bound {
            let welcome = client.open(&mut response[..reply_len]).unwrap();
            assert!(matches!(welcome.body, Some(Body::UdpWelcome(_))), "{welcome:?}");
        }
        Ok(bound)
    }

    fn bind(table: &SessionTable<u32>, client: &mut DataChannel, from: SocketAddr) -> Inbound<u32> {
        try_bind(table, client, from).unwrap()
    }

    /// Sends a hello from `from` and returns the challenge the server answered with.
    fn challenge_for(
        table: &SessionTable<u32>,
        client: &mut DataChannel,
        from: SocketAddr,
        now: Instant,
    ) -> UdpChallenge {
        let mut datagram = hello(client);
        let reply_len = match table.handle_datagram(from, &mut datagram, now).unwrap() {
            Inbound::Challenged { reply_len, .. } => reply_len,
            other => panic!("expected a challenge, got {other:?}"),
        };
        match client.open(&mut datagram[..reply_len]).unwrap().body {
            Some(Body::UdpChallenge(c)) => c,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    fn respond(client: &mut DataChannel, challenge: &UdpChallenge) -> Vec<u8> {
        let mut out = vec![0u8; MAX_DATAGRAM_BYTES];
        let n = client.seal_challenge_response(challenge, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn a_hello_binds_nothing_until_its_challenge_comes_back_from_the_same_address() {
        let (table, mut client) = table_with_client();
        let now = Instant::now();
        let challenge = challenge_for(&table, &mut client, addr(9), now);
        assert_eq!(challenge.challenge.len(), CHALLENGE_BYTES);
        assert_eq!(table.endpoint_of(SESSION), None, "a hello alone binds nothing");
        let mut out = [0u8; MAX_DATAGRAM_BYTES];
        let snapshot = DataMessage::new(Body::Snapshot(Snapshot::default()));
        assert_eq!(table.seal_for(SESSION, &snapshot, &mut out), Err(UdpError::NotBound), "nothing is streamed");
        // The challenge answered from elsewhere (the spoofer's real address) does not bind either address.
        let mut elsewhere = respond(&mut client, &challenge);
        assert_eq!(table.handle_datagram(addr(1), &mut elsewhere, now), Err(UdpError::ChallengeFailed));
        // Wrong bytes from the right address do not bind.
        let mut forged = respond(&mut client, &UdpChallenge { session_id: SESSION, challenge: vec![0; 16] });
        assert_eq!(table.handle_datagram(addr(9), &mut forged, now), Err(UdpError::ChallengeFailed));
        assert_eq!(table.bound_endpoints(), 0);
        let mut right = respond(&mut client, &challenge);
        assert!(matches!(table.handle_datagram(addr(9), &mut right, now), Ok(Inbound::Bound { rebound: false, .. })));
        assert_eq!(table.endpoint_of(SESSION), Some(addr(9)));
        // One use: the same challenge again is refused.
        let mut again = respond(&mut client, &challenge);
        assert_eq!(table.handle_datagram(addr(9), &mut again, now), Err(UdpError::ChallengeFailed));
    }

    #[test]
    fn a_late_challenge_response_is_refused() {
        let table = SessionTable::with_limits(BindingLimits {
            challenge_timeout: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(10),
        });
        table.register(SESSION, &keys(1), 3).unwrap();
        let mut client = DataChannel::client(SESSION, &keys(1));
        let now = Instant::now();
        let challenge = challenge_for(&table, &mut client, addr(1), now);
        let mut late = respond(&mut client, &challenge);
        let later = now + Duration::from_secs(5);
        assert_eq!(table.handle_datagram(addr(1), &mut late, later), Err(UdpError::ChallengeFailed));
        assert_eq!(table.endpoint_of(SESSION), None);
    }

    #[test]
    fn a_bound_address_that_falls_silent_stops_receiving_until_it_is_heard_again() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        let snapshot = DataMessage::new(Body::Snapshot(Snapshot::default()));
        let mut out = [0u8; MAX_DATAGRAM_BYTES];
        assert!(table.seal_for(SESSION, &snapshot, &mut out).is_ok());
        let later = Instant::now() + BindingLimits::default().silence_timeout + Duration::from_secs(1);
        table.advance_clock(later);
        assert_eq!(table.seal_for(SESSION, &snapshot, &mut out), Err(UdpError::Silent));
        let mut pong = seal(&mut client, &DataMessage::new(Body::Pong(crate::proto::Pong::default())));
        assert!(matches!(table.handle_datagram(addr(1), &mut pong, later), Ok(Inbound::Message { .. })));
        assert!(table.seal_for(SESSION, &snapshot, &mut out).is_ok(), "heard again: the stream resumes");
    }

    #[test]
    fn the_challenge_response_binds_the_source_address_and_the_welcome_opens_at_the_client() {
        let (table, mut client) = table_with_client();
        table.publish_server_tick(77);
        let challenge = challenge_for(&table, &mut client, addr(1), Instant::now());
        let mut datagram = respond(&mut client, &challenge);
        let request_len = datagram.len();
        let reply_len = match table.handle_datagram(addr(1), &mut datagram, Instant::now()).unwrap() {
            Inbound::Bound { session_id: SESSION, owner: 3, reply_len, rebound: false } => reply_len,
            other => panic!("unexpected {other:?}"),
        };
        assert!(reply_len <= request_len);
        assert_eq!(table.endpoint_of(SESSION), Some(addr(1)));
        assert_eq!(table.session_for_endpoint(addr(1)), Some(SESSION));
        let welcome = client.open(&mut datagram[..reply_len]).unwrap();
        assert_eq!(welcome, DataMessage::new(Body::UdpWelcome(UdpWelcome { session_id: SESSION, server_tick: 77 })));
    }

    #[test]
    fn hello_reply_is_never_larger_than_the_request() {
        let (table, mut client) = table_with_client();
        table.publish_server_tick(u64::MAX);
        for target in [MIN_HELLO_BYTES, 1100, MAX_DATAGRAM_BYTES] {
            let msg = crate::net::udp::channel::padded_hello(SESSION, target);
            let mut datagram = seal(&mut client, &msg);
            let request_len = datagram.len();
            assert!(request_len >= MIN_HELLO_BYTES);
            match table.handle_datagram(addr(1), &mut datagram, Instant::now()).unwrap() {
                Inbound::Challenged { reply_len, .. } | Inbound::Bound { reply_len, .. } => {
                    assert!(reply_len < request_len, "{reply_len} >= {request_len}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn hello_below_the_minimum_size_is_rejected_without_binding() {
        let (table, mut client) = table_with_client();
        let msg = crate::net::udp::channel::padded_hello(SESSION, MIN_HELLO_BYTES - 1);
        let mut datagram = seal(&mut client, &msg);
        assert_eq!(table.handle_datagram(addr(1), &mut datagram, Instant::now()), Err(UdpError::HelloTooSmall));
        assert_eq!(table.endpoint_of(SESSION), None);
        assert_eq!(table.bound_endpoints(), 0);
    }

    #[test]
    fn hello_naming_another_session_is_rejected() {
        let (table, mut client) = table_with_client();
        let msg = crate::net::udp::channel::padded_hello(SESSION + 1, MAX_DATAGRAM_BYTES);
        let mut datagram = seal(&mut client, &msg);
        assert_eq!(table.handle_datagram(addr(1), &mut datagram, Instant::now()), Err(UdpError::HelloSessionMismatch));
        assert_eq!(table.endpoint_of(SESSION), None);
    }

    #[test]
    fn input_before_any_hello_is_not_bound() {
        let (table, mut client) = table_with_client();
        let mut datagram = seal(&mut client, &input(1));
        assert_eq!(table.handle_datagram(addr(1), &mut datagram, Instant::now()), Err(UdpError::NotBound));
    }

    #[test]
    fn input_from_the_bound_address_is_delivered_with_its_owner() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        let mut datagram = seal(&mut client, &input(5));
        let now = Instant::now();
        assert_eq!(
            table.handle_datagram(addr(1), &mut datagram, now),
            Ok(Inbound::Message { session_id: SESSION, owner: 3, msg: input(5) })
        );
        assert_eq!(table.info(SESSION).unwrap().last_seen, Some(now));
    }

    #[test]
    fn datagram_from_a_spoofed_second_address_is_ignored() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        let genuine = seal(&mut client, &input(1));
        let mut spoofed = genuine.clone();
        assert_eq!(table.handle_datagram(addr(2), &mut spoofed, Instant::now()), Err(UdpError::WrongAddress));
        let mut second_hello = hello(&mut client);
        assert_eq!(table.handle_datagram(addr(2), &mut second_hello, Instant::now()), Err(UdpError::WrongAddress));
        assert_eq!(table.endpoint_of(SESSION), Some(addr(1)));
        // The copy from the wrong address did not consume the sequence: the genuine datagram still gets through.
        let mut genuine = genuine;
        assert!(matches!(table.handle_datagram(addr(1), &mut genuine, Instant::now()), Ok(Inbound::Message { .. })));
    }

    #[test]
    fn rebind_moves_the_endpoint_only_after_allow_rebind() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        let mut early = hello(&mut client);
        assert_eq!(table.handle_datagram(addr(2), &mut early, Instant::now()), Err(UdpError::WrongAddress));

        assert!(table.allow_rebind(SESSION));
        // A non-hello from the new address does not move the binding, nor burn its sequence.
        let mut stray = seal(&mut client, &input(1));
        assert_eq!(table.handle_datagram(addr(2), &mut stray, Instant::now()), Err(UdpError::WrongAddress));
        match bind(&table, &mut client, addr(2)) {
            Inbound::Bound { rebound: true, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(table.endpoint_of(SESSION), Some(addr(2)));
        assert_eq!(table.session_for_endpoint(addr(2)), Some(SESSION));
        assert_eq!(table.session_for_endpoint(addr(1)), None, "old mapping removed");
        assert_eq!(table.bound_endpoints(), 1);

        // The permission was used up: moving again needs another allow_rebind.
        let mut back = hello(&mut client);
        assert_eq!(table.handle_datagram(addr(1), &mut back, Instant::now()), Err(UdpError::WrongAddress));
        let mut old_address_input = seal(&mut client, &input(2));
        assert_eq!(table.handle_datagram(addr(1), &mut old_address_input, Instant::now()), Err(UdpError::WrongAddress));
    }

    #[test]
    fn repeated_hello_from_the_bound_address_is_welcomed_again() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        match bind(&table, &mut client, addr(1)) {
            Inbound::Bound { rebound: false, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(table.bound_endpoints(), 1);
    }

    #[test]
    fn replayed_hello_is_dropped() {
        let (table, mut client) = table_with_client();
        let datagram = hello(&mut client);
        let mut first = datagram.clone();
        table.handle_datagram(addr(1), &mut first, Instant::now()).unwrap();
        let mut replay = datagram;
        assert_eq!(table.handle_datagram(addr(1), &mut replay, Instant::now()), Err(UdpError::Replayed));
    }

    #[test]
    fn endpoint_bound_to_one_session_cannot_be_taken_by_another() {
        let (table, mut client) = table_with_client();
        table.register(SESSION + 1, &keys(2), 0).unwrap();
        let mut other = DataChannel::client(SESSION + 1, &keys(2));
        bind(&table, &mut client, addr(1));
        assert_eq!(try_bind(&table, &mut other, addr(1)), Err(UdpError::EndpointInUse));
        assert_eq!(table.session_for_endpoint(addr(1)), Some(SESSION));
        assert_eq!(table.endpoint_of(SESSION + 1), None);
    }

    #[test]
    fn unregister_removes_both_mappings() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        assert!(table.unregister(SESSION));
        assert_eq!(table.session_for_endpoint(addr(1)), None);
        assert_eq!(table.endpoint_of(SESSION), None);
        assert_eq!((table.len(), table.bound_endpoints()), (0, 0));
        let mut datagram = seal(&mut client, &input(1));
        assert_eq!(table.handle_datagram(addr(1), &mut datagram, Instant::now()), Err(UdpError::UnknownSession));
        assert!(!table.unregister(SESSION));
    }

    #[test]
    fn registering_a_session_twice_is_refused() {
        let (table, _) = table_with_client();
        assert_eq!(table.register(SESSION, &keys(9), 0), Err(UdpError::SessionExists));
        assert_eq!(table.owner_of(SESSION), Some(3));
    }

    #[test]
    fn seal_for_needs_a_bound_endpoint_and_reaches_the_client() {
        let (table, mut client) = table_with_client();
        let snapshot = DataMessage::new(Body::Snapshot(Snapshot { tick: 12, ..Default::default() }));
        let mut out = [0u8; MAX_DATAGRAM_BYTES];
        assert_eq!(table.seal_for(SESSION, &snapshot, &mut out), Err(UdpError::NotBound));
        assert_eq!(table.seal_for(SESSION + 9, &snapshot, &mut out), Err(UdpError::UnknownSession));
        bind(&table, &mut client, addr(1));
        // The challenge and the welcome used sequences 0 and 1: sequences keep rising.
        let (n, to) = table.seal_for(SESSION, &snapshot, &mut out).unwrap();
        assert_eq!(to, addr(1));
        assert_eq!(DatagramHeader::parse(&out[..n]).unwrap().sequence, 2);
        assert_eq!(client.open(&mut out[..n]).unwrap(), snapshot);
    }

    #[test]
    fn client_sending_server_only_messages_is_rejected() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        for server_only in [
            Body::Snapshot(Snapshot::default()),
            Body::DeltaSnapshot(crate::proto::DeltaSnapshot { tick: 3, ..Default::default() }),
            Body::UdpWelcome(UdpWelcome { session_id: SESSION, server_tick: 1 }),
            Body::UdpChallenge(UdpChallenge { session_id: SESSION, ..Default::default() }),
        ] {
            let mut datagram = seal(&mut client, &DataMessage::new(server_only.clone()));
            assert_eq!(
                table.handle_datagram(addr(1), &mut datagram, Instant::now()),
                Err(UdpError::UnexpectedMessage),
                "{server_only:?}"
            );
        }
        let mut ping = seal(&mut client, &DataMessage::new(Body::Ping(Ping { nonce: 1, client_time_us: 2 })));
        assert!(matches!(table.handle_datagram(addr(1), &mut ping, Instant::now()), Ok(Inbound::Message { .. })));
    }

    #[test]
    fn tampered_datagram_fails_auth_and_does_not_advance_the_window() {
        let (table, mut client) = table_with_client();
        bind(&table, &mut client, addr(1));
        let genuine = seal(&mut client, &input(1));
        let mut tampered = genuine.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xFF;
        assert_eq!(table.handle_datagram(addr(1), &mut tampered, Instant::now()), Err(UdpError::AuthFailed));
        assert_eq!(table.info(SESSION).unwrap().highest_received, Some(1), "only the hello and the response");
        let mut genuine = genuine;
        assert!(table.handle_datagram(addr(1), &mut genuine, Instant::now()).is_ok());
    }

    #[test]
    fn sessions_are_shared_across_threads() {
        let table = Arc::new(SessionTable::<u32>::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let id = t * 1000 + i;
                        table.register(id, &keys(t as u8), t as u32).unwrap();
                        let mut client = DataChannel::client(id, &keys(t as u8));
                        bind(&table, &mut client, SocketAddr::from(([10, 0, t as u8, 1], 1000 + i as u16)));
                        if i % 2 == 0 {
                            assert!(table.unregister(id));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(table.len(), 100);
        assert_eq!(table.bound_endpoints(), 100);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_bind(
            bytes in proptest::collection::vec(any::<u8>(), 0..1500),
            kind_is_valid in any::<bool>(),
            known_session in any::<bool>(),
        ) {
            let (table, _client) = table_with_client();
            let mut bytes = bytes;
            if kind_is_valid && !bytes.is_empty() {
                bytes[0] = super::super::KIND_DATA_V1;
            }
            if known_session && bytes.len() >= 9 {
                bytes[1..9].copy_from_slice(&SESSION.to_be_bytes());
            }
            let result = table.handle_datagram(addr(1), &mut bytes, Instant::now());
            prop_assert!(result.is_err());
            prop_assert_eq!(table.bound_endpoints(), 0);
        }

        #[test]
        fn any_single_bit_flip_of_a_hello_is_rejected(bit in 0usize..MAX_DATAGRAM_BYTES * 8) {
            let (table, mut client) = table_with_client();
            let mut datagram = hello(&mut client);
            datagram[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(table.handle_datagram(addr(1), &mut datagram, Instant::now()).is_err());
            prop_assert_eq!(table.bound_endpoints(), 0);
        }
    }
}
