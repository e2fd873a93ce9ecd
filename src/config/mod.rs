//! Configuration: one typed [`Config`], built once at start, validated, then shared as `Arc<Config>`.
//!
//! Sources, later wins: built-in defaults (documented in `config/realm.toml`), the TOML file, then environment
//! variables. Every key `section.key` can be overridden by `REALM_SECTION_KEY` (e.g. `REALM_GAME_TICK_RATE=30`);
//! the names operators already use (`SERVER_PORT`, `DB_HOST`, `GAME_TICK_RATE`, `LOG_FORMAT`, ...) are aliases, see
//! [`LEGACY_ENV`]. An override is parsed with the type of the key it replaces, so a bad value is reported with the
//! variable, the key and the value. The invariant a reader must not break: nothing reads the environment or the
//! file after [`Config::load`]; everything downstream takes `&Config`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Value;

/// Environment names from the operations guide, mapped to config keys. They apply before `REALM_*` names, so a
/// `REALM_*` variable wins when both are set.
pub const LEGACY_ENV: &[(&str, &str)] = &[
    ("SERVER_HOST", "server.host"),
    ("SERVER_PORT", "server.port"),
    ("SERVER_WS_PORT", "server.ws_port"),
    ("SERVER_ENV", "server.environment"),
    ("SERVER_ZONE", "server.zone"),
    ("ADMIN_PORT", "admin.port"),
    ("METRICS_PORT", "admin.port"),
    ("DB_HOST", "database.host"),
    ("DB_PORT", "database.port"),
    ("DB_NAME", "database.name"),
    ("DB_USER", "database.user"),
    ("DB_PASSWORD", "database.password"),
    ("DB_SSL", "database.ssl"),
    ("DATABASE_URL", "database.url"),
    ("DB_POOL_SIZE", "database.pool_size"),
    ("REDIS_URL", "redis.url"),
    ("GAME_TICK_RATE", "game.tick_rate"),
    ("GAME_MAX_PLAYERS", "game.max_players"),
    ("JWT_SECRET", "security.token_secret"),
    ("RATE_LIMIT_WINDOW", "net.connect_rate_window_secs"),
    ("RATE_LIMIT_MAX", "net.connect_rate_max"),
    ("LOG_LEVEL", "log.level"),
    ("LOG_FORMAT", "log.format"),
    ("TLS_CERT", "tls.cert_path"),
    ("TLS_KEY", "tls.key_path"),
];

/// The secret shipped in examples; running with it is allowed but loudly warned about.
pub const EXAMPLE_SECRET: &str = "your_very_secure_random_string_here";

/// Why the configuration cannot be used. Every variant names the key (or variable) and the bad value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys/types we do not know.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key).
        message: String,
    },
    /// An environment variable could not be parsed as the type of its key.
    #[error("environment variable {var} (config key {key}): expected {expected}, got {value:?}")]
    Env {
        /// Variable name.
        var: String,
        /// Config key it overrides.
        key: String,
        /// Expected type.
        expected: &'static str,
        /// The offending value.
        value: String,
    },
    /// A value that parses but is out of range or inconsistent.
    #[error("config key {key} = {value}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The offending value, rendered.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
}

