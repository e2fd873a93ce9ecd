//! The UDP data channel over real loopback sockets: a client binds with a hello, inputs and snapshots cross in
//! both directions through the batched recvmmsg/sendmmsg path, spoofed and replayed datagrams are dropped, NAT
//! rebinding works only when allowed, and dropping a bad datagram allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use realm::net::udp::batch::{bind_reuseport, RecvBatch, SendBatch, DEFAULT_BATCH};
use realm::net::udp::{
    DataChannel, DataKeys, Inbound, SessionTable, UdpError, KEYING_MATERIAL_BYTES, MAX_DATAGRAM_BYTES,
};
use realm::proto::data_message::Body;
use realm::proto::{DataMessage, EntityState, Input, Snapshot, UdpWelcome, Vec2};

// ---------------------------------------------------------------------------------------------------------------
// Per-thread allocation counter, so "nothing is allocated on the drop path" is checked, not assumed.
// ---------------------------------------------------------------------------------------------------------------

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counter is a const-initialised
// thread-local `Cell` without a destructor, so touching it never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

const SESSION: u64 = 0xDEAD_BEEF_0000_0001;
const SERVER: Token = Token(0);
const CLIENT: Token = Token(1);

/// Both ends derive the same keys from the same (here: fixed) exported keying material.
fn keys(seed: u8) -> DataKeys {
    let mut material = [0u8; KEYING_MATERIAL_BYTES];
    for (i, b) in material.iter_mut().enumerate() {
        *b = seed ^ (i as u8).wrapping_mul(31);
    }
    DataKeys::from_keying_material(&material)
}

fn loopback() -> UdpSocket {
    bind_reuseport("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap()
}

fn input(sequence: u32) -> DataMessage {
    DataMessage::new(Body::Input(Input {
        sequence,
        move_dir: Some(Vec2 { x: 0.0, y: 1.0 }),
        ability: 0,
        target_entity: 0,
        client_time_us: 1_000 + u64::from(sequence),
        snapshot_ack: 0,
    }))
}

fn snapshot(tick: u64) -> DataMessage {
    DataMessage::new(Body::Snapshot(Snapshot {
        tick,
        last_processed_input: 1,
        input_client_time_us: 1_001,
        entities: (0..20)
            .map(|id| EntityState {
                id,
                position: Some(Vec2 { x: id as f32, y: 2.0 }),
                hp: 100,
                max_hp: 100,
                level: 3,
                ..Default::default()
            })
            .collect(),
        total_visible: 20,
    }))
}

/// Waits (on a real mio `Poll`, like an io thread) until `socket` yields at least one batch, and returns the
/// datagrams of that batch.
fn poll_recv(poll: &mut Poll, socket: &UdpSocket, batch: &mut RecvBatch) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events = Events::with_capacity(8);
    loop {
        match batch.recv(socket) {
            Ok(_) => return batch.iter_mut().map(|(src, d)| (src, d.to_vec())).collect(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        assert!(Instant::now() < deadline, "nothing arrived within 5 s");
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
    }
}

/// A server endpoint as an io thread would hold it: socket, poll, preallocated batches and the shared table.
struct Server {
    socket: UdpSocket,
    poll: Poll,
    recv: RecvBatch,
    send: SendBatch,
    table: Arc<SessionTable<u32>>,
}

impl Server {
    fn new(table: Arc<SessionTable<u32>>) -> Self {
        let mut socket = loopback();
        let poll = Poll::new().unwrap();
        poll.registry().register(&mut socket, SERVER, Interest::READABLE).unwrap();
        Self { socket, poll, recv: RecvBatch::new(DEFAULT_BATCH), send: SendBatch::new(DEFAULT_BATCH), table }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// One io-loop step: receive a batch, run every datagram through the table, queue welcomes, flush. Returns
    /// the accepted messages and the drop reasons.
    fn step(&mut self) -> (Vec<(u64, DataMessage)>, Vec<&'static str>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        loop {
            match self.recv.recv(&self.socket) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "server received nothing within 5 s");
                    self.poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
                }
                Err(e) => panic!("server recv: {e}"),
            }
        }
        let (mut messages, mut dropped) = (Vec::new(), Vec::new());
        for (src, datagram) in self.recv.iter_mut() {
            match self.table.handle_datagram(src, datagram, Instant::now()) {
                Ok(Inbound::Bound { reply_len, .. } | Inbound::Challenged { reply_len, .. }) => {
                    assert!(self.send.push(src, &datagram[..reply_len]))
                }
                Ok(Inbound::Message { session_id, msg, .. }) => messages.push((session_id, msg)),
                Err(e) => dropped.push(e.reason()),
                Ok(_) => unreachable!("Inbound has three variants"),
            }
        }
        let flushed = self.send.flush(&self.socket);
        assert_eq!(flushed.dropped, 0);
        (messages, dropped)
    }

    fn send_snapshot(&mut self, session_id: u64, msg: &DataMessage) {
        let table = &self.table;
        assert_eq!(self.send.push_with(|buf| table.seal_for(session_id, msg, buf)), Ok(true));
        assert!(self.send.flush(&self.socket).sent >= 1);
    }
}

