//! Browser login tokens: JWT (RFC 7519) signed with HMAC-SHA256 (`HS256`) under `security.token_secret`
//! (`JWT_SECRET`).
//!
//! `POST /api/login` checks the password and answers a token; the browser presents it once on `GET /ws`, and only
//! then is the player claimed. A token is short-lived (`security.token_ttl_secs`), bound to the zone that issued
//! it, and single-use: its id (`jti`) is remembered until it expires, so a token replayed after use (after a
//! logout, say) is refused. Verification checks the algorithm named in the header (only `HS256`: no `none`, no
//! algorithm confusion), the signature in constant time (`ring::hmac::verify`), the expiry and the zone.
//!
//! Invariant: the secret never leaves this module and is never logged.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use parking_lot::Mutex;
use ring::hmac;

/// The only header this server issues or accepts.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Longest token accepted (a real one is about 250 bytes).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Secrets shorter than this are refused in production.
pub const MIN_SECRET_BYTES: usize = 32;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Player id, as a decimal string (JWT's `sub`).
    pub sub: String,
    /// Username as registered.
    pub name: String,
    /// Zone that issued it (and the only one that accepts it).
    pub zone: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Token id (hex): single use.
    pub jti: String,
}

impl Claims {
    /// The player id.
    pub fn player_id(&self) -> Option<u64> {
        self.sub.parse().ok()
    }
}

/// Why a token was refused (the client is told only that it was; the reason is logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, not JSON, too long, or not our header.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match (tampered, or signed with another secret).
    #[error("bad signature")]
    BadSignature,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// Issued by another zone.
    #[error("issued for another zone")]
    WrongZone,
    /// Used already.
    #[error("already used")]
    Replayed,
}

/// Issues and checks tokens. Shared by the login workers.
pub struct TokenSigner {
    key: hmac::Key,
    zone: String,
    ttl: Duration,
    /// Ids of tokens used, with their expiry (pruned as they expire).
    used: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("zone", &self.zone).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenSigner {
    /// A signer for `zone` with `secret`; tokens live `ttl`.
    pub fn new(secret: &[u8], zone: &str, ttl: Duration) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret), zone: zone.to_owned(), ttl, used: Mutex::default() }
    }

    /// How long a token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `player_id`/`username`, valid from `now` for the TTL.
    pub fn issue(&self, player_id: u64, username: &str, now: SystemTime) -> String {
        let mut jti = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut jti);
        let claims = Claims {
            sub: player_id.to_string(),
            name: username.to_owned(),
            zone: self.zone.clone(),
            iat: unix(now),
            exp: unix(now + self.ttl),
            jti: super::password::hex(&jti),
        };
        let payload = serde_json::to_vec(&claims).expect("claims serialise");
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(tag.as_ref()))
    }

    /// Checks a token without using it up.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = B64.decode(header).map_err(|_| TokenError::Malformed)?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let signature = B64.decode(signature).map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
        hmac::verify(&self.key, signing_input.as_bytes(), &signature).map_err(|_| TokenError::BadSignature)?;
        let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.player_id().is_none() {
            return Err(TokenError::Malformed);
        }
        if unix(now) >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.zone != self.zone {
            return Err(TokenError::WrongZone);
        }
        Ok(claims)
    }

    /// Checks a token and uses it up: the same token is refused from now on.
    pub fn redeem(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let claims = self.verify(token, now)?;
        let mut used = self.used.lock();
        let t = unix(now);
        if used.len() > 1024 {
            used.retain(|_, exp| *exp > t);
        }
        if used.insert(claims.jti.clone(), claims.exp).is_some() {
            return Err(TokenError::Replayed);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(b"0123456789abcdef0123456789abcdef", "vale", Duration::from_secs(60))
    }

    #[test]
    fn a_token_round_trips_once() {
        let s = signer();
        let now = SystemTime::now();
        let t = s.issue(42, "alice", now);
        let c = s.verify(&t, now).unwrap();
        assert_eq!((c.player_id(), c.name.as_str(), c.zone.as_str()), (Some(42), "alice", "vale"));
        assert_eq!(s.redeem(&t, now).unwrap().jti, c.jti);
        assert_eq!(s.redeem(&t, now), Err(TokenError::Replayed));
    }

    #[test]
    fn expired_tampered_foreign_and_malformed_tokens_are_refused() {
        let s = signer();
        let now = SystemTime::now();
        let t = s.issue(42, "alice", now);
        assert_eq!(s.verify(&t, now + Duration::from_secs(61)), Err(TokenError::Expired));
        // Another player id in the payload, same signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged = String::from_utf8(B64.decode(parts[1]).unwrap()).unwrap().replace("\"42\"", "\"1\"");
        let forged = format!("{}.{}.{}", parts[0], B64.encode(forged), parts[2]);
        assert_eq!(s.verify(&forged, now), Err(TokenError::BadSignature));
        // alg none.
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert_eq!(s.verify(&none, now), Err(TokenError::Malformed));
        let other_secret = TokenSigner::new(b"another secret, just as long.....", "vale", Duration::from_secs(60));
        assert_eq!(other_secret.verify(&t, now), Err(TokenError::BadSignature));
        let other_zone = TokenSigner::new(b"0123456789abcdef0123456789abcdef", "forest", Duration::from_secs(60));
        assert_eq!(other_zone.verify(&t, now), Err(TokenError::WrongZone));
        for bad in ["", "a.b", "a.b.c.d", "!!!.!!!.!!!", &"x".repeat(2000)] {
            assert_eq!(s.verify(bad, now), Err(TokenError::Malformed), "{bad:.20}");
        }
    }
}