/// Deployment environment: changes only defaults of warnings (production refuses insecure settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Local development: insecure defaults are warned about.
    Development,
    /// Staging: as production, but insecure settings only warn.
    Staging,
    /// Production: insecure settings (dev certificate, example secret) are errors.
    Production,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration. See `config/realm.toml` for every key, its default and its meaning.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Process identity and listeners.
    pub server: ServerConfig,
    /// Admin HTTP listener.
    pub admin: AdminConfig,
    /// Control/data channel limits.
    pub net: NetConfig,
    /// TLS certificate.
    pub tls: TlsConfig,
    /// Simulation.
    pub game: GameConfig,
    /// Chat limits.
    pub chat: ChatConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// Worker pool.
    pub workers: WorkerConfig,
    /// Accounts and tokens.
    pub security: SecurityConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Name of the zone this process hosts.
    pub zone: String,
    /// Address the game listeners bind to.
    pub host: IpAddr,
    /// Game port, TCP (TLS) and UDP. 0 picks a free port (tests).
    pub port: u16,
    /// Deployment environment.
    pub environment: Environment,
    /// Number of io threads; 0 = one per core, at most 4.
    pub io_threads: usize,
    /// CPU cores to pin io threads to, in order; empty = automatic.
    pub io_cores: Vec<usize>,
    /// CPU core for the simulation thread; -1 = automatic.
    pub sim_core: i64,
    /// Scheduling priority (nice value, -20..=19) of the simulation thread; 0 = unchanged. Below 0 the tick
    /// wins the CPU over everything else on a shared host; it needs CAP_SYS_NICE (without it the server warns
    /// and keeps running at the default priority).
    pub sim_nice: i32,
    /// Real-time priority (SCHED_FIFO, 1..=99) of the simulation thread; 0 = off (the normal scheduler). The
    /// tick then runs to completion ahead of every normal thread on its core (io threads, other processes), which
    /// `sim_nice` only makes likely: measured under the 2,000-bot load, it took the tick's p99.9 from 23-31 ms to
    /// under 10 ms (BENCHMARKS.md). The simulation sleeps between ticks and never spins, and Linux keeps 5% of
    /// each second for normal threads (`kernel.sched_rt_runtime_us`). Needs CAP_SYS_NICE; without it the server
    /// warns and keeps the normal scheduler.
    pub sim_realtime_priority: i32,
    /// Nice value (-20..=19) of the io threads; 0 = unchanged. Below 0 they win their core over other processes
    /// (on a shared host, or beside a load generator), so a tick's snapshots leave sooner; a real-time simulation
    /// thread still runs ahead of them. Needs CAP_SYS_NICE below 0 (without it the server warns).
    pub io_nice: i32,
    /// Grace period for a graceful shutdown, in seconds.
    pub shutdown_grace_secs: u64,
    /// Browser endpoint (HTTP API, the web client, `GET /ws`) on the same io threads and host; 0 picks a free
    /// port. `SERVER_WS_PORT`.
    pub ws_port: u16,
    /// Whether the browser endpoint is served at all.
    pub web_enabled: bool,
    /// TLS on the browser endpoint, with the game certificate (required in production, unless a proxy in front
    /// terminates TLS: then set `web_behind_proxy`).
    pub ws_tls: bool,
    /// A TLS-terminating proxy serves the browser endpoint (production may then run it without TLS).
    pub web_behind_proxy: bool,
    /// Origins allowed to call the API and open `/ws` besides the page's own (`https://play.example.com`).
    pub web_allowed_origins: Vec<String>,
    /// Largest WebSocket message accepted from a browser, bytes.
    pub ws_max_message_bytes: usize,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener (/metrics, /health, /ready). Loopback by default; probes and scrapes
    /// from outside the process's network namespace need `0.0.0.0` (`REALM_ADMIN_HOST`).
    pub host: IpAddr,
    /// Admin port. 0 picks a free port.
    pub port: u16,
    /// /health reports the server frozen when the tick has not advanced for this long.
    pub freeze_after_ms: u64,
}

/// `[net]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Largest control frame accepted, in bytes (length prefix excluded).
    pub max_frame_bytes: usize,
    /// A connection that has not finished TLS + Hello by then is closed (slowloris).
    pub handshake_timeout_ms: u64,
    /// A connection silent for this long is closed.
    pub idle_timeout_ms: u64,
    /// Most simultaneous TCP connections per process.
    pub max_connections: usize,
    /// Most new connections per source IP per window.
    pub connect_rate_max: u32,
    /// Length of the per-IP rate window, in seconds.
    pub connect_rate_window_secs: u64,
    /// Cap of a connection's pending outbound bytes; past it the client is disconnected as a slow consumer.
    pub write_buffer_cap_bytes: usize,
    /// Inbound messages a session may send per tick before the excess is dropped.
    pub inbound_credits_per_tick: u32,
    /// Consecutive flooding ticks before the session is kicked.
    pub flood_kick_ticks: u32,
    /// A connection not logged in this long after it was accepted is closed (time the server spends answering a
    /// login does not count).
    pub login_timeout_ms: u64,
    /// Register/Login/TransferLogin requests allowed on one connection; the next one closes it.
    pub max_login_attempts: u32,
    /// A closing connection whose peer does not take its last bytes is dropped after this.
    pub close_linger_ms: u64,
    /// Most open connections from one source address (0 = no cap).
    pub max_connections_per_ip: usize,
    /// Most connections from one source address that have not logged in yet (0 = no cap).
    pub max_unauthenticated_per_ip: usize,
    /// A UDP binding challenge must come back within this.
    pub udp_challenge_timeout_ms: u64,
    /// The server stops sending to a bound UDP address it has not heard from for this long.
    pub udp_silence_timeout_ms: u64,
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; empty = generate a self-signed development certificate at start.
    pub cert_path: String,
    /// PEM private key.
    pub key_path: String,
}