/// A game client: its own socket and poll, and the client side of the channel.
struct Client {
    socket: UdpSocket,
    poll: Poll,
    recv: RecvBatch,
    channel: DataChannel,
}

impl Client {
    fn new(session_id: u64, keys: &DataKeys) -> Self {
        let mut socket = loopback();
        let poll = Poll::new().unwrap();
        poll.registry().register(&mut socket, CLIENT, Interest::READABLE).unwrap();
        Self { socket, poll, recv: RecvBatch::new(4), channel: DataChannel::client(session_id, keys) }
    }

    fn send(&mut self, to: SocketAddr, msg: &DataMessage) -> Vec<u8> {
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = self.channel.seal(msg, &mut buf).unwrap();
        self.socket.send_to(&buf[..n], to).unwrap();
        buf[..n].to_vec()
    }

    fn send_hello(&mut self, to: SocketAddr) -> usize {
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = self.channel.seal_hello(&mut buf).unwrap();
        self.socket.send_to(&buf[..n], to).unwrap();
        n
    }

    /// Answers the challenge the server sent to the last hello (the next datagram to arrive).
    fn answer_challenge(&mut self, to: SocketAddr) {
        let received = self.receive();
        let Some(Body::UdpChallenge(challenge)) = &received[0].1.body else {
            panic!("expected a challenge, got {received:?}")
        };
        let mut buf = [0u8; MAX_DATAGRAM_BYTES];
        let n = self.channel.seal_challenge_response(challenge, &mut buf).unwrap();
        self.socket.send_to(&buf[..n], to).unwrap();
    }

    fn receive(&mut self) -> Vec<(usize, DataMessage)> {
        poll_recv(&mut self.poll, &self.socket, &mut self.recv)
            .into_iter()
            .map(|(_, mut d)| (d.len(), self.channel.open(&mut d).expect("server datagram opens")))
            .collect()
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }
}

