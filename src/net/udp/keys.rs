//! Data channel keys: two 32-byte ChaCha20-Poly1305 keys, one per direction, derived from the TLS session.
//!
//! Both ends call the RFC 5705 exporter of their (already authenticated) TLS session with [`EXPORTER_LABEL`] and
//! the big-endian session id as context, asking for [`KEYING_MATERIAL_BYTES`] bytes:
//!
//! ```text
//! conn.export_keying_material(&mut [0u8; 64], EXPORTER_LABEL, Some(&session_id.to_be_bytes()))
//! material[0..32]  = client -> server key
//! material[32..64] = server -> client key
//! ```
//!
//! The invariant a reader must not break: **a key never leaves the process and each key seals in one direction
//! only.** Both directions count sequence numbers from zero, so using one key both ways would reuse nonces.

use ring::aead::{LessSafeKey, UnboundKey, CHACHA20_POLY1305};

/// RFC 5705 exporter label for the UDP data channel keys (the `EXPORTER-` prefix follows RFC 5705 section 4).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-realm-udp-v1";

/// Bytes of keying material to export: two 32-byte keys.
pub const KEYING_MATERIAL_BYTES: usize = 2 * KEY_BYTES;

/// Length of one ChaCha20-Poly1305 key.
pub const KEY_BYTES: usize = 32;

/// Which way a datagram travels; each direction has its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server (inputs, hellos, pings).
    ClientToServer,
    /// Server to client (snapshots, welcomes, pongs).
    ServerToClient,
}

/// The two per-direction keys of one session. The raw bytes are overwritten with zeros when dropped.
///
/// `Debug` never prints key bytes.
pub struct DataKeys {
    client_to_server: [u8; KEY_BYTES],
    server_to_client: [u8; KEY_BYTES],
}

impl DataKeys {
    /// Splits exported keying material: the first 32 bytes are the client -> server key, the next 32 the
    /// server -> client key.
    pub fn from_keying_material(material: &[u8; KEYING_MATERIAL_BYTES]) -> DataKeys {
        let mut keys = DataKeys { client_to_server: [0; KEY_BYTES], server_to_client: [0; KEY_BYTES] };
        keys.client_to_server.copy_from_slice(&material[..KEY_BYTES]);
        keys.server_to_client.copy_from_slice(&material[KEY_BYTES..]);
        keys
    }

    /// The AEAD key that seals (and opens) datagrams travelling in `direction`.
    pub(crate) fn aead_key(&self, direction: Direction) -> LessSafeKey {
        let bytes = match direction {
            Direction::ClientToServer => &self.client_to_server,
            Direction::ServerToClient => &self.server_to_client,
        };
        // CHACHA20_POLY1305 takes exactly KEY_BYTES bytes; `new` only fails on a wrong length.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("ChaCha20-Poly1305 key is 32 bytes");
        LessSafeKey::new(unbound)
    }
}

impl Drop for DataKeys {
    fn drop(&mut self) {
        // Best effort without a zeroize dependency: black_box keeps the stores from being optimised away as dead.
        // ring's expanded key inside `LessSafeKey` is not ours to wipe.
        self.client_to_server.fill(0);
        self.server_to_client.fill(0);
        std::hint::black_box(&mut self.client_to_server);
        std::hint::black_box(&mut self.server_to_client);
    }
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keying_material_splits_into_client_then_server_key() {
        let mut material = [0u8; KEYING_MATERIAL_BYTES];
        for (i, b) in material.iter_mut().enumerate() {
            *b = i as u8;
        }
        let keys = DataKeys::from_keying_material(&material);
        assert_eq!(keys.client_to_server[..], material[..32]);
        assert_eq!(keys.server_to_client[..], material[32..]);
    }

    #[test]
    fn debug_output_does_not_contain_key_bytes() {
        let keys = DataKeys::from_keying_material(&[0xAB; KEYING_MATERIAL_BYTES]);
        let printed = format!("{keys:?}");
        assert!(!printed.contains("171") && !printed.to_lowercase().contains("ab,"), "{printed}");
    }

    #[test]
    fn exporter_label_has_the_rfc5705_prefix() {
        assert!(EXPORTER_LABEL.starts_with(b"EXPORTER-"));
    }
}