/// `[game]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GameConfig {
    /// Simulation ticks per second, 1..=60.
    pub tick_rate: u32,
    /// Most players online in this zone.
    pub max_players: usize,
    /// Zone data file (spawns, NPCs, portals); empty = the built-in default zone.
    pub zone_file: String,
    /// Seed of the simulation's random numbers (determinism).
    pub seed: u64,
    /// Seconds between periodic saves of dirty players.
    pub save_interval_secs: u64,
    /// A player whose connection drops without Logout stays in the world this long, resumable with its session
    /// token (0 = no resumption: the player is saved and released at once).
    pub resume_grace_secs: u64,
    /// Most entities in one protocol-v2 (delta) snapshot, 20..=127: more shows more of a crowd for the same
    /// bandwidth (unchanged entities cost nothing), and costs the simulation thread time per entity per player.
    pub view_entities: usize,
    /// How often a protocol-v2 view's set of entities is chosen anew, in ms (50..=2000; kept in between, at once
    /// after a jump): an entity coming into range enters a view within this long. Lower is fresher and costs the
    /// simulation thread one area-of-interest query per player per period.
    pub view_refresh_ms: u32,
}

/// `[chat]`: chat limits (see `sim::chat`). A line over a limit is not delivered; its sender gets `ChatRefused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Zone-channel lines one player may send at once ...
    pub zone_burst: u32,
    /// ... then one more every this many milliseconds.
    pub zone_refill_ms: u32,
    /// Say-channel lines one player may send at once ...
    pub say_burst: u32,
    /// ... then one more every this many milliseconds.
    pub say_refill_ms: u32,
    /// Chat deliveries (lines x recipients, every channel) the zone makes per second, one second's worth at once;
    /// past it lines are refused until the budget refills. 0 = no cap.
    pub deliveries_per_sec: u32,
}

/// `[database]`. With neither `url` nor `host` set, the server runs on the embedded in-memory store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Full primary connection string (`postgres://user:pass@host:port/db`); overrides host/port/name/user.
    pub url: String,
    /// Primary host; empty = embedded store.
    pub host: String,
    /// Primary port.
    pub port: u16,
    /// Database name.
    pub name: String,
    /// User.
    pub user: String,
    /// Password (never logged).
    pub password: String,
    /// Require TLS to the database.
    pub ssl: bool,
    /// Read replica connection strings.
    pub replica_urls: Vec<String>,
    /// Shard connection strings (player data is spread over them; empty = the primary holds everything).
    pub shard_urls: Vec<String>,
    /// Connections per pool.
    pub pool_size: u32,
    /// Idle connections kept per pool.
    pub min_idle: u32,
    /// Wait for a pooled connection at most this long.
    pub connection_timeout_ms: u64,
    /// A replica lagging more than this is skipped for reads.
    pub max_replica_lag_ms: u64,
    /// Apply migrations at start.
    pub migrate_on_start: bool,
}

/// `[redis]`. Empty `url` = the embedded local lock table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Key prefix (several deployments may share a Redis).
    pub key_prefix: String,
    /// Player lock time-to-live, renewed while the player is online.
    pub lock_ttl_ms: u64,
}

/// `[workers]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Blocking worker threads.
    pub threads: usize,
    /// Most queued jobs; a full queue is an error the caller sees.
    pub queue_depth: usize,
}

/// `[security]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Signs the browser login tokens (JWT HS256; `JWT_SECRET`). Empty in development: a random per-process secret
    /// is used, with a warning (tokens then work only on this process, until it restarts). Production refuses an
    /// empty, short (< 32 bytes) or example secret. Never logged.
    pub token_secret: String,
    /// How long a browser login token is valid (it is single-use), seconds.
    pub token_ttl_secs: u64,
    /// Concurrent argon2 hashes (each takes 19 MiB).
    pub max_concurrent_hashes: usize,
    /// Failed logins per account before a lockout.
    pub lockout_failures: u32,
    /// Lockout length in seconds.
    pub lockout_secs: u64,
    /// Failed logins from one source address within `lockout_secs` before that address is locked out.
    pub ip_lockout_failures: u32,
    /// An account lockout does not apply to addresses the account logged in from within this many days.
    pub lockout_trusted_days: u32,
    /// Registrations per source address per `register_rate_window_secs`.
    pub register_rate_max: u32,
    /// The registration window, in seconds.
    pub register_rate_window_secs: u64,
    /// Longest wait of a hash for a registration or an unknown name for its share of the hashing slots, in
    /// milliseconds (0 = none: SERVER_BUSY at once; a login worker that waits cannot pick up the next login).
    pub anonymous_hash_wait_ms: u64,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Default level when `RUST_LOG` is unset (error, warn, info, debug, trace).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            zone: "starter-vale".into(),
            host: IpAddr::from([0, 0, 0, 0]),
            port: 7777,
            ws_port: 8080,
            web_enabled: true,
            ws_tls: false,
            web_behind_proxy: false,
            web_allowed_origins: Vec::new(),
            ws_max_message_bytes: 4096,
            environment: Environment::Development,
            io_threads: 0,
            io_cores: Vec::new(),
            sim_core: -1,
            sim_nice: 0,
            sim_realtime_priority: 0,
            io_nice: 0,
            shutdown_grace_secs: 20,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { host: IpAddr::from([127, 0, 0, 1]), port: 9100, freeze_after_ms: 2_000 }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4096,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            max_connections: 4096,
            connect_rate_max: 100,
            connect_rate_window_secs: 60,
            write_buffer_cap_bytes: 256 * 1024,
            inbound_credits_per_tick: 8,
            flood_kick_ticks: 40,
            login_timeout_ms: 15_000,
            max_login_attempts: 3,
            close_linger_ms: 2_000,
            max_connections_per_ip: 256,
            max_unauthenticated_per_ip: 32,
            udp_challenge_timeout_ms: 5_000,
            udp_silence_timeout_ms: 10_000,
        }
    }
}