fn bound_pair() -> (Server, Client) {
    let table = Arc::new(SessionTable::new());
    table.register(SESSION, &keys(1), 0).unwrap();
    let mut server = Server::new(table);
    let mut client = Client::new(SESSION, &keys(1));
    client.send_hello(server.addr());
    let (messages, dropped) = server.step();
    assert!(messages.is_empty() && dropped.is_empty(), "{dropped:?}");
    client.answer_challenge(server.addr());
    server.step();
    let welcome = client.receive();
    assert!(matches!(welcome[0].1.body, Some(Body::UdpWelcome(UdpWelcome { session_id: SESSION, .. }))));
    (server, client)
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn client_binds_with_hello_then_input_and_snapshot_cross_encrypted_over_loopback() {
    let table = Arc::new(SessionTable::new());
    table.register(SESSION, &keys(1), 7).unwrap();
    table.publish_server_tick(500);
    let mut server = Server::new(Arc::clone(&table));
    let mut client = Client::new(SESSION, &keys(1));

    let hello_len = client.send_hello(server.addr());
    server.step();
    assert_eq!(table.endpoint_of(SESSION), None, "a hello alone binds nothing");
    let challenge = client.receive();
    assert!(challenge[0].0 < hello_len, "challenge {} must be smaller than hello {hello_len}", challenge[0].0);
    let Some(Body::UdpChallenge(c)) = &challenge[0].1.body else { panic!("expected a challenge: {challenge:?}") };
    let mut response = [0u8; MAX_DATAGRAM_BYTES];
    let n = client.channel.seal_challenge_response(c, &mut response).unwrap();
    client.socket.send_to(&response[..n], server.addr()).unwrap();
    server.step();
    assert_eq!(table.endpoint_of(SESSION), Some(client.addr()));
    let welcome = client.receive();
    assert_eq!(welcome.len(), 1);
    let (welcome_len, welcome) = &welcome[0];
    assert!(*welcome_len < hello_len, "reply {welcome_len} must be smaller than hello {hello_len}");
    assert_eq!(welcome, &DataMessage::new(Body::UdpWelcome(UdpWelcome { session_id: SESSION, server_tick: 500 })));

    let wire = client.send(server.addr(), &input(1));
    assert!(!wire.windows(8).any(|w| w == 1_001u64.to_le_bytes()), "plaintext fields must not be visible");
    let (messages, dropped) = server.step();
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(messages, vec![(SESSION, input(1))]);

    server.send_snapshot(SESSION, &snapshot(501));
    let got = client.receive();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, snapshot(501));
}

#[test]
fn many_inputs_arrive_through_one_recvmmsg_batch() {
    let (mut server, mut client) = bound_pair();
    for i in 0..20 {
        client.send(server.addr(), &input(i));
    }
    let mut received = Vec::new();
    while received.len() < 20 {
        let (messages, dropped) = server.step();
        assert!(dropped.is_empty(), "{dropped:?}");
        received.extend(messages);
    }
    let expected: Vec<_> = (0..20).map(|i| (SESSION, input(i))).collect();
    assert_eq!(received, expected);
}

#[test]
fn replayed_datagram_on_the_wire_is_dropped_as_replayed() {
    let (mut server, mut client) = bound_pair();
    let wire = client.send(server.addr(), &input(1));
    assert_eq!(server.step().0.len(), 1);
    client.socket.send_to(&wire, server.addr()).unwrap();
    let (messages, dropped) = server.step();
    assert!(messages.is_empty());
    assert_eq!(dropped, vec!["replayed"]);
}

#[test]
fn datagram_copied_to_a_second_address_is_ignored_and_the_binding_stays() {
    let (mut server, mut client) = bound_pair();
    let attacker = loopback();
    let mut buf = [0u8; MAX_DATAGRAM_BYTES];
    let n = client.channel.seal(&input(9), &mut buf).unwrap();
    attacker.send_to(&buf[..n], server.addr()).unwrap();
    let (messages, dropped) = server.step();
    assert!(messages.is_empty());
    assert_eq!(dropped, vec!["wrong_address"]);
    assert_eq!(server.table.endpoint_of(SESSION), Some(client.addr()));
    // The genuine datagram, arriving late from the real client, is still accepted.
    client.socket.send_to(&buf[..n], server.addr()).unwrap();
    assert_eq!(server.step().0, vec![(SESSION, input(9))]);
}

