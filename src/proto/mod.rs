//! The wire protocol: prost types generated from `proto/realm.proto` at build time, plus small helpers.
//!
//! `ControlMessage` travels over TLS in length-prefixed frames (see [`crate::net::framing`]); `DataMessage` is
//! the sealed plaintext of a UDP datagram. Bump [`PROTOCOL_VERSION`] on any incompatible change.

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/realm.v1.rs"));
}

pub use generated::*;

pub mod delta;

/// The newest protocol version this build speaks (2: delta snapshots); clients send it in `Hello`.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version the server still accepts (1: full snapshots), so clients written against it keep working.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Largest UDP payload we send or accept: fits the IPv6 minimum MTU minus headers, so no fragmentation.
pub const MAX_DATAGRAM_BYTES: usize = 1200;

impl ControlMessage {
    /// Wraps a body into an envelope.
    pub fn new(body: control_message::Body) -> Self {
        Self { body: Some(body) }
    }

    /// A short, stable name of the message kind, for logs, metrics and "not allowed in this state" errors.
    pub fn kind(&self) -> &'static str {
        use control_message::Body::*;
        match &self.body {
            None => "unknown",
            Some(Hello(_)) => "hello",
            Some(HelloOk(_)) => "hello_ok",
            Some(Register(_)) => "register",
            Some(Login(_)) => "login",
            Some(TransferLogin(_)) => "transfer_login",
            Some(LoginOk(_)) => "login_ok",
            Some(LoginError(_)) => "login_error",
            Some(Chat(_)) => "chat",
            Some(ChatMessage(_)) => "chat_message",
            Some(CombatEvent(_)) => "combat_event",
            Some(ZoneTransfer(_)) => "zone_transfer",
            Some(Ping(_)) => "ping",
            Some(Pong(_)) => "pong",
            Some(Logout(_)) => "logout",
            Some(Kick(_)) => "kick",
            Some(UdpRebind(_)) => "udp_rebind",
            Some(PlayerStats(_)) => "player_stats",
            Some(Error(_)) => "error",
            Some(Loot(_)) => "loot",
            Some(ChatRefused(_)) => "chat_refused",
            Some(Resume(_)) => "resume",
            Some(TokenLogin(_)) => "token_login",
        }
    }
}

impl DataMessage {
    /// Wraps a body into an envelope.
    pub fn new(body: data_message::Body) -> Self {
        Self { body: Some(body) }
    }
}

impl Kick {
    /// A kick with a reason and a human-readable message.
    pub fn new(reason: KickReason, message: impl Into<String>) -> Self {
        Self { reason: reason as i32, message: message.into() }
    }
}

/// Appends `state` as it appears inside a `Snapshot`: the key of `Snapshot.entities` (field 4), the length, the
/// message. Snapshots built with [`encode_snapshot`] are these pieces back to back, so an entity seen by hundreds
/// of players is encoded once per tick, not once per snapshot.
///
/// Written by hand, byte for byte what prost writes (a property test holds it to that): every visible entity is
/// encoded each tick, and prost's generic path (a length pass, then one bounds-checked push per varint byte) was
/// 13% of the simulation's tick in the load benchmark. Here the field is built in a stack buffer and appended once.
pub fn encode_entity_field(state: &EntityState, out: &mut Vec<u8>) {
    let mut buf = [0u8; ENTITY_FIELD_MAX];
    let mut at = 2; // the key and the one-byte length go first
    if state.id != 0 {
        at = put_varint(&mut buf, at, 1 << 3, state.id);
    }
    if state.kind != 0 {
        at = put_varint(&mut buf, at, 2 << 3, state.kind as i64 as u64);
    }
    for (field, v) in [(3, &state.position), (4, &state.velocity)] {
        if let Some(v) = v {
            buf[at] = (field << 3) | WIRE_LEN;
            let len_at = at + 1;
            at += 2;
            for (field, f) in [(1, v.x), (2, v.y)] {
                if f != 0.0 {
                    buf[at] = (field << 3) | WIRE_FIXED32;
                    buf[at + 1..at + 5].copy_from_slice(&f.to_le_bytes());
                    at += 5;
                }
            }
            buf[len_at] = (at - len_at - 1) as u8;
        }
    }
    // int32 fields are sign-extended to 64 bits on the wire (protobuf's rule; prost follows it).
    for (field, v) in [(5, state.hp as i64 as u64), (6, state.max_hp as i64 as u64)] {
        if v != 0 {
            at = put_varint(&mut buf, at, field << 3, v);
        }
    }
    for (field, v) in [(7, state.level), (8, state.flags)] {
        if v != 0 {
            at = put_varint(&mut buf, at, field << 3, u64::from(v));
        }
    }
    buf[0] = (SNAPSHOT_ENTITIES_FIELD as u8) << 3 | WIRE_LEN;
    buf[1] = (at - 2) as u8;
    out.extend_from_slice(&buf[..at]);
}