impl Default for GameConfig {
    fn default() -> Self {
        Self {
            tick_rate: 20,
            max_players: 2000,
            zone_file: String::new(),
            seed: 0x5EED,
            save_interval_secs: 30,
            resume_grace_secs: 30,
            view_entities: crate::proto::delta::MAX_VIEW,
            view_refresh_ms: crate::sim::game::VIEW_REFRESH_MS,
        }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self { zone_burst: 5, zone_refill_ms: 1_000, say_burst: 8, say_refill_ms: 500, deliveries_per_sec: 2_000 }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            host: String::new(),
            port: 5432,
            name: "realm".into(),
            user: "realm".into(),
            password: String::new(),
            ssl: false,
            replica_urls: Vec::new(),
            shard_urls: Vec::new(),
            pool_size: 16,
            min_idle: 2,
            connection_timeout_ms: 2_000,
            max_replica_lag_ms: 1_000,
            migrate_on_start: true,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: String::new(), key_prefix: "realm".into(), lock_ttl_ms: 10_000 }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { threads: 4, queue_depth: 4096 }
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            token_secret: String::new(),
            token_ttl_secs: 60,
            max_concurrent_hashes: 2,
            lockout_failures: 5,
            lockout_secs: 300,
            ip_lockout_failures: 20,
            lockout_trusted_days: 30,
            register_rate_max: 20,
            register_rate_window_secs: 3600,
            anonymous_hash_wait_ms: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

/// A setting that is allowed but unsafe for production; logged as a warning at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub String);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// Defaults, then the file (if any), then the process environment; validated.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with an explicit environment (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree = to_tree(&Config::default());
        if let Some(path) = path {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            let file: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.message().to_owned() })?;
            merge(&mut tree, file);
        }
        apply_env(&mut tree, env)?;
        let config: Config = Value::Table(tree).try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.map(Path::to_owned).unwrap_or_else(|| "<environment>".into()),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Range and consistency checks; each error names the key and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(
            ok: bool,
            key: &'static str,
            value: impl fmt::Display,
            reason: &'static str,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid { key, value: value.to_string(), reason })
            }
        }
        let g = &self.game;
        check((1..=60).contains(&g.tick_rate), "game.tick_rate", g.tick_rate, "must be 1..=60")?;
        check(g.max_players >= 1, "game.max_players", g.max_players, "must be at least 1")?;
        check(g.save_interval_secs >= 1, "game.save_interval_secs", g.save_interval_secs, "must be at least 1")?;
        check(g.resume_grace_secs <= 600, "game.resume_grace_secs", g.resume_grace_secs, "must be 0..=600")?;
        check(
            (20..=crate::proto::delta::MAX_VIEW_LIMIT).contains(&g.view_entities),
            "game.view_entities",
            g.view_entities,
            "must be 20..=127",
        )?;
        check(
            (50..=2000).contains(&g.view_refresh_ms),
            "game.view_refresh_ms",
            g.view_refresh_ms,
            "must be 50..=2000",
        )?;
        let chat = &self.chat;
        check((1..=1000).contains(&chat.zone_burst), "chat.zone_burst", chat.zone_burst, "must be 1..=1000")?;
        check(
            (1..=3_600_000).contains(&chat.zone_refill_ms),
            "chat.zone_refill_ms",
            chat.zone_refill_ms,
            "must be 1..=3600000",
        )?;
        check((1..=1000).contains(&chat.say_burst), "chat.say_burst", chat.say_burst, "must be 1..=1000")?;
        check(
            (1..=3_600_000).contains(&chat.say_refill_ms),
            "chat.say_refill_ms",
            chat.say_refill_ms,
            "must be 1..=3600000",
        )?;
        let n = &self.net;
        check(
            (crate::net::framing::MIN_MAX_FRAME..=crate::net::framing::MAX_MAX_FRAME).contains(&n.max_frame_bytes),
            "net.max_frame_bytes",
            n.max_frame_bytes,
            "must be 64..=1048576",
        )?;
        check(n.handshake_timeout_ms >= 100, "net.handshake_timeout_ms", n.handshake_timeout_ms, "must be >= 100")?;
        check(
            n.idle_timeout_ms >= n.handshake_timeout_ms,
            "net.idle_timeout_ms",
            n.idle_timeout_ms,
            "must be >= net.handshake_timeout_ms",
        )?;
        check(n.max_connections >= 1, "net.max_connections", n.max_connections, "must be at least 1")?;
        check(
            n.login_timeout_ms >= n.handshake_timeout_ms,
            "net.login_timeout_ms",
            n.login_timeout_ms,
            "must be >= net.handshake_timeout_ms",
        )?;
        check(n.max_login_attempts >= 1, "net.max_login_attempts", n.max_login_attempts, "must be at least 1")?;
        check(
            (10..=60_000).contains(&n.close_linger_ms),
            "net.close_linger_ms",
            n.close_linger_ms,
            "must be 10..=60000",
        )?;
        check(
            n.udp_challenge_timeout_ms >= 100,
            "net.udp_challenge_timeout_ms",
            n.udp_challenge_timeout_ms,
            "must be >= 100",
        )?;
        check(
            n.udp_silence_timeout_ms >= 1_000,
            "net.udp_silence_timeout_ms",
            n.udp_silence_timeout_ms,
            "must be >= 1000 (the server pings every 2 s)",
        )?;
        check(
            n.connect_rate_window_secs >= 1,
            "net.connect_rate_window_secs",
            n.connect_rate_window_secs,
            "must be >= 1",
        )?;
        check(
            n.write_buffer_cap_bytes >= 2 * n.max_frame_bytes,
            "net.write_buffer_cap_bytes",
            n.write_buffer_cap_bytes,
            "must be at least twice net.max_frame_bytes",
        )?;
        check(
            n.inbound_credits_per_tick >= 1,
            "net.inbound_credits_per_tick",
            n.inbound_credits_per_tick,
            "must be >= 1",
        )?;
        check(
            self.admin.freeze_after_ms >= 100,
            "admin.freeze_after_ms",
            self.admin.freeze_after_ms,
            "must be >= 100",
        )?;
        check(self.server.io_threads <= 64, "server.io_threads", self.server.io_threads, "must be 0..=64")?;
        check((-20..=19).contains(&self.server.sim_nice), "server.sim_nice", self.server.sim_nice, "must be -20..=19")?;
        check((-20..=19).contains(&self.server.io_nice), "server.io_nice", self.server.io_nice, "must be -20..=19")?;
        check(
            (0..=99).contains(&self.server.sim_realtime_priority),
            "server.sim_realtime_priority",
            self.server.sim_realtime_priority,
            "must be 0..=99 (0 = off)",
        )?;
        check(!self.server.zone.is_empty(), "server.zone", "\"\"", "must not be empty")?;
        check(
            self.server.shutdown_grace_secs >= 1 && self.server.shutdown_grace_secs <= 300,
            "server.shutdown_grace_secs",
            self.server.shutdown_grace_secs,
            "must be 1..=300",
        )?;
        check(
            self.tls.cert_path.is_empty() == self.tls.key_path.is_empty(),
            "tls.key_path",
            format!("{:?}", self.tls.key_path),
            "tls.cert_path and tls.key_path must be set together",
        )?;
        check(self.workers.threads >= 1, "workers.threads", self.workers.threads, "must be at least 1")?;
        check(self.workers.queue_depth >= 1, "workers.queue_depth", self.workers.queue_depth, "must be at least 1")?;
        check(self.database.pool_size >= 1, "database.pool_size", self.database.pool_size, "must be at least 1")?;
        check(
            self.database.min_idle <= self.database.pool_size,
            "database.min_idle",
            self.database.min_idle,
            "must be <= database.pool_size",
        )?;
        check(
            self.database.url.is_empty() || self.database.url.starts_with("postgres"),
            "database.url",
            "<redacted>",
            "must be a postgres:// or postgresql:// URL",
        )?;
        check(
            self.redis.url.is_empty() || self.redis.url.starts_with("redis"),
            "redis.url",
            format!("{:?}", self.redis.url),
            "must be a redis:// URL",
        )?;
        check(self.redis.lock_ttl_ms >= 1000, "redis.lock_ttl_ms", self.redis.lock_ttl_ms, "must be >= 1000")?;
        check(
            self.security.max_concurrent_hashes >= 1,
            "security.max_concurrent_hashes",
            self.security.max_concurrent_hashes,
            "must be at least 1",
        )?;
        let sec = &self.security;
        check(sec.lockout_failures >= 1, "security.lockout_failures", sec.lockout_failures, "must be at least 1")?;
        check(
            sec.ip_lockout_failures >= 1,
            "security.ip_lockout_failures",
            sec.ip_lockout_failures,
            "must be at least 1",
        )?;
        check(sec.register_rate_max >= 1, "security.register_rate_max", sec.register_rate_max, "must be at least 1")?;
        check(
            sec.register_rate_window_secs >= 1,
            "security.register_rate_window_secs",
            sec.register_rate_window_secs,
            "must be >= 1",
        )?;
        check(
            ["error", "warn", "info", "debug", "trace", "off"].contains(&self.log.level.to_ascii_lowercase().as_str()),
            "log.level",
            format!("{:?}", self.log.level),
            "must be one of error, warn, info, debug, trace, off",
        )?;
        if self.server.environment == Environment::Production {
            check(
                !self.tls.cert_path.is_empty(),
                "tls.cert_path",
                "\"\"",
                "production needs a real certificate (the development certificate is refused)",
            )?;
            check(
                self.security.token_secret != EXAMPLE_SECRET,
                "security.token_secret",
                "<redacted>",
                "production must not use the documentation's example secret",
            )?;
            check(
                !self.server.web_enabled || self.security.token_secret.len() >= crate::account::token::MIN_SECRET_BYTES,
                "security.token_secret",
                "<redacted>",
                "production needs a secret of at least 32 bytes to sign browser logins (JWT_SECRET; openssl rand -hex 32)",
            )?;
            check(
                !self.server.web_enabled || self.server.ws_tls || self.server.web_behind_proxy,
                "server.ws_tls",
                "false",
                "production serves browsers over TLS (ws_tls) or behind a TLS-terminating proxy (web_behind_proxy)",
            )?;
        }
        Ok(())
    }

    /// Settings that work but are unsafe outside development.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        if std::env::var_os("GAME_WORLD_SIZE").is_some() {
            out.push(ConfigWarning(
                "GAME_WORLD_SIZE is ignored: a zone's size is set in its zone file (game.zone_file)".into(),
            ));
        }
        if self.tls.cert_path.is_empty() {
            out.push(ConfigWarning(
                "no TLS certificate configured (tls.cert_path): a self-signed DEVELOPMENT certificate will be \
                 generated; clients cannot verify this server"
                    .into(),
            ));
        }
        if self.security.token_secret == EXAMPLE_SECRET {
            out.push(ConfigWarning("security.token_secret is the example value from the documentation".into()));
        }
        if !self.uses_embedded_store() && self.redis.url.is_empty() {
            out.push(ConfigWarning(
                "a database is configured but no Redis: ownership locks are local to this process and zone \
                 transfers are disabled; set redis.url (REDIS_URL) for several zones"
                    .into(),
            ));
        }
        if self.uses_embedded_store() {
            out.push(ConfigWarning(
                "no database configured: players are kept in memory and lost when the process exits".into(),
            ));
        }
        if !self.database.password.is_empty() && self.database.password == "secure_password" {
            out.push(ConfigWarning("database.password is the example value".into()));
        }
        out
    }

    /// True when no PostgreSQL is configured.
    pub fn uses_embedded_store(&self) -> bool {
        self.database.url.is_empty() && self.database.host.is_empty()
    }

    /// The primary's connection string, `None` for the embedded store.
    pub fn primary_url(&self) -> Option<String> {
        let d = &self.database;
        if !d.url.is_empty() {
            return Some(d.url.clone());
        }
        if d.host.is_empty() {
            return None;
        }
        let mut s = format!("host={} port={} dbname={} user={}", d.host, d.port, d.name, d.user);
        if !d.password.is_empty() {
            s.push_str(&format!(" password='{}'", d.password.replace('\\', "\\\\").replace('\'', "\\'")));
        }
        if d.ssl {
            s.push_str(" sslmode=require");
        }
        Some(s)
    }

    /// The configuration as TOML with secrets replaced by `<redacted>`, for the start-up log.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        let redact = |s: &mut String| {
            if !s.is_empty() {
                *s = "<redacted>".into();
            }
        };
        redact(&mut c.database.password);
        redact(&mut c.security.token_secret);
        c.database.url = redact_url(&c.database.url);
        c.database.replica_urls = c.database.replica_urls.iter().map(|u| redact_url(u)).collect();
        c.database.shard_urls = c.database.shard_urls.iter().map(|u| redact_url(u)).collect();
        c.redis.url = redact_url(&c.redis.url);
        toml::to_string(&c).unwrap_or_else(|e| format!("<config not printable: {e}>"))
    }
}

