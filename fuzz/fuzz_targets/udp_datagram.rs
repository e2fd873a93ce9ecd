//! The UDP data channel as a network peer reaches it: `realm::net::udp::SessionTable::handle_datagram` and the
//! replay window behind it.
//!
//! Input: `[mode] [ops...]`.
//!
//! * mode even — a session table with two registered sessions, driven by ops (`op % 9`; `s` picks the session,
//!   `a` one of four source addresses, `chunk` is a u16-length-prefixed byte string):
//!   0 `a chunk`: a raw datagram. 1 `s a chunk`: `chunk` sealed as the plaintext of a valid client datagram
//!   (`realm_fuzz::seal_client_datagram`, cross-checked against the client's `DataChannel::seal` at the same
//!   sequence), so whatever follows authentication sees arbitrary bytes. 2 `s a`: the client's padded hello.
//!   3 `i a`: a datagram sent earlier, again. 4 `s`: `allow_rebind`. 5 `s`: unregister and register again with
//!   new keys. 6 `s k`: the server seals a message for the session; the client must open it. 7 `t`: the clock
//!   advances `t * 100` ms. 8 `s a`: the client answers the session's latest challenge.
//!   Checked after every step: a (session, sequence) is accepted at most once; replies are smaller than what they
//!   answer and open at the client as the expected message; a message is only delivered from the bound address;
//!   `session_for_endpoint` and `endpoint_of` agree both ways.
//! * mode odd — a `ReplayWindow` fed `check`/`commit`/`check_and_commit` of arbitrary or nearby sequences, against
//!   a model that remembers every committed sequence: a sequence accepted once is never accepted again.
#![no_main]

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use realm::net::udp::{
    DataChannel, DataKeys, DatagramHeader, Inbound, ReplayWindow, SessionTable, UdpError, MAX_DATAGRAM_BYTES,
    REPLAY_WINDOW,
};
use realm::proto::{data_message::Body, DataMessage, Ping, Snapshot, UdpChallenge};
use realm_fuzz::{seal_client_datagram, Input, KEYING_MATERIAL, OTHER_KEYING_MATERIAL, OTHER_SESSION_ID, SESSION_ID};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    if input.byte() & 1 == 0 {
        table(input);
    } else {
        replay_window(input);
    }
});

/// The client side of one registered session.
struct Client {
    id: u64,
    /// Bumped by every re-registration; part of the keys, so an old incarnation's datagrams never authenticate.
    incarnation: u8,
    channel: DataChannel,
    challenge: Option<UdpChallenge>,
    /// Sequences the table accepted (returned `Ok`) in this incarnation.
    accepted: HashSet<u64>,
}

impl Client {
    fn material(id: u64, incarnation: u8) -> [u8; 64] {
        let mut material = if id == SESSION_ID { KEYING_MATERIAL } else { OTHER_KEYING_MATERIAL };
        material[0] ^= incarnation;
        material[63] ^= incarnation;
        material
    }

    fn new(table: &SessionTable<u32>, id: u64, incarnation: u8) -> Client {
        let keys = DataKeys::from_keying_material(&Client::material(id, incarnation));
        table.register(id, &keys, id as u32).expect("register");
        let channel = DataChannel::client(id, &keys);
        Client { id, incarnation, channel, challenge: None, accepted: HashSet::new() }
    }
}

const ADDRS: [&str; 4] = ["192.0.2.1:4000", "192.0.2.1:4001", "198.51.100.7:4000", "[2001:db8::1]:4000"];

fn addr(b: u8) -> SocketAddr {
    ADDRS[usize::from(b) % ADDRS.len()].parse().expect("address")
}