#[test]
fn nat_rebinding_moves_snapshots_to_the_new_address_only_after_allow_rebind() {
    let (mut server, mut client) = bound_pair();
    // The client's NAT mapping changes: same keys, new socket.
    let mut old_socket = std::mem::replace(&mut client.socket, loopback());
    client.poll.registry().deregister(&mut old_socket).unwrap();
    client.poll.registry().register(&mut client.socket, CLIENT, Interest::READABLE).unwrap();

    client.send_hello(server.addr());
    assert_eq!(server.step().1, vec!["wrong_address"]);

    assert!(server.table.allow_rebind(SESSION)); // the client sent UdpRebind over TLS
    client.send_hello(server.addr());
    let (_, dropped) = server.step();
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(server.table.endpoint_of(SESSION), Some(old_socket.local_addr().unwrap()), "not before the challenge");
    client.answer_challenge(server.addr());
    server.step();
    assert_eq!(server.table.endpoint_of(SESSION), Some(client.addr()));
    assert!(matches!(client.receive()[0].1.body, Some(Body::UdpWelcome(_))));

    server.send_snapshot(SESSION, &snapshot(2));
    assert_eq!(client.receive()[0].1, snapshot(2));
}

#[test]
fn small_hello_gets_no_reply() {
    let table = Arc::new(SessionTable::new());
    table.register(SESSION, &keys(1), 0).unwrap();
    let mut server = Server::new(Arc::clone(&table));
    let mut client = Client::new(SESSION, &keys(1));
    let mut buf = [0u8; MAX_DATAGRAM_BYTES];
    let hello = DataMessage::new(Body::UdpHello(realm::proto::UdpHello { session_id: SESSION, padding: vec![0; 16] }));
    let n = client.channel.seal(&hello, &mut buf).unwrap();
    client.socket.send_to(&buf[..n], server.addr()).unwrap();
    assert_eq!(server.step().1, vec!["hello_too_small"]);
    assert_eq!(table.endpoint_of(SESSION), None);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(client.recv.recv(&client.socket).unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn two_reuseport_sockets_share_one_session_table() {
    // Two "io threads" on the same port; the kernel spreads clients over them by address hash, and every
    // client's inputs are delivered whichever socket they hit.
    let table = Arc::new(SessionTable::<u32>::new());
    let first = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
    let port_addr = first.local_addr().unwrap();
    let sockets = [first, bind_reuseport(port_addr, 1 << 20).unwrap()];
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::unbounded();
    let io_threads: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let (table, stop, tx) = (Arc::clone(&table), Arc::clone(&stop), tx.clone());
            std::thread::spawn(move || {
                let (mut recv, mut send) = (RecvBatch::new(DEFAULT_BATCH), SendBatch::new(DEFAULT_BATCH));
                while !stop.load(Ordering::Relaxed) {
                    match recv.recv(&socket) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        Err(e) => panic!("io-{index}: {e}"),
                    }
                    for (src, datagram) in recv.iter_mut() {
                        match table.handle_datagram(src, datagram, Instant::now()) {
                            Ok(Inbound::Bound { reply_len, .. } | Inbound::Challenged { reply_len, .. }) => {
                                assert!(send.push(src, &datagram[..reply_len]))
                            }
                            Ok(Inbound::Message { session_id, msg, .. }) => tx.send((session_id, msg)).unwrap(),
                            Err(e) => panic!("io-{index} dropped a genuine datagram: {e}"),
                            Ok(_) => unreachable!(),
                        }
                    }
                    send.flush(&socket);
                }
            })
        })
        .collect();

    let mut clients: Vec<Client> = (0..8)
        .map(|i| {
            table.register(100 + i, &keys(i as u8), i as u32 % 2).unwrap();
            Client::new(100 + i, &keys(i as u8))
        })
        .collect();
    for client in &mut clients {
        client.send_hello(port_addr);
        client.answer_challenge(port_addr);
        assert!(matches!(client.receive()[0].1.body, Some(Body::UdpWelcome(_))));
        client.send(port_addr, &input(1));
    }
    let mut delivered: Vec<u64> =
        (0..clients.len()).map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("input delivered").0).collect();
    delivered.sort_unstable();
    assert_eq!(delivered, (100..108).collect::<Vec<_>>());
    assert_eq!(table.bound_endpoints(), 8);
    stop.store(true, Ordering::Relaxed);
    for thread in io_threads {
        thread.join().unwrap();
    }
}