/// Replaces the password of a `scheme://user:password@host` URL.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
}

fn to_tree(config: &Config) -> toml::Table {
    match Value::try_from(config) {
        Ok(Value::Table(t)) => t,
        // Config is a struct of structs of scalars: it always serializes to a table.
        _ => toml::Table::new(),
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies legacy names, then `REALM_SECTION_KEY` names. Unknown `REALM_*` variables are ignored (they may be
/// meant for scripts, e.g. `REALM_TEST_*`).
fn apply_env(tree: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    for (legacy, key) in LEGACY_ENV {
        if let Some((_, value)) = env.iter().find(|(k, _)| k == legacy) {
            set_key(tree, legacy, key, value)?;
        }
    }
    let sections: Vec<(String, Vec<String>)> =
        tree.iter().filter_map(|(s, v)| v.as_table().map(|t| (s.clone(), t.keys().cloned().collect()))).collect();
    for (section, keys) in sections {
        for key in keys {
            let var = format!("REALM_{}_{}", section.to_ascii_uppercase(), key.to_ascii_uppercase());
            if let Some((_, value)) = env.iter().find(|(k, _)| *k == var) {
                set_key(tree, &var, &format!("{section}.{key}"), value)?;
            }
        }
    }
    Ok(())
}

fn set_key(tree: &mut toml::Table, var: &str, key: &str, raw: &str) -> Result<(), ConfigError> {
    let (section, field) = key.split_once('.').unwrap_or(("", key));
    let Some(Value::Table(t)) = tree.get_mut(section) else { return Ok(()) };
    let bad = |expected| ConfigError::Env { var: var.into(), key: key.into(), expected, value: raw.into() };
    let raw_t = raw.trim();
    let value = match t.get(field) {
        Some(Value::Integer(_)) => Value::Integer(raw_t.parse().map_err(|_| bad("an integer"))?),
        Some(Value::Float(_)) => Value::Float(raw_t.parse().map_err(|_| bad("a number"))?),
        Some(Value::Boolean(_)) => Value::Boolean(match raw_t.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(bad("true or false")),
        }),
        Some(Value::Array(items)) => {
            let numeric = matches!(items.first(), Some(Value::Integer(_)));
            let parts = raw_t.split(',').map(str::trim).filter(|s| !s.is_empty());
            if numeric || field.ends_with("cores") {
                let nums: Result<Vec<Value>, _> = parts.map(|p| p.parse::<i64>().map(Value::Integer)).collect();
                Value::Array(nums.map_err(|_| bad("a comma-separated list of integers"))?)
            } else {
                Value::Array(parts.map(|p| Value::String(p.to_owned())).collect())
            }
        }
        _ => Value::String(raw.to_owned()),
    };
    t.insert(field.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_names_every_operator_alias() {
        let readme = include_str!("../../README.md");
        for (alias, key) in LEGACY_ENV {
            assert!(readme.contains(&format!("`{alias}`")), "README's Configuration section misses {alias} ({key})");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.server.port, 7777);
        assert_eq!(c.admin.port, 9100);
        assert_eq!(c.game.tick_rate, 20);
        assert!(c.uses_embedded_store());
    }

    #[test]
    fn sample_config_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/realm.toml");
        let c = Config::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(c, Config::default(), "config/realm.toml must document exactly the built-in defaults");
    }

    #[test]
    fn legacy_and_realm_env_names_override_with_realm_winning() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("SERVER_PORT", "8000"),
                ("GAME_TICK_RATE", "30"),
                ("REALM_GAME_TICK_RATE", "60"),
                ("LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.port, 8000);
        assert_eq!(c.game.tick_rate, 60);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_env_value_names_the_variable_key_and_value() {
        let err = Config::load_with_env(None, env(&[("GAME_TICK_RATE", "fast")])).unwrap_err().to_string();
        assert!(err.contains("GAME_TICK_RATE") && err.contains("game.tick_rate") && err.contains("fast"), "{err}");
    }

    #[test]
    fn the_delta_view_is_bounded_by_what_one_byte_index_gaps_address() {
        let load = |v: &str| Config::load_with_env(None, env(&[("REALM_GAME_VIEW_ENTITIES", v)]));
        assert_eq!(load("127").unwrap().game.view_entities, 127);
        for bad in ["19", "128", "0"] {
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains("game.view_entities") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_view_refresh_period_is_bounded() {
        let load = |v: &str| Config::load_with_env(None, env(&[("REALM_GAME_VIEW_REFRESH_MS", v)]));
        assert_eq!(load("1000").unwrap().game.view_refresh_ms, 1000);
        for bad in ["49", "2001", "0"] {
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains("game.view_refresh_ms") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn out_of_range_value_names_the_key_and_value() {
        let err = Config::load_with_env(None, env(&[("REALM_GAME_TICK_RATE", "61")])).unwrap_err().to_string();
        assert!(err.contains("game.tick_rate") && err.contains("61"), "{err}");
    }

    #[test]
    fn chat_limits_out_of_range_name_the_key_and_value() {
        for (var, key, value) in [
            ("REALM_CHAT_ZONE_BURST", "chat.zone_burst", "0"),
            ("REALM_CHAT_ZONE_REFILL_MS", "chat.zone_refill_ms", "0"),
            ("REALM_CHAT_SAY_BURST", "chat.say_burst", "1001"),
            ("REALM_CHAT_SAY_REFILL_MS", "chat.say_refill_ms", "3600001"),
        ] {
            let err = Config::load_with_env(None, env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{err}");
        }
        let c = Config::load_with_env(None, env(&[("REALM_CHAT_DELIVERIES_PER_SEC", "0")])).unwrap();
        assert_eq!(c.chat.deliveries_per_sec, 0, "0 turns the zone cap off");
    }

    #[test]
    fn unknown_key_in_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("realm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[game]\ntick_rat = 20\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("tick_rat"), "{err}");
        std::fs::write(&path, "[game]\ntick_rate = \"twenty\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("tick_rate") || err.contains("twenty"), "{err}");
    }

    #[test]
    fn lists_come_from_comma_separated_env() {
        let c = Config::load_with_env(
            None,
            env(&[("REALM_DATABASE_REPLICA_URLS", "postgres://a/x, postgres://b/x"), ("REALM_SERVER_IO_CORES", "0,1")]),
        )
        .unwrap();
        assert_eq!(c.database.replica_urls, vec!["postgres://a/x", "postgres://b/x"]);
        assert_eq!(c.server.io_cores, vec![0, 1]);
    }

    #[test]
    fn production_refuses_dev_certificate_and_example_secret() {
        let err = Config::load_with_env(None, env(&[("SERVER_ENV", "production")])).unwrap_err().to_string();
        assert!(err.contains("tls.cert_path"), "{err}");
    }

    #[test]
    fn production_refuses_a_missing_or_weak_token_secret_and_plain_browser_traffic() {
        let prod = |extra: &[(&str, &str)]| {
            let mut vars = vec![("SERVER_ENV", "production"), ("TLS_CERT", "/c.pem"), ("TLS_KEY", "/k.pem")];
            vars.extend_from_slice(extra);
            Config::load_with_env(None, env(&vars)).map_err(|e| e.to_string())
        };
        let strong = "0123456789abcdef0123456789abcdef";
        let err = prod(&[("REALM_SERVER_WS_TLS", "true")]).unwrap_err();
        assert!(err.contains("security.token_secret"), "missing secret: {err}");
        let err = prod(&[("REALM_SERVER_WS_TLS", "true"), ("JWT_SECRET", "short")]).unwrap_err();
        assert!(err.contains("security.token_secret"), "short secret: {err}");
        let err = prod(&[("JWT_SECRET", strong)]).unwrap_err();
        assert!(err.contains("server.ws_tls"), "plain HTTP for browsers: {err}");
        assert!(prod(&[("JWT_SECRET", strong), ("REALM_SERVER_WS_TLS", "true")]).is_ok());
        assert!(prod(&[("JWT_SECRET", strong), ("REALM_SERVER_WEB_BEHIND_PROXY", "true")]).is_ok());
        assert!(prod(&[("REALM_SERVER_WEB_ENABLED", "false")]).is_ok(), "no browser endpoint, no browser secret");
    }

    #[test]
    fn secrets_are_redacted_in_the_logged_config() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("DB_PASSWORD", "hunter2"),
                ("JWT_SECRET", "s3cret"),
                ("REALM_DATABASE_REPLICA_URLS", "postgres://u:pw@r/x"),
            ]),
        )
        .unwrap();
        let text = c.redacted_toml();
        assert!(!text.contains("hunter2") && !text.contains("s3cret") && !text.contains(":pw@"), "{text}");
        assert!(text.contains("tick_rate = 20"));
    }

    #[test]
    fn dev_defaults_warn_about_certificate_and_store() {
        let w = Config::default().warnings();
        assert!(w.iter().any(|w| w.0.contains("DEVELOPMENT certificate")));
        assert!(w.iter().any(|w| w.0.contains("in memory")));
    }
}