fn table(mut input: Input<'_>) {
    let table = SessionTable::<u32>::new();
    let mut clients = [Client::new(&table, SESSION_ID, 0), Client::new(&table, OTHER_SESSION_ID, 0)];
    let start = Instant::now();
    let mut now = start;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let op = input.byte() % 9;
        realm_fuzz::trace!("op {op}");
        match op {
            0 => {
                let src = addr(input.byte());
                let datagram = input.chunk().to_vec();
                deliver(&table, &mut clients, src, datagram, now, &mut sent);
            }
            1 => {
                let client = &mut clients[usize::from(input.byte() % 2)];
                let src = addr(input.byte());
                let plaintext = input.chunk();
                let datagram = seal_checked(client, plaintext);
                deliver(&table, &mut clients, src, datagram, now, &mut sent);
            }
            2 => {
                let client = &mut clients[usize::from(input.byte() % 2)];
                let src = addr(input.byte());
                let mut buf = [0u8; MAX_DATAGRAM_BYTES];
                let n = client.channel.seal_hello(&mut buf).expect("hello seals");
                deliver(&table, &mut clients, src, buf[..n].to_vec(), now, &mut sent);
            }
            3 => {
                let index = usize::from(input.byte());
                let src = addr(input.byte());
                if let Some(datagram) = sent.get(index % sent.len().max(1)).cloned() {
                    deliver(&table, &mut clients, src, datagram, now, &mut sent);
                }
            }
            4 => {
                let client = &clients[usize::from(input.byte() % 2)];
                assert!(table.allow_rebind(client.id));
            }
            5 => {
                let index = usize::from(input.byte() % 2);
                let (id, incarnation) = (clients[index].id, clients[index].incarnation.wrapping_add(1));
                assert!(table.unregister(id));
                assert_eq!(table.endpoint_of(id), None);
                clients[index] = Client::new(&table, id, incarnation);
            }
            6 => {
                let client = &mut clients[usize::from(input.byte() % 2)];
                let msg = if input.byte() & 1 == 0 {
                    DataMessage::new(Body::Ping(Ping { nonce: 5, client_time_us: 6 }))
                } else {
                    DataMessage::new(Body::Snapshot(Snapshot { tick: 9, ..Default::default() }))
                };
                let mut buf = [0u8; MAX_DATAGRAM_BYTES];
                match table.seal_for(client.id, &msg, &mut buf) {
                    Ok((n, to)) => {
                        assert_eq!(Some(to), table.endpoint_of(client.id), "sealed for an address not bound");
                        let opened =
                            client.channel.open(&mut buf[..n]).expect("the client opens what the server sealed");
                        assert_eq!(opened.encode_to_vec(), msg.encode_to_vec());
                    }
                    Err(e) => assert!(UdpError::REASONS.contains(&e.reason())),
                }
            }
            7 => now += Duration::from_millis(100 * u64::from(input.byte())),
            _ => {
                let client = &mut clients[usize::from(input.byte() % 2)];
                let src = addr(input.byte());
                if let Some(challenge) = client.challenge.clone() {
                    let mut buf = [0u8; MAX_DATAGRAM_BYTES];
                    let n = client.channel.seal_challenge_response(&challenge, &mut buf).expect("response seals");
                    deliver(&table, &mut clients, src, buf[..n].to_vec(), now, &mut sent);
                }
            }
        }
        check_maps(&table, &clients);
    }
}

/// Seals `plaintext` at the client's next sequence, and checks that the library's client seals the same bytes.
fn seal_checked(client: &mut Client, plaintext: &[u8]) -> Vec<u8> {
    let sequence = client.channel.next_sequence();
    let material = Client::material(client.id, client.incarnation);
    let datagram = seal_client_datagram(&material, client.id, sequence, plaintext);
    // What DataChannel::seal makes of the same message at the same sequence must match our sealer byte for byte
    // (for a plaintext that is not a message, compare the empty message and use our datagram anyway).
    let msg = DataMessage::decode(plaintext).unwrap_or_default();
    let mut buf = [0u8; MAX_DATAGRAM_BYTES];
    if let Ok(n) = client.channel.seal(&msg, &mut buf) {
        let expected = seal_client_datagram(&material, client.id, sequence, &msg.encode_to_vec());
        assert_eq!(buf[..n], expected[..], "DataChannel::seal disagrees with the documented datagram format");
    }
    datagram
}

