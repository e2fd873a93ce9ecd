//! Password hashing (argon2id, OWASP parameters: m = 19 MiB, t = 2, p = 1) behind a concurrency cap, and the
//! small constant-time helpers around tokens. Runs on worker threads only: one hash takes tens of milliseconds
//! and 19 MiB, so the cap bounds both CPU and memory under a login storm.
//!
//! Admission: hashes come in two classes. A login to an account that exists ([`HashClass::Account`]) waits for
//! any permit and goes first. A registration or a login to a name that does not exist ([`HashClass::Anonymous`]:
//! what anyone can ask for without knowing anything) may hold at most all permits but one, waits only while no
//! account login is waiting, and gives up with [`HashError::Busy`] when too many anonymous hashes queue or the wait
//! is too long (by default it does not wait at all: see [`Admission::default`]). A flood of registrations or of logins with made-up names therefore costs its own members a
//! "busy" answer, not every player their login. (Under such a flood a name that gets "busy" is more likely not
//! to exist: the price of the reserved share, which the per-address limits keep small.)

use std::cell::RefCell;
use std::time::{Duration, Instant};

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

/// Whose hash it is: decides its share of the hashing capacity (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashClass {
    /// A login to an account that exists.
    Account,
    /// A registration, or a login to a name that does not exist.
    Anonymous,
}

/// How anonymous hashes are admitted (from `[security]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Anonymous hashes waiting at once; more are refused as busy at once.
    pub anonymous_queue: usize,
    /// Longest wait of an anonymous hash for a permit.
    pub anonymous_wait: Duration,
}

impl Default for Admission {
    /// No waiting: an anonymous hash that finds its share in use is busy at once. Hashing runs on the login
    /// workers, and a worker blocked waiting for a permit cannot take the next job off the queue — not even the
    /// login of an account that exists, for which a permit is free.
    fn default() -> Self {
        Self { anonymous_queue: 64, anonymous_wait: Duration::ZERO }
    }
}

struct Permits {
    free: usize,
    anonymous_running: usize,
    anonymous_waiting: usize,
    account_waiting: usize,
}

/// argon2id with a cap on simultaneous hashes.
pub struct PasswordHasher {
    argon: Argon2<'static>,
    params: Params,
    permits: Mutex<Permits>,
    /// Most anonymous hashes running at once: every permit but one (so an account login never waits behind a
    /// flood), at least one.
    anonymous_cap: usize,
    admission: Admission,
    /// Hashes computed (hash + verify), for tests and diagnostics.
    computed: std::sync::atomic::AtomicU64,
    freed: Condvar,
    /// A real hash of a random password, verified against when the user does not exist, so that an unknown user
    /// costs the same time as a wrong password.
    dummy: String,
}

/// Hashing failed or was not admitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// Invalid parameters (or a corrupt stored hash).
    #[error("password hashing failed: {0}")]
    Failed(String),
    /// An anonymous hash was not admitted: too many queued, or it waited too long. Answer "busy, retry".
    #[error("password hashing is busy")]
    Busy,
}

fn failed(e: impl std::fmt::Display) -> HashError {
    HashError::Failed(e.to_string())
}

impl PasswordHasher {
    /// OWASP's argon2id parameters, at most `max_concurrent` at once.
    pub fn new(max_concurrent: usize) -> Result<Self, HashError> {
        Self::with_params(max_concurrent, 19 * 1024, 2, 1)
    }

    /// Custom cost (tests use a cheaper one; production uses [`PasswordHasher::new`]).
    pub fn with_params(max_concurrent: usize, m_kib: u32, t: u32, p: u32) -> Result<Self, HashError> {
        let params = Params::new(m_kib, t, p, None).map_err(failed)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let total = max_concurrent.max(1);
        let mut hasher = Self {
            argon,
            params,
            permits: Mutex::new(Permits {
                free: total,
                anonymous_running: 0,
                anonymous_waiting: 0,
                account_waiting: 0,
            }),
            anonymous_cap: total.saturating_sub(1).max(1),
            admission: Admission::default(),
            computed: std::sync::atomic::AtomicU64::new(0),
            freed: Condvar::new(),
            dummy: String::new(),
        };
        let mut random = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        hasher.dummy = hasher.hash(&hex(&random))?;
        Ok(hasher)
    }