const WIRE_FIXED32: u8 = 5;
const WIRE_LEN: u8 = 2;
/// The largest encoded `EntityState` field: key and length (2), id and kind (11 each), two `Vec2` (2 + 2 x 5
/// each), hp and max_hp (11 each: negative int32 take ten bytes), level and flags (6 each). Its body is under 128
/// bytes, so its length is always one byte.
const ENTITY_FIELD_MAX: usize = 2 + 11 + 11 + 12 + 12 + 11 + 11 + 6 + 6;
const _: () = assert!(ENTITY_FIELD_MAX - 2 < 128);

/// Writes a one-byte key (field numbers below 16) and `v` as a varint at `buf[at..]`; returns the next position.
#[inline]
fn put_varint(buf: &mut [u8], mut at: usize, key: u8, mut v: u64) -> usize {
    buf[at] = key;
    at += 1;
    while v >= 0x80 {
        buf[at] = v as u8 | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}

/// `Snapshot.entities` and `DataMessage.snapshot` (both field 4 in `proto/realm.proto`; a test decodes the
/// output of [`encode_snapshot`] to hold this to the schema).
const SNAPSHOT_ENTITIES_FIELD: u32 = 4;
const DATA_MESSAGE_SNAPSHOT_FIELD: u32 = 4;

/// Encodes `DataMessage { snapshot }` at the end of `out` (a tick's snapshots share one buffer) from `header` (a snapshot whose `entities` are
/// not encoded: they are ignored) and `entities`, [`encode_entity_field`] outputs, nearest first, copied straight
/// from wherever they were encoded. The result decodes exactly as the `DataMessage` with those entities in the
/// snapshot: protobuf allows a message's fields in any order, and the repeated field's elements keep theirs.
pub fn encode_snapshot<'a>(header: &Snapshot, entities: impl Iterator<Item = &'a [u8]> + Clone, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let header = Snapshot { entities: Vec::new(), ..*header };
    let body_len = prost::Message::encoded_len(&header) + entities.clone().map(<[u8]>::len).sum::<usize>();
    out.reserve(2 + encoded_len_varint(body_len as u64) + body_len);
    encode_key(DATA_MESSAGE_SNAPSHOT_FIELD, WireType::LengthDelimited, out);
    encode_varint(body_len as u64, out);
    prost::Message::encode_raw(&header, out);
    for entity in entities {
        out.extend_from_slice(entity);
    }
}

/// `DataMessage.delta_snapshot` (`proto/realm.proto`; a test holds [`encode_delta_snapshot`] to prost's bytes).
const DATA_MESSAGE_DELTA_SNAPSHOT_FIELD: u8 = 9;

/// The most bytes a `DeltaSnapshot`'s fields other than `entities` take: five varints of at most 10 bytes plus
/// their one-byte keys, `tick_rate` (6), and the `entities` key with a length under 2^14 (3).
const DELTA_HEADER_MAX: usize = 5 * 11 + 6 + 3;

/// `header`'s fields 1-5 and the key and length of `entities` (if not empty) into `buf`, then `tick_rate` after
/// them: `(end of the fields before the entities bytes, body length without them)`.
#[inline]
fn delta_header(header: &DeltaSnapshot, entities: usize, buf: &mut [u8; DELTA_HEADER_MAX]) -> (usize, usize) {
    let mut at = 0;
    for (field, v) in [
        (1u8, header.tick),
        (2, header.baseline_tick),
        (3, u64::from(header.last_processed_input)),
        (4, header.input_client_time_us),
        (5, u64::from(header.total_visible)),
    ] {
        if v != 0 {
            at = put_varint(buf, at, field << 3, v);
        }
    }
    if entities != 0 {
        at = put_varint(buf, at, 6 << 3 | WIRE_LEN, entities as u64);
    }
    let before = at;
    if header.tick_rate != 0 {
        at = put_varint(buf, at, 7 << 3, u64::from(header.tick_rate));
    }
    (before, at)
}

/// Appends `DataMessage { delta_snapshot }` of `header` (its `entities` ignored) and `entities` to `out`, byte for
/// byte what prost writes (fields in order, zeros left out), without building the message: the simulation thread
/// writes 2,000 of these a tick. Nothing is written when the message would be longer than `budget` bytes. Returns
/// the message's length, written or not (the header is encoded once for both).
pub fn encode_delta_snapshot(header: &DeltaSnapshot, entities: &[u8], budget: usize, out: &mut Vec<u8>) -> usize {
    let mut buf = [0; DELTA_HEADER_MAX];
    let (before, len) = delta_header(header, entities.len(), &mut buf);
    let body = len + entities.len();
    let mut envelope = [0; 11];
    let n = put_varint(&mut envelope, 0, DATA_MESSAGE_DELTA_SNAPSHOT_FIELD << 3 | WIRE_LEN, body as u64);
    if n + body > budget {
        return n + body;
    }
    out.reserve(n + body);
    out.extend_from_slice(&envelope[..n]);
    out.extend_from_slice(&buf[..before]);
    out.extend_from_slice(entities);
    out.extend_from_slice(&buf[before..len]);
    n + body
}