fn deliver(
    table: &SessionTable<u32>,
    clients: &mut [Client; 2],
    src: SocketAddr,
    datagram: Vec<u8>,
    now: Instant,
    sent: &mut Vec<Vec<u8>>,
) {
    let mut buf = datagram.clone();
    let result = table.handle_datagram(src, &mut buf, now);
    realm_fuzz::trace!("{} bytes from {src}: {result:?}", datagram.len());
    if sent.len() < 32 {
        sent.push(datagram.clone());
    }
    let inbound = match result {
        Ok(inbound) => inbound,
        Err(e) => {
            assert!(UdpError::REASONS.contains(&e.reason()), "unlisted reason {}", e.reason());
            return;
        }
    };
    let header = DatagramHeader::parse(&datagram).expect("an accepted datagram has a valid header");
    let client = clients.iter_mut().find(|c| c.id == header.session_id).expect("accepted for a registered session");
    assert!(client.accepted.insert(header.sequence), "sequence {} accepted twice: {inbound:?}", header.sequence);
    match inbound {
        Inbound::Challenged { session_id, reply_len } => {
            assert_eq!(session_id, client.id);
            assert!(reply_len < datagram.len(), "challenge of {reply_len} bytes answers {} bytes", datagram.len());
            match client.channel.open(&mut buf[..reply_len]).expect("the client opens the challenge").body {
                Some(Body::UdpChallenge(c)) => {
                    assert_eq!(c.session_id, client.id);
                    client.challenge = Some(c);
                }
                other => panic!("expected a challenge, got {other:?}"),
            }
        }
        Inbound::Bound { session_id, reply_len, .. } => {
            assert_eq!(session_id, client.id);
            assert!(reply_len <= datagram.len(), "welcome of {reply_len} bytes answers {} bytes", datagram.len());
            assert_eq!(table.endpoint_of(session_id), Some(src), "bound, but not to the source");
            match client.channel.open(&mut buf[..reply_len]).expect("the client opens the welcome").body {
                Some(Body::UdpWelcome(w)) => assert_eq!(w.session_id, client.id),
                other => panic!("expected a welcome, got {other:?}"),
            }
        }
        Inbound::Message { session_id, msg, .. } => {
            assert_eq!(session_id, client.id);
            assert_eq!(table.endpoint_of(session_id), Some(src), "a message delivered from an unbound address");
            assert!(
                matches!(msg.body, Some(Body::Input(_) | Body::Ping(_) | Body::Pong(_))),
                "delivered a message the client never sends: {msg:?}"
            );
        }
        _ => {}
    }
}

/// `by_endpoint[addr] == id` if and only if `by_id[id]` is bound to `addr`.
fn check_maps(table: &SessionTable<u32>, clients: &[Client; 2]) {
    let mut bound = 0;
    for client in clients {
        if let Some(endpoint) = table.endpoint_of(client.id) {
            bound += 1;
            assert_eq!(table.session_for_endpoint(endpoint), Some(client.id), "endpoint map disagrees");
        }
        let info = table.info(client.id).expect("registered");
        assert_eq!(info.endpoint, table.endpoint_of(client.id), "the session's copy of its endpoint diverged");
    }
    for i in 0..ADDRS.len() {
        let a = addr(i as u8);
        if let Some(id) = table.session_for_endpoint(a) {
            assert_eq!(table.endpoint_of(id), Some(a), "stale endpoint {a} -> {id:#x}");
        }
    }
    assert_eq!(table.bound_endpoints(), bound, "endpoints bound to no session");
}

fn replay_window(mut input: Input<'_>) {
    let mut window = ReplayWindow::new();
    let mut highest: Option<u64> = None;
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    while !input.is_empty() {
        let op = input.byte();
        let base = highest.unwrap_or(0);
        let seq = if op & 4 != 0 {
            input.u64()
        } else {
            let delta = input.u16() as i16;
            base.saturating_add_signed(i64::from(delta))
        };
        let expected = match highest {
            Some(h) if seq <= h && h - seq >= REPLAY_WINDOW => Err(UdpError::TooOld),
            _ if seen.contains(&seq) => Err(UdpError::Replayed),
            _ => Ok(()),
        };
        match op & 3 {
            0 => assert_eq!(window.check(seq), expected, "check({seq}) with highest {highest:?}"),
            1 => window.commit(seq), // a sequence `check` rejects commits nothing
            _ => assert_eq!(window.check_and_commit(seq), expected, "check_and_commit({seq}), highest {highest:?}"),
        }
        if op & 3 != 0 && expected.is_ok() {
            seen.insert(seq);
            let h = highest.map_or(seq, |h| h.max(seq));
            highest = Some(h);
            // Only the window matters; forget the rest so the model stays small.
            seen = seen.split_off(&h.saturating_sub(REPLAY_WINDOW - 1));
        }
        assert_eq!(window.highest(), highest, "highest after {seq}");
    }
}