    /// Sets how anonymous hashes are admitted.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Hashes computed so far (every `hash` and every admitted `verify`).
    pub fn hashes_computed(&self) -> u64 {
        self.computed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn permit(&self, class: HashClass) -> Result<Permit<'_>, HashError> {
        let mut p = self.permits.lock();
        match class {
            HashClass::Account => {
                p.account_waiting += 1;
                while p.free == 0 {
                    self.freed.wait(&mut p);
                }
                p.account_waiting -= 1;
            }
            HashClass::Anonymous => {
                let admissible =
                    |p: &Permits| p.free > 0 && p.anonymous_running < self.anonymous_cap && p.account_waiting == 0;
                if !admissible(&p) {
                    if p.anonymous_waiting >= self.admission.anonymous_queue {
                        return Err(HashError::Busy);
                    }
                    let deadline = Instant::now() + self.admission.anonymous_wait;
                    p.anonymous_waiting += 1;
                    while !admissible(&p) {
                        if self.freed.wait_until(&mut p, deadline).timed_out() && !admissible(&p) {
                            p.anonymous_waiting -= 1;
                            return Err(HashError::Busy);
                        }
                    }
                    p.anonymous_waiting -= 1;
                }
                p.anonymous_running += 1;
            }
        }
        p.free -= 1;
        self.computed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Permit(self, class))
    }

    /// A PHC string for `password` (the same format the argon2 crate's own `hash_password` writes). Registration
    /// hashes are anonymous: [`HashError::Busy`] when their share is exhausted.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        let _permit = self.permit(HashClass::Anonymous)?;
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let raw_salt = salt.decode_b64(&mut salt_bytes).map_err(failed)?;
        let mut out = [0u8; 32];
        with_blocks(self.params.block_count(), |blocks| {
            self.argon.hash_password_into_with_memory(password.as_bytes(), raw_salt, &mut out, blocks)
        })
        .map_err(failed)?;
        let phc = PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(Version::V0x13.into()),
            params: (&self.params).try_into().map_err(|e: argon2::password_hash::Error| failed(e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(failed)?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches `stored` (a PHC string); `None` (no such account) verifies against a dummy
    /// hash and returns false after the same work, as an anonymous hash ([`HashError::Busy`] when its share is
    /// exhausted).
    pub fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, HashError> {
        let class = if stored.is_some() { HashClass::Account } else { HashClass::Anonymous };
        let _permit = self.permit(class)?;
        let target = stored.unwrap_or(&self.dummy);
        let ok = verify_phc(password, target).unwrap_or(false);
        Ok(ok && stored.is_some())
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

struct Permit<'a>(&'a PasswordHasher, HashClass);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut p = self.0.permits.lock();
        p.free += 1;
        if self.1 == HashClass::Anonymous {
            p.anonymous_running -= 1;
        }
        drop(p);
        // Waiters of both classes share the condvar and each re-checks its own rule.
        self.0.freed.notify_all();
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
        assert!(h.verify("correct horse", Some(&stored)).unwrap());
        assert!(!h.verify("wrong", Some(&stored)).unwrap());
        assert!(!h.verify("correct horse", None).unwrap(), "unknown user never verifies");
        assert!(!h.verify("x", Some("not a phc string")).unwrap());
    }

    #[test]
    fn anonymous_hashes_leave_a_permit_for_account_logins_and_are_refused_when_their_queue_is_full() {
        let h = PasswordHasher::with_params(2, 256, 1, 1)
            .unwrap()
            .with_admission(Admission { anonymous_queue: 0, anonymous_wait: Duration::from_millis(50) });
        let held = h.permit(HashClass::Anonymous).unwrap();
        assert!(matches!(h.permit(HashClass::Anonymous), Err(HashError::Busy)), "one permit is kept for accounts");
        assert!(matches!(h.hash("password1"), Err(HashError::Busy)));
        assert!(matches!(h.verify("password1", None), Err(HashError::Busy)), "unknown names are anonymous");
        let stored = {
            drop(held);
            h.hash("password1").unwrap()
        };
        let _a = h.permit(HashClass::Anonymous).unwrap();
        assert!(h.verify("password1", Some(&stored)).unwrap(), "an account login still gets the reserved permit");
    }

    #[test]
    fn an_anonymous_hash_waits_for_a_permit_within_its_deadline() {
        let h = std::sync::Arc::new(
            PasswordHasher::with_params(1, 256, 1, 1)
                .unwrap()
                .with_admission(Admission { anonymous_queue: 4, anonymous_wait: Duration::from_secs(5) }),
        );
        let held = h.permit(HashClass::Account).unwrap();
        let waiter = {
            let h = std::sync::Arc::clone(&h);
            std::thread::spawn(move || h.hash("password1").is_ok())
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert!(waiter.join().unwrap());
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
        assert!(h.verify("pw-123456", Some(&theirs)).unwrap());
        assert!(!h.verify("pw-1234567", Some(&theirs)).unwrap());
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
