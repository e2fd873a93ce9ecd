//! The login path, run on a worker: credentials, lockouts, bans, then the claim of the player (ownership lock,
//! then fencing epoch). Refusals carry the reason sent to the client; an unknown user and a wrong password are
//! indistinguishable (same reason, same argon2 work).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::password::{new_token, PasswordHasher};
use super::{AccountStore, OwnershipLocks, PlayerStore, Progress, StoreError};
use crate::proto::LoginErrorReason;

/// Login tuning (from `[security]`, `[redis]` and `[server]`).
#[derive(Debug, Clone)]
pub struct LoginPolicy {
    /// Failed logins per account before a lockout.
    pub account_failures: u32,
    /// Failed logins per source address per window before that address is locked out.
    pub ip_failures: u32,
    /// Length of a lockout (and of the per-address window).
    pub lockout: Duration,
    /// Ownership lock TTL.
    pub lock_ttl: Duration,
    /// This zone's name (recorded as the owner).
    pub zone: String,
    /// Lifetime of a login session token.
    pub session_ttl: Duration,
}

impl LoginPolicy {
    /// From the configuration.
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            account_failures: c.security.lockout_failures,
            ip_failures: c.security.lockout_failures.saturating_mul(4),
            lockout: Duration::from_secs(c.security.lockout_secs),
            lock_ttl: Duration::from_millis(c.redis.lock_ttl_ms),
            zone: c.server.zone.clone(),
            session_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A refused login, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Reason code.
    pub reason: LoginErrorReason,
    /// Human-readable text.
    pub message: String,
    /// When to retry (lockouts, busy backend).
    pub retry_after: Duration,
}

impl Refusal {
    fn new(reason: LoginErrorReason, message: &str) -> Self {
        Self { reason, message: message.into(), retry_after: Duration::ZERO }
    }

    fn busy(e: &StoreError) -> Self {
        log::warn!("login backend error: {e}");
        Self {
            reason: LoginErrorReason::LoginErrorServerBusy,
            message: "try again shortly".into(),
            retry_after: Duration::from_secs(2),
        }
    }

    fn invalid() -> Self {
        Self::new(LoginErrorReason::LoginErrorInvalidCredentials, "invalid username or password")
    }
}

/// A successful login: the player is claimed by this zone.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginGrant {
    /// Player id.
    pub player_id: u64,
    /// Username as registered.
    pub username: String,
    /// Fencing epoch every save must carry.
    pub epoch: u64,
    /// Saved progress (`None` = new player).
    pub progress: Option<Progress>,
    /// Token of the ownership lock (to extend and release it).
    pub lock_token: String,
    /// The client's session token (only its hash is stored).
    pub session_token: [u8; 32],
}