#[test]
fn dropping_invalid_datagrams_allocates_nothing() {
    let table = SessionTable::<u32>::new();
    table.register(SESSION, &keys(1), 0).unwrap();
    let mut client = DataChannel::client(SESSION, &keys(1));
    let bound: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let spoofed: SocketAddr = "192.0.2.2:4000".parse().unwrap();
    let mut hello = [0u8; MAX_DATAGRAM_BYTES];
    let n = client.seal_hello(&mut hello).unwrap();
    let reply = match table.handle_datagram(bound, &mut hello[..n], Instant::now()) {
        Ok(Inbound::Challenged { reply_len, .. }) => reply_len,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let Some(Body::UdpChallenge(challenge)) = client.open(&mut hello[..reply]).unwrap().body else {
        panic!("expected a challenge")
    };
    let mut response = [0u8; MAX_DATAGRAM_BYTES];
    let n = client.seal_challenge_response(&challenge, &mut response).unwrap();
    assert!(matches!(table.handle_datagram(bound, &mut response[..n], Instant::now()), Ok(Inbound::Bound { .. })));

    let mut genuine = [0u8; MAX_DATAGRAM_BYTES];
    let genuine_len = client.seal(&input(1), &mut genuine).unwrap();
    let mut accepted = genuine;
    assert!(table.handle_datagram(bound, &mut accepted[..genuine_len], Instant::now()).is_ok());
    let mut tampered = [0u8; MAX_DATAGRAM_BYTES];
    let tampered_len = client.seal(&input(2), &mut tampered).unwrap();
    tampered[tampered_len - 1] ^= 1;
    let mut unknown = genuine;
    unknown[1] ^= 0xFF;
    let mut wrong_kind = genuine;
    wrong_kind[0] = 0x7F;
    let mut garbage = [0xA5u8; 600];
    garbage[0] = 0x01;
    garbage[1..9].copy_from_slice(&SESSION.to_be_bytes());
    garbage[9..17].copy_from_slice(&1_000u64.to_be_bytes());

    let now = Instant::now();
    let mut cases: [(&str, SocketAddr, Vec<u8>); 8] = [
        ("replayed", bound, genuine[..genuine_len].to_vec()),
        ("auth_failed", bound, tampered[..tampered_len].to_vec()),
        ("auth_failed", bound, garbage.to_vec()),
        ("wrong_address", spoofed, genuine[..genuine_len].to_vec()),
        ("unknown_session", bound, unknown[..genuine_len].to_vec()),
        ("unknown_kind", bound, wrong_kind[..genuine_len].to_vec()),
        ("too_short", bound, vec![0x01; 20]),
        ("too_large", bound, vec![0x01; MAX_DATAGRAM_BYTES + 1]),
    ];
    for (reason, src, datagram) in cases.iter_mut() {
        let before = allocations();
        let result = table.handle_datagram(*src, datagram, now);
        let allocated = allocations() - before;
        match result {
            Err(e) => assert_eq!(e.reason(), *reason),
            Ok(other) => panic!("{reason}: accepted {other:?}"),
        }
        assert_eq!(allocated, 0, "dropping a {reason} datagram allocated {allocated} times");
    }
    // And sealing a snapshot into a caller buffer allocates nothing either (the message itself is prebuilt).
    let msg = snapshot(3);
    let mut out = [0u8; MAX_DATAGRAM_BYTES];
    let before = allocations();
    table.seal_for(SESSION, &msg, &mut out).unwrap();
    assert_eq!(allocations() - before, 0, "seal_for allocated");
    assert_eq!(UdpError::Replayed.reason(), "replayed");
}