#[cfg(test)]
mod snapshot_encoding_tests {
    use super::*;
    use proptest::prelude::*;

    fn vec2() -> impl Strategy<Value = Option<Vec2>> {
        // Raw bit patterns: zeros of both signs, NaNs, infinities and subnormals all come up.
        let f = prop_oneof![any::<u32>().prop_map(f32::from_bits), Just(0.0f32), Just(-0.0f32)];
        proptest::option::of((f.clone(), f).prop_map(|(x, y)| Vec2 { x, y }))
    }

    proptest! {
        #[test]
        fn entity_field_is_byte_for_byte_what_prost_writes(
            id in prop_oneof![any::<u64>(), Just(0u64)],
            kind in prop_oneof![any::<i32>(), 0..3i32],
            position in vec2(),
            velocity in vec2(),
            hp in prop_oneof![any::<i32>(), -5..50i32],
            max_hp in any::<i32>(),
            level in prop_oneof![any::<u32>(), 0..3u32],
            flags in 0..4u32,
        ) {
            let state = EntityState { id, kind, position, velocity, hp, max_hp, level, flags };
            let mut ours = vec![9u8]; // appended after what is there
            encode_entity_field(&state, &mut ours);
            let mut theirs = vec![9u8];
            prost::encoding::message::encode(SNAPSHOT_ENTITIES_FIELD, &state, &mut theirs);
            prop_assert_eq!(ours, theirs);
        }
    }

    proptest! {
        #[test]
        fn delta_snapshot_is_byte_for_byte_what_prost_writes(
            tick in prop_oneof![any::<u64>(), Just(0u64), 1..300u64],
            baseline_tick in prop_oneof![any::<u64>(), Just(0u64)],
            last_processed_input in prop_oneof![any::<u32>(), Just(0u32)],
            input_client_time_us in prop_oneof![any::<u64>(), Just(0u64)],
            total_visible in prop_oneof![any::<u32>(), Just(0u32), 0..200u32],
            entities in proptest::collection::vec(any::<u8>(), 0..1300),
            tick_rate in prop_oneof![any::<u32>(), Just(0u32), Just(20u32)],
        ) {
            let header = DeltaSnapshot {
                tick, baseline_tick, last_processed_input, input_client_time_us, total_visible,
                entities: Vec::new(), tick_rate,
            };
            let mut ours = vec![7u8]; // appended after what is there
            let n = encode_delta_snapshot(&header, &entities, usize::MAX, &mut ours);
            prop_assert_eq!(n, ours.len() - 1);
            // Over budget by one byte: nothing written, the same length returned.
            let mut short = vec![7u8];
            prop_assert_eq!(encode_delta_snapshot(&header, &entities, n - 1, &mut short), n);
            prop_assert_eq!(short, vec![7u8]);
            let message = DataMessage::new(data_message::Body::DeltaSnapshot(DeltaSnapshot { entities, ..header }));
            let mut theirs = vec![7u8];
            prost::Message::encode(&message, &mut theirs).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn hand_assembled_snapshot_decodes_as_the_message() {
        let entities: Vec<EntityState> = (0..30u64)
            .map(|i| EntityState {
                id: i << 32 | 7,
                kind: EntityKind::Npc as i32,
                position: Some(Vec2 { x: i as f32, y: -2.5 }),
                velocity: (i % 2 == 0).then_some(Vec2 { x: 1.0, y: 0.0 }),
                hp: 40 - i as i32,
                max_hp: 40,
                level: 3,
                flags: (i % 4) as u32,
            })
            .collect();
        let snapshot = Snapshot {
            tick: 123_456,
            last_processed_input: 99,
            input_client_time_us: 1 << 40,
            entities: entities.clone(),
            total_visible: 300,
        };
        let mut fields = Vec::new();
        for e in &entities {
            let before = fields.len();
            encode_entity_field(e, &mut fields);
            assert_eq!(fields.len() - before, prost::encoding::message::encoded_len(SNAPSHOT_ENTITIES_FIELD, e));
        }
        // Appended after whatever the buffer holds (another snapshot of the tick).
        let mut bytes = vec![0xAB; 3];
        let (first, rest) = fields.split_at(fields.len() / 3); // any split: the pieces are concatenated
        encode_snapshot(&Snapshot { entities: Vec::new(), ..snapshot.clone() }, [first, rest].into_iter(), &mut bytes);
        assert_eq!(bytes[..3], [0xAB; 3]);
        let bytes = &bytes[3..];
        let expected = DataMessage::new(data_message::Body::Snapshot(snapshot));
        assert_eq!(bytes.len(), prost::Message::encoded_len(&expected));
        assert_eq!(<DataMessage as prost::Message>::decode(bytes).unwrap(), expected);
    }
}