/// Everything the login path needs; shared by all workers.
pub struct LoginService {
    /// Accounts.
    pub accounts: Arc<dyn AccountStore>,
    /// Player progress.
    pub players: Arc<dyn PlayerStore>,
    /// Ownership locks.
    pub locks: Arc<dyn OwnershipLocks>,
    /// argon2id.
    pub hasher: PasswordHasher,
    policy: LoginPolicy,
    instance: String,
    ip_failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl LoginService {
    /// A service over the given backends.
    pub fn new(
        accounts: Arc<dyn AccountStore>,
        players: Arc<dyn PlayerStore>,
        locks: Arc<dyn OwnershipLocks>,
        hasher: PasswordHasher,
        policy: LoginPolicy,
    ) -> Self {
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let instance = format!("{}-{}", policy.zone, super::password::hex(&id));
        Self { accounts, players, locks, hasher, policy, instance, ip_failures: Mutex::new(HashMap::new()) }
    }

    /// The policy in force.
    pub fn policy(&self) -> &LoginPolicy {
        &self.policy
    }

    fn ip_locked(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.ip_failures.lock();
        let (since, count) = map.get(&ip)?;
        let left = self.policy.lockout.checked_sub(since.elapsed())?;
        (*count >= self.policy.ip_failures).then_some(left)
    }

    fn ip_failed(&self, ip: IpAddr) {
        let mut map = self.ip_failures.lock();
        if map.len() > 100_000 {
            let lockout = self.policy.lockout;
            map.retain(|_, (since, _)| since.elapsed() < lockout);
        }
        let e = map.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= self.policy.lockout {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// Logs in with a password.
    pub fn login(&self, username: &str, password: &str, ip: IpAddr) -> Result<LoginGrant, Refusal> {
        if let Some(left) = self.ip_locked(ip) {
            return Err(Refusal {
                retry_after: left,
                ..Refusal::new(LoginErrorReason::LoginErrorLockedOut, "too many failed logins from this address")
            });
        }
        let account =
            if valid_username(username) { self.accounts.find(username).map_err(|e| Refusal::busy(&e))? } else { None };
        let ok = self.hasher.verify(password, account.as_ref().map(|a| a.password_hash.as_str()));
        let Some(account) = account.filter(|_| ok) else {
            self.ip_failed(ip);
            if let Some(a) = self.accounts.find(username).ok().flatten() {
                let _ = self.accounts.record_failure(a.id, self.policy.account_failures, self.policy.lockout);
            }
            return Err(Refusal::invalid());
        };
        let now = SystemTime::now();
        if let Some(until) = account.locked_until.filter(|u| *u > now) {
            let left = until.duration_since(now).unwrap_or_default();
            return Err(Refusal {
                retry_after: left,
                ..Refusal::new(LoginErrorReason::LoginErrorLockedOut, "account temporarily locked")
            });
        }
        if account.is_banned(now) {
            return Err(Refusal::new(LoginErrorReason::LoginErrorBanned, "this account is banned"));
        }
        self.accounts.record_success(account.id).map_err(|e| Refusal::busy(&e))?;
        self.claim(account.id, &account.username, ip)
    }

    /// Creates an account and logs in with it.
    pub fn register(&self, username: &str, password: &str, ip: IpAddr) -> Result<LoginGrant, Refusal> {
        if !valid_username(username) {
            return Err(Refusal::new(
                LoginErrorReason::LoginErrorInvalidUsername,
                "3 to 32 characters: letters, digits, _ and -",
            ));
        }
        if !(8..=128).contains(&password.len()) {
            return Err(Refusal::new(LoginErrorReason::LoginErrorWeakPassword, "passwords are 8 to 128 bytes"));
        }
        let hash = self.hasher.hash(password).map_err(|e| {
            log::error!("{e}");
            Refusal::new(LoginErrorReason::LoginErrorServerBusy, "try again shortly")
        })?;
        let id = match self.accounts.create(username, &hash) {
            Ok(id) => id,
            Err(StoreError::UsernameTaken) => {
                return Err(Refusal::new(LoginErrorReason::LoginErrorUsernameTaken, "that name is taken"))
            }
            Err(e) => return Err(Refusal::busy(&e)),
        };
        self.claim(id, username, ip)
    }

    /// Takes ownership of a player whose identity is already established (password or transfer token).
    pub fn claim(&self, player_id: u64, username: &str, ip: IpAddr) -> Result<LoginGrant, Refusal> {
        let lock_token = format!("{}:{player_id}:{}", self.instance, super::password::hex(&new_token().0[..8]));
        match self.locks.acquire(player_id, &lock_token, self.policy.lock_ttl) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Refusal::new(
                    LoginErrorReason::LoginErrorAlreadyOnline,
                    "this character is online in another zone or session",
                ))
            }
            Err(e) => return Err(Refusal::busy(&e)),
        }
        let claim = match self.players.claim(player_id, &self.policy.zone) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.locks.release(player_id, &lock_token);
                return Err(Refusal::busy(&e));
            }
        };
        let (token, token_hash) = new_token();
        if let Err(e) = self.accounts.insert_session(
            player_id,
            token_hash,
            SystemTime::now() + self.policy.session_ttl,
            &ip.to_string(),
        ) {
            log::warn!("could not record the session of player {player_id}: {e}");
        }
        Ok(LoginGrant {
            player_id,
            username: username.to_owned(),
            epoch: claim.epoch,
            progress: claim.progress,
            lock_token,
            session_token: token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::memory::{LocalLocks, MemoryAccounts, MemoryPlayers};

    fn service(accounts: Arc<MemoryAccounts>) -> LoginService {
        let policy = LoginPolicy {
            account_failures: 3,
            ip_failures: 5,
            lockout: Duration::from_secs(60),
            lock_ttl: Duration::from_secs(10),
            zone: "z".into(),
            session_ttl: Duration::from_secs(60),
        };
        let hasher = PasswordHasher::with_params(2, 256, 1, 1).unwrap();
        LoginService::new(accounts, Arc::new(MemoryPlayers::default()), Arc::new(LocalLocks::default()), hasher, policy)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn unknown_user_and_wrong_password_get_the_same_refusal() {
        let s = service(Arc::default());
        s.register("alice", "password1", ip(1)).unwrap();
        let wrong = s.login("alice", "nope-nope", ip(2)).unwrap_err();
        let unknown = s.login("bob", "password1", ip(3)).unwrap_err();
        assert_eq!(wrong, unknown);
        assert_eq!(wrong.reason, LoginErrorReason::LoginErrorInvalidCredentials);
    }

    #[test]
    fn register_validates_and_refuses_taken_names() {
        let s = service(Arc::default());
        assert_eq!(
            s.register("a", "password1", ip(1)).unwrap_err().reason,
            LoginErrorReason::LoginErrorInvalidUsername
        );
        assert_eq!(
            s.register("al ice", "password1", ip(1)).unwrap_err().reason,
            LoginErrorReason::LoginErrorInvalidUsername
        );
        assert_eq!(s.register("alice", "short", ip(1)).unwrap_err().reason, LoginErrorReason::LoginErrorWeakPassword);
        let grant = s.register("alice", "password1", ip(1)).unwrap();
        assert_eq!(grant.epoch, 1);
        assert_eq!(
            s.register("ALICE", "password2", ip(1)).unwrap_err().reason,
            LoginErrorReason::LoginErrorUsernameTaken
        );
    }

    #[test]
    fn a_player_online_cannot_log_in_twice() {
        let s = service(Arc::default());
        s.register("alice", "password1", ip(1)).unwrap();
        assert_eq!(s.login("alice", "password1", ip(1)).unwrap_err().reason, LoginErrorReason::LoginErrorAlreadyOnline);
    }

    #[test]
    fn repeated_failures_lock_the_account_then_the_address() {
        let accounts = Arc::new(MemoryAccounts::default());
        let s = service(Arc::clone(&accounts));
        let g = s.register("alice", "password1", ip(1)).unwrap();
        s.locks.release(g.player_id, &g.lock_token).unwrap();
        for n in 0..3 {
            s.login("alice", "wrong-pass", ip(10 + n)).unwrap_err();
        }
        let locked = s.login("alice", "password1", ip(20)).unwrap_err();
        assert_eq!(locked.reason, LoginErrorReason::LoginErrorLockedOut);
        assert!(locked.retry_after > Duration::ZERO);
        for _ in 0..5 {
            s.login("mallory", "whatever1", ip(30)).unwrap_err();
        }
        assert_eq!(s.login("mallory", "whatever1", ip(30)).unwrap_err().reason, LoginErrorReason::LoginErrorLockedOut);
        assert_eq!(
            s.login("mallory", "whatever1", ip(31)).unwrap_err().reason,
            LoginErrorReason::LoginErrorInvalidCredentials
        );
    }

    #[test]
    fn banned_accounts_are_refused() {
        let accounts = Arc::new(MemoryAccounts::default());
        let s = service(Arc::clone(&accounts));
        let g = s.register("alice", "password1", ip(1)).unwrap();
        s.locks.release(g.player_id, &g.lock_token).unwrap();
        accounts.ban(g.player_id, None);
        assert_eq!(s.login("alice", "password1", ip(1)).unwrap_err().reason, LoginErrorReason::LoginErrorBanned);
    }
}
