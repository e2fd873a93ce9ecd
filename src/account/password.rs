//! Password hashing (argon2id, OWASP parameters: m = 19 MiB, t = 2, p = 1) behind a concurrency cap, and the
//! small constant-time helpers around tokens. Runs on worker threads only: one hash takes tens of milliseconds
//! and 19 MiB, so the cap bounds both CPU and memory under a login storm.

use std::cell::RefCell;

use argon2::password_hash::{rand_core::OsRng, Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};

thread_local! {
    /// Each hashing thread's argon2 working memory (19 MiB at the OWASP parameters), allocated once and reused.
    /// Letting the argon2 crate allocate it per hash left ~10-20 MB resident per login with glibc (measured:
    /// 41 hashes grew RSS by 440 MB; 2,000 logins took a server to 24 GB and the OOM killer).
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// argon2id with a cap on simultaneous hashes.
pub struct PasswordHasher {
    argon: Argon2<'static>,
    params: Params,
    permits: Mutex<usize>,
    freed: Condvar,
    /// A real hash of a random password, verified against when the user does not exist, so that an unknown user
    /// costs the same time as a wrong password.
    dummy: String,
}

/// Hashing failed (only on invalid parameters or a corrupt stored hash).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl PasswordHasher {
    /// OWASP's argon2id parameters, at most `max_concurrent` at once.
    pub fn new(max_concurrent: usize) -> Result<Self, HashError> {
        Self::with_params(max_concurrent, 19 * 1024, 2, 1)
    }

    /// Custom cost (tests use a cheaper one; production uses [`PasswordHasher::new`]).
    pub fn with_params(max_concurrent: usize, m_kib: u32, t: u32, p: u32) -> Result<Self, HashError> {
        let params = Params::new(m_kib, t, p, None).map_err(|e| HashError(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut hasher = Self {
            argon,
            params,
            permits: Mutex::new(max_concurrent.max(1)),
            freed: Condvar::new(),
            dummy: String::new(),
        };
        let mut random = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        hasher.dummy = hasher.hash(&hex(&random))?;
        Ok(hasher)
    }

    fn permit(&self) -> Permit<'_> {
        let mut permits = self.permits.lock();
        while *permits == 0 {
            self.freed.wait(&mut permits);
        }
        *permits -= 1;
        Permit(self)
    }

    /// A PHC string for `password` (the same format the argon2 crate's own `hash_password` writes).
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        let _permit = self.permit();
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(|e| HashError(e.to_string()))?;
        let mut out = [0u8; 32];
        with_blocks(self.params.block_count(), |blocks| {
            self.argon.hash_password_into_with_memory(password.as_bytes(), raw_salt, &mut out, blocks)
        })
        .map_err(|e| HashError(e.to_string()))?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: (&self.params).try_into().map_err(|e: argon2::password_hash::Error| HashError(e.to_string()))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| HashError(e.to_string()))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches `stored` (a PHC string); `None` verifies against a dummy hash and returns false
    /// after the same work.
    pub fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let _permit = self.permit();
        let target = stored.unwrap_or(&self.dummy);
        let ok = verify_phc(password, target).unwrap_or(false);
        ok && stored.is_some()
    }
}

/// Runs `f` with this thread's argon2 working memory, grown to `count` blocks if needed (never shrunk: a hashing
/// thread keeps one buffer for its whole life).
fn with_blocks<R>(count: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < count {
            blocks.resize(count, Block::default());
        }
        f(&mut blocks[..count])
    })
}

/// Recomputes the argon2id hash of `password` with the parameters and salt stored in `phc`, in this thread's
/// reusable memory, and compares in constant time. Only argon2id is accepted; memory above 256 MiB is refused so
/// a corrupt stored hash cannot make a worker allocate without bound.
fn verify_phc(password: &str, phc: &str) -> Option<bool> {
    let parsed = PasswordHash::new(phc).ok()?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return None;
    }
    let params = Params::try_from(&parsed).ok()?;
    if params.m_cost() > 256 * 1024 {
        return None;
    }
    let expected = parsed.hash?;
    let mut salt_bytes = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt_bytes).ok()?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; 64];
    let out = out.get_mut(..expected.len())?;
    with_blocks(params.block_count(), |blocks| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt, out, blocks)
    })
    .ok()?;
    Some(constant_time_eq(out, expected.as_bytes()))
}

struct Permit<'a>(&'a PasswordHasher);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.permits.lock() += 1;
        self.0.freed.notify_one();
    }
}

/// A fresh random token of 256 bits and the SHA-256 that is stored in its place.
pub fn new_token() -> ([u8; 32], [u8; 32]) {
    let mut token = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut token);
    (token, sha256(&token))
}

/// SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality that takes the same time wherever the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_or_unknown_fail() {
        let h = PasswordHasher::with_params(2, 256, 1, 1).unwrap();
        let stored = h.hash("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(h.verify("correct horse", Some(&stored)));
        assert!(!h.verify("wrong", Some(&stored)));
        assert!(!h.verify("correct horse", None), "unknown user never verifies");
        assert!(!h.verify("x", Some("not a phc string")));
    }

    #[test]
    fn hashes_stay_compatible_with_the_argon2_crates_own_format() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = PasswordHasher::with_params(1, 256, 1, 1).unwrap();
        // Ours verifies with the crate's verifier...
        let ours = h.hash("pw-123456").unwrap();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(256, 1, 1, None).unwrap());
        assert!(argon.verify_password(b"pw-123456", &PasswordHash::new(&ours).unwrap()).is_ok());
        // ...and the crate's hashes (e.g. already in a database) verify with ours.
        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon.hash_password(b"pw-123456", &salt).unwrap().to_string();
        assert!(h.verify("pw-123456", Some(&theirs)));
        assert!(!h.verify("pw-1234567", Some(&theirs)));
    }

    #[test]
    fn production_parameters_are_owasp() {
        let h = PasswordHasher::new(1).unwrap();
        let stored = h.hash("pw").unwrap();
        assert!(stored.contains("m=19456,t=2,p=1"), "{stored}");
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let (token, hash) = new_token();
        assert_eq!(sha256(&token), hash);
    }
}
