//! The login path, run on a worker: credentials, lockouts, bans, then the claim of the player (ownership lock,
//! then fencing epoch). Refusals carry the reason sent to the client; an unknown user and a wrong password are
//! indistinguishable (same reason, same argon2 work).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::password::{new_token, HashError, PasswordHasher};
use super::{AccountRecord, AccountStore, OwnershipLocks, PlayerStore, Progress, StoreError};
use crate::limits::PerAddressWindow;
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
    /// An account lockout does not apply to (and does not count failures from) an address the account logged in
    /// from successfully within this: its owner's way out of a lockout strangers triggered.
    pub trusted_address_for: Duration,
    /// Registrations per source address per `register_window`.
    pub register_max: u32,
    /// The registration window.
    pub register_window: Duration,
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
        let s = &c.security;
        Self {
            account_failures: s.lockout_failures,
            ip_failures: s.ip_lockout_failures,
            lockout: Duration::from_secs(s.lockout_secs),
            trusted_address_for: Duration::from_secs(u64::from(s.lockout_trusted_days) * 86_400),
            register_max: s.register_rate_max,
            register_window: Duration::from_secs(s.register_rate_window_secs),
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

    /// The hashing share was in use: retry soon (a refusal costs the server next to nothing, and a burst of
    /// real registrations gets through in a few retries).
    fn hashing_busy() -> Self {
        Self {
            reason: LoginErrorReason::LoginErrorServerBusy,
            message: "try again shortly".into(),
            retry_after: Duration::from_millis(500),
        }
    }

    fn hash_failed(e: HashError) -> Self {
        match e {
            HashError::Busy => Self::hashing_busy(),
            e => {
                log::error!("{e}");
                Self::new(LoginErrorReason::LoginErrorServerBusy, "try again shortly")
            }
        }
    }

    fn locked(left: Duration, message: &str) -> Self {
        Self { retry_after: left, ..Self::new(LoginErrorReason::LoginErrorLockedOut, message) }
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
    ip_failures: PerAddressWindow,
    registrations: PerAddressWindow,
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
        Self {
            accounts,
            players,
            locks,
            hasher,
            instance,
            ip_failures: PerAddressWindow::new(policy.lockout),
            registrations: PerAddressWindow::new(policy.register_window),
            policy,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &LoginPolicy {
        &self.policy
    }

    /// Whether `ip` is one the account's owner logged in from lately (a backend error counts as no).
    fn trusted(&self, account: &AccountRecord, ip: IpAddr) -> bool {
        self.accounts.logged_in_from(account.id, &ip.to_string(), self.policy.trusted_address_for).unwrap_or(false)
    }

    /// Logs in with a password.
    ///
    /// Two lockouts are in force. Per address: `security.ip_lockout_failures` failed logins from one address within
    /// `security.lockout_secs` lock that address out of every account. Per account: `security.lockout_failures`
    /// failures lock the account for `security.lockout_secs`, except from addresses it logged in from lately
    /// (failures from those do not count either). A locked account answers `LOCKED_OUT` whatever the password and
    /// spends no hash on it, so the lockout is no oracle.
    pub fn login(&self, username: &str, password: &str, ip: IpAddr) -> Result<LoginGrant, Refusal> {
        let (id, name) = self.authenticate(username, password, ip)?;
        self.claim(id, &name, ip)
    }

    /// Checks a password under every rule [`LoginService::login`] applies (lockouts, bans), without claiming the
    /// player: the browser login (`POST /api/login`) answers a signed token, and the player is claimed when that
    /// token opens the game socket. Returns the player id and the username as registered.
    pub fn authenticate(&self, username: &str, password: &str, ip: IpAddr) -> Result<(u64, String), Refusal> {
        let now = Instant::now();
        let (failures, left) = self.ip_failures.current(ip, now);
        if failures >= self.policy.ip_failures {
            return Err(Refusal::locked(left, "too many failed logins from this address"));
        }
        let account =
            if valid_username(username) { self.accounts.find(username).map_err(|e| Refusal::busy(&e))? } else { None };
        let wall = SystemTime::now();
        let mut trusted = None;
        if let Some(a) = &account {
            if let Some(until) = a.locked_until.filter(|u| *u > wall) {
                if !*trusted.get_or_insert_with(|| self.trusted(a, ip)) {
                    let left = until.duration_since(wall).unwrap_or_default();
                    return Err(Refusal::locked(left, "account temporarily locked"));
                }
            }
        }
        let ok = self
            .hasher
            .verify(password, account.as_ref().map(|a| a.password_hash.as_str()))
            .map_err(Refusal::hash_failed)?;
        let account = match account {
            Some(a) if ok => a,
            other => {
                self.ip_failures.add(ip, now);
                if let Some(a) = other {
                    if !*trusted.get_or_insert_with(|| self.trusted(&a, ip)) {
                        let _ = self.accounts.record_failure(a.id, self.policy.account_failures, self.policy.lockout);
                    }
                }
                return Err(Refusal::invalid());
            }
        };
        if account.is_banned(wall) {
            return Err(Refusal::new(LoginErrorReason::LoginErrorBanned, "this account is banned"));
        }
        self.accounts.record_success(account.id).map_err(|e| Refusal::busy(&e))?;
        Ok((account.id, account.username))
    }

    /// Creates an account and logs in with it. At most `security.register_rate_max` registrations per address per
    /// `security.register_rate_window_secs` (refused with `RATE_LIMITED` before any hash).
    pub fn register(&self, username: &str, password: &str, ip: IpAddr) -> Result<LoginGrant, Refusal> {
        let id = self.create_account(username, password, ip)?;
        self.claim(id, username, ip)
    }

    /// Creates an account under the rules of [`LoginService::register`], without claiming the player (the browser
    /// registration answers a signed token). Returns the new player id.
    pub fn create_account(&self, username: &str, password: &str, ip: IpAddr) -> Result<u64, Refusal> {
        if !valid_username(username) {
            return Err(Refusal::new(
                LoginErrorReason::LoginErrorInvalidUsername,
                "3 to 32 characters: letters, digits, _ and -",
            ));
        }
        if !(8..=128).contains(&password.len()) {
            return Err(Refusal::new(LoginErrorReason::LoginErrorWeakPassword, "passwords are 8 to 128 bytes"));
        }
        // A taken name costs neither a hash nor a registration from the address's allowance (clients fall back
        // to Login on it). The create below still catches a race with another registration of the same name.
        if self.accounts.find(username).map_err(|e| Refusal::busy(&e))?.is_some() {
            return Err(Refusal::new(LoginErrorReason::LoginErrorUsernameTaken, "that name is taken"));
        }
        let now = Instant::now();
        let (count, left) = self.registrations.current(ip, now);
        if count >= self.policy.register_max {
            return Err(Refusal {
                retry_after: left,
                ..Refusal::new(LoginErrorReason::LoginErrorRateLimited, "too many registrations from this address")
            });
        }
        // Counted once hashed: a "busy, retry" is not a registration (a client retrying it would use up its
        // allowance while nothing was created).
        let hash = self.hasher.hash(password).map_err(Refusal::hash_failed)?;
        self.registrations.add(ip, now);
        let id = match self.accounts.create(username, &hash) {
            Ok(id) => id,
            Err(StoreError::UsernameTaken) => {
                return Err(Refusal::new(LoginErrorReason::LoginErrorUsernameTaken, "that name is taken"))
            }
            Err(e) => return Err(Refusal::busy(&e)),
        };
        Ok(id)
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
            trusted_address_for: Duration::from_secs(86_400),
            register_max: 5,
            register_window: Duration::from_secs(60),
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
    fn a_locked_account_answers_the_same_whatever_the_password_and_spends_no_hash() {
        let s = service(Arc::default());
        let g = s.register("alice", "password1", ip(1)).unwrap();
        s.locks.release(g.player_id, &g.lock_token).unwrap();
        for n in 0..3 {
            assert_eq!(s.login("alice", "wrong-pass", ip(10 + n)).unwrap_err().reason, Refusal::invalid().reason);
        }
        let hashes = s.hasher.hashes_computed();
        let right = s.login("alice", "password1", ip(20)).unwrap_err();
        let wrong = s.login("alice", "wrong-pass", ip(21)).unwrap_err();
        assert_eq!(right.reason, LoginErrorReason::LoginErrorLockedOut);
        assert_eq!((right.reason, &right.message), (wrong.reason, &wrong.message), "no password oracle");
        assert_eq!(s.hasher.hashes_computed(), hashes, "a locked account costs no hash");
    }

    #[test]
    fn the_owner_logs_in_from_a_known_address_through_a_lockout_strangers_triggered() {
        let s = service(Arc::default());
        let g = s.register("alice", "password1", ip(1)).unwrap();
        s.locks.release(g.player_id, &g.lock_token).unwrap();
        for n in 0..3 {
            s.login("alice", "wrong-pass", ip(10 + n)).unwrap_err();
        }
        assert_eq!(s.login("alice", "password1", ip(20)).unwrap_err().reason, LoginErrorReason::LoginErrorLockedOut);
        // A typo from home does not extend the lockout, and the right password gets in.
        assert_eq!(
            s.login("alice", "typo-typo", ip(1)).unwrap_err().reason,
            LoginErrorReason::LoginErrorInvalidCredentials
        );
        let back = s.login("alice", "password1", ip(1)).expect("the owner's address is exempt");
        assert_eq!(back.player_id, g.player_id);
    }

    #[test]
    fn registrations_per_address_are_limited_before_any_hash() {
        let s = service(Arc::default());
        for n in 0..5 {
            s.register(&format!("user{n}"), "password1", ip(1)).unwrap();
        }
        let hashes = s.hasher.hashes_computed();
        let refused = s.register("user9", "password1", ip(1)).unwrap_err();
        assert_eq!(refused.reason, LoginErrorReason::LoginErrorRateLimited);
        assert!(refused.retry_after > Duration::ZERO);
        assert_eq!(s.hasher.hashes_computed(), hashes);
        let taken = s.register("user0", "password1", ip(1)).unwrap_err();
        assert_eq!(taken.reason, LoginErrorReason::LoginErrorUsernameTaken, "a taken name is not rate limited");
        assert_eq!(s.hasher.hashes_computed(), hashes, "a taken name costs no hash");
        s.register("user9", "password1", ip(2)).expect("other addresses are not affected");
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
