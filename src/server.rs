//! Process lifecycle: build every part from the [`Config`], run until SIGTERM/SIGINT, drain in order.
//!
//! Start order: TLS config, the inbound queue, the worker pool (with the backends), the io threads (sockets bound
//! before any thread starts), then the pinned simulation thread. Stop order: the sim thread drains (no new
//! logins, every player saved and its lock released, within the grace period), then tells the io threads to kick
//! everyone with `SERVER_SHUTDOWN` and close TLS, then the workers finish their queue. A second signal exits at
//! once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::account::backend::Backend;
use crate::account::login::{LoginPolicy, LoginService};
use crate::account::memory::{LocalLocks, MemoryAccounts, MemoryPlayers};
use crate::account::password::PasswordHasher;
use crate::account::transfer::{MemoryTransferTokens, RedisTransferTokens, TransferTokens};
use crate::account::{AccountStore, OwnershipLocks, PlayerStore};
use crate::admin::{self, AdminServer, AdminState, BackendState, Phase};
use crate::config::Config;
use crate::db::store::{PgAccounts, PgPlayers};
use crate::db::Database;
use crate::lock::RedisLocks;
use crate::metrics::Metrics;
use crate::net::io::{self, NetShared};
use crate::net::tls;
use crate::queue;
use crate::sim::jobs::SimEvent;
use crate::sim::runner::{RunnerConfig, SimRunner, Workers};
use crate::sim::sessions::SessionConfig;
use crate::sim::tick::TickCounters;
use crate::sim::zone::Zone;
use crate::sim::Simulation;
use crate::worker::WorkerPool;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The zone file is unusable.
    #[error(transparent)]
    Zone(#[from] crate::sim::zone::ZoneError),
    /// Binding sockets or starting threads failed.
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
    /// A backend could not be set up.
    #[error("backend: {0}")]
    Backend(String),
    /// A thread panicked.
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// A started server (tests start one in-process; the binary uses [`run`]).
pub struct RunningServer {
    /// Game address (TLS on TCP and UDP).
    pub game_addr: SocketAddr,
    /// Network counters.
    pub net: Arc<NetShared>,
    /// Where the development certificate was written, if one was generated.
    pub dev_cert_path: Option<std::path::PathBuf>,
    /// Admin HTTP address (/metrics, /health, /ready).
    pub admin_addr: SocketAddr,
    /// Browser endpoint (web client, login API, `/ws`), when enabled.
    pub web_addr: Option<SocketAddr>,
    /// Health and readiness state.
    pub admin_state: Arc<AdminState>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    admin: AdminServer,
    stop: Arc<AtomicBool>,
    sim: JoinHandle<TickCounters>,
    io: Vec<JoinHandle<()>>,
    workers: WorkerPool,
    login_workers: WorkerPool,
}

/// Builds and starts every part.
pub fn start(config: Config) -> Result<RunningServer, ServerError> {
    let config = Arc::new(config);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reporter = Arc::clone(&stop);
    let metrics = Arc::new(Metrics::new(&config.server.zone));
    let admin_state = Arc::new(AdminState::from_config(&config, &metrics));
    admin_state.set_phase(Phase::Starting);
    if config.uses_embedded_store() {
        admin_state.set_database(BackendState::Embedded);
    }
    if config.redis.url.is_empty() {
        admin_state.set_redis(BackendState::Embedded);
    }
    // The admin listener comes up first so probes see "starting" rather than a refused connection.
    let admin = admin::spawn(&config, Arc::clone(&admin_state), Arc::clone(&metrics))?;
    let zone = Zone::load(&config.game.zone_file)?;
    let server_tls = tls::server_config(&config.tls, &std::env::temp_dir())?;
    if let Some(path) = &server_tls.dev_cert_path {
        log::warn!(
            "USING A SELF-SIGNED DEVELOPMENT CERTIFICATE (written to {}); clients cannot verify this server. \
             Set tls.cert_path and tls.key_path (TLS_CERT/TLS_KEY) for anything but development.",
            path.display()
        );
    }
    let (backend, database) = build_backend(&config, &admin_state, &metrics)?;
    let transfers_enabled = database.is_some() && !config.redis.url.is_empty();
    if let Some(db) = &database {
        spawn_db_reporter(Arc::clone(db), Arc::clone(&admin_state), Arc::clone(&metrics), Arc::clone(&stop_reporter))?;
    }
    let (tx, rx) = queue::channel::<SimEvent>();
    let backend = Arc::new(backend);
    let (workers, jobs) =
        WorkerPool::start(config.workers.threads, config.workers.queue_depth, Arc::clone(&backend), tx.clone())?;
    // Logins get their own lane: argon2 takes tens of milliseconds per hash, and a login storm queued in front of
    // lock renewals would let ownership locks expire under load.
    let (login_workers, login_jobs) = WorkerPool::start_named(
        "realm-login",
        config.security.max_concurrent_hashes,
        config.workers.queue_depth,
        backend,
        tx.clone(),
    )?;
    let net = Arc::new(NetShared::new(&config));
    let _ = metrics.attach_workers("jobs", Arc::clone(workers.stats()));
    let _ = metrics.attach_workers("login", Arc::clone(login_workers.stats()));
    let _ = metrics.attach_net(Arc::clone(&net));
    admin_state.attach_net(Arc::clone(&net));
    let io = io::spawn(&config, Arc::clone(&server_tls.config), tx, Arc::clone(&net))?;
    let game_addr = io.local_addr;
    let web_addr = io.web_addr;

    let sim = Simulation::new(zone, config.game.tick_rate, config.game.seed)
        .with_chat_limits(&config.chat, Some(metrics.chat_refusals.clone()))
        .with_view_entities(config.game.view_entities)
        .with_view_refresh_ms(config.game.view_refresh_ms);
    log::info!("zone {} loaded: {} NPCs, {} m square", sim.zone().name, sim.world.len(), sim.zone().size);
    let runner = SimRunner::new(
        sim,
        rx,
        io.handles.clone(),
        Workers { jobs, logins: login_jobs },
        RunnerConfig {
            tick_rate: config.game.tick_rate,
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            sessions: SessionConfig {
                zone: config.server.zone.clone(),
                tick_rate: config.game.tick_rate,
                udp_port: game_addr.port(),
                save_interval: Duration::from_secs(config.game.save_interval_secs),
                lock_ttl: Duration::from_millis(config.redis.lock_ttl_ms),
                max_players: config.game.max_players,
                transfers_enabled,
                resume_grace: Duration::from_secs(config.game.resume_grace_secs),
            },
        },
        Arc::clone(&metrics),
        Arc::clone(&stop),
    )
    .with_io_link(Arc::clone(&net.sim_waker), {
        let net = Arc::clone(&net);
        Box::new(move |tick| net.udp.publish_server_tick(tick))
    })
    .with_admin(Arc::clone(&admin_state));
    let sim_core = sim_core(&config);
    let (sim_nice, sim_rt) = (config.server.sim_nice, config.server.sim_realtime_priority);
    let sim = std::thread::Builder::new().name("realm-sim".into()).spawn(move || {
        crate::os::place_current_thread("realm-sim", sim_core, sim_nice, sim_rt);
        runner.run()
    })?;
    admin_state.set_phase(Phase::Ready);
    Ok(RunningServer {
        admin_addr: admin.local_addr(),
        web_addr,
        admin_state,
        metrics,
        admin,
        game_addr,
        net,
        dev_cert_path: server_tls.dev_cert_path,
        stop,
        sim,
        io: io.joins,
        workers,
        login_workers,
    })
}

/// The core for the simulation thread: configured, or the last core (io threads start from the first).
fn sim_core(config: &Config) -> Option<core_affinity::CoreId> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if config.server.sim_core >= 0 {
        return cores.iter().find(|c| c.id as i64 == config.server.sim_core).copied();
    }
    cores.last().copied()
}

/// The embedded store, or PostgreSQL (accounts on the primary, progress on the shards) and Redis (ownership locks,
/// transfer tokens) when configured. Either may be configured alone.
fn build_backend(
    config: &Config,
    admin: &AdminState,
    metrics: &Metrics,
) -> Result<(Backend, Option<Arc<Database>>), ServerError> {
    let hasher = PasswordHasher::new(config.security.max_concurrent_hashes)
        .map_err(|e| ServerError::Backend(e.to_string()))?
        .with_admission(crate::account::password::Admission {
            anonymous_queue: crate::account::password::Admission::default().anonymous_queue,
            anonymous_wait: std::time::Duration::from_millis(config.security.anonymous_hash_wait_ms),
        });
    let (accounts, players, database): (Arc<dyn AccountStore>, Arc<dyn PlayerStore>, _) =
        if config.uses_embedded_store() {
            (Arc::new(MemoryAccounts::default()), Arc::new(MemoryPlayers::default()), None)
        } else {
            let db = Arc::new(Database::connect(config).map_err(|e| ServerError::Backend(format!("database: {e}")))?);
            admin.set_database(BackendState::Up);
            log::info!("database connected (migrations applied when database.migrate_on_start)");
            (Arc::new(PgAccounts::new(Arc::clone(&db))), Arc::new(PgPlayers::new(Arc::clone(&db), 100)), Some(db))
        };
    let (locks, transfers): (Arc<dyn OwnershipLocks>, Arc<dyn TransferTokens>) = if config.redis.url.is_empty() {
        (Arc::new(LocalLocks::default()), Arc::new(MemoryTransferTokens::default()))
    } else {
        let url = &config.redis.url;
        let prefix = &config.redis.key_prefix;
        let locks = RedisLocks::connect(url, prefix, 4).map_err(|e| ServerError::Backend(e.to_string()))?;
        let transfers = RedisTransferTokens::connect(url, prefix).map_err(|e| ServerError::Backend(e.to_string()))?;
        admin.set_redis(BackendState::Up);
        log::info!("redis connected: ownership locks and transfer tokens are shared with other zones");
        (Arc::new(locks), Arc::new(transfers))
    };
    let locks = Arc::new(crate::lock::MeteredLocks::new(locks, metrics.locks.clone()));
    let login = LoginService::new(accounts, players, locks, hasher, LoginPolicy::from_config(config));
    Ok((Backend { login, transfers, tokens: Arc::new(token_signer(config)) }, database))
}

/// The browser login token signer: `security.token_secret`, or a random per-process secret in development (with a
/// warning; production refuses to start without a real one, see `Config::validate`).
fn token_signer(config: &Config) -> crate::account::token::TokenSigner {
    let ttl = Duration::from_secs(config.security.token_ttl_secs.max(1));
    let secret = if config.security.token_secret.is_empty() {
        if config.server.web_enabled {
            log::warn!(
                "security.token_secret (JWT_SECRET) is not set: browser login tokens are signed with a random \
                 secret of this process (they stop working when it restarts and no other zone accepts them)"
            );
        }
        let mut random = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        random.to_vec()
    } else {
        config.security.token_secret.as_bytes().to_vec()
    };
    crate::account::token::TokenSigner::new(&secret, &config.server.zone, ttl)
}

/// Copies the database monitor's view into /health and the metrics every two seconds.
fn spawn_db_reporter(
    db: Arc<Database>,
    admin: Arc<AdminState>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("realm-db-report".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let snapshot = db.snapshot();
            publish_db(&snapshot, &admin, &metrics);
            for (name, c) in db.caches().stats() {
                let sample = crate::metrics::CacheSample {
                    hits: c.hits,
                    misses: c.misses,
                    evictions: c.evictions + c.expirations,
                    entries: c.len as u64,
                };
                metrics.set_cache_stats(&name, sample);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    })?;
    Ok(())
}

/// The database monitor's snapshot into /health (primary up or down) and the pool, replica and statement metrics.
fn publish_db(snapshot: &crate::db::monitor::DbSnapshot, admin: &AdminState, metrics: &Metrics) {
    use crate::metrics::{PoolSample, ReplicaSample, StatementSample, QUERY_BUCKETS};
    admin.set_database(if snapshot.alerts.primary_down { BackendState::Down } else { BackendState::Up });
    for pool in &snapshot.pools {
        let s = &pool.stats;
        metrics.set_pool_stats(
            &pool.name,
            PoolSample {
                up: pool.up,
                max_size: s.max_size,
                in_use: s.in_use,
                idle: s.idle,
                waits: s.waits,
                wait_seconds: s.wait_time.as_secs_f64(),
                timeouts: s.timeouts,
                connect_errors: s.connect_errors,
                query_errors: s.query_errors,
            },
        );
    }
    for r in &snapshot.replicas {
        let sample = ReplicaSample { up: r.up, lag_seconds: r.lag.map(|d| d.as_secs_f64()) };
        metrics.set_replica_lag(&format!("replica-{}", r.index), sample);
    }
    for st in &snapshot.statements {
        let sample = StatementSample {
            bounds: QUERY_BUCKETS.to_vec(),
            counts: st.buckets.clone(),
            sum_seconds: st.total.as_secs_f64(),
            errors: st.errors,
        };
        metrics.set_statement_stats(st.name, sample);
    }
}

impl RunningServer {
    /// Asks for a graceful stop (what SIGTERM does).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The stop flag, for signal handlers.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Waits for the drain and every thread; returns the simulation's tick counters.
    pub fn join(self) -> Result<TickCounters, ServerError> {
        let counters = self.sim.join().map_err(|_| ServerError::Panicked("simulation"))?;
        for j in self.io {
            j.join().map_err(|_| ServerError::Panicked("io"))?;
        }
        // The sim thread dropped its job sender when it returned; the io threads dropped theirs: workers end.
        self.workers.join();
        self.login_workers.join();
        self.admin.shutdown();
        Ok(counters)
    }
}

/// Runs the zone server until SIGTERM or SIGINT, then drains and returns.
pub fn run(config: Config) -> Result<(), ServerError> {
    log::info!(
        "realm-server {} starting; effective configuration:\n{}",
        env!("CARGO_PKG_VERSION"),
        config.redacted_toml()
    );
    for w in config.warnings() {
        log::warn!("{w}");
    }
    let grace = config.server.shutdown_grace_secs;
    let tls_web = config.server.ws_tls;
    let server = start(config)?;
    let stop = server.stop_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while draining exits at once (exit code 1).
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop)).map_err(ServerError::Signals)?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(ServerError::Signals)?;
    }
    if let Some(web) = server.web_addr {
        let scheme = if tls_web { "https" } else { "http" };
        let host = if web.ip().is_unspecified() { "127.0.0.1".to_owned() } else { web.ip().to_string() };
        log::info!("play in a browser: {scheme}://{host}:{}/", web.port());
    }
    log::info!(
        "ready: game on {} (TLS + UDP), admin on http://{} (/metrics /health /ready); SIGTERM or SIGINT stops \
         gracefully within {grace} s",
        server.game_addr,
        server.admin_addr
    );
    let counters = server.join()?;
    log::info!(
        "stopped after {} ticks ({} overruns, {} late, {} dropped)",
        counters.ticks,
        counters.overruns,
        counters.late,
        counters.dropped
    );
    Ok(())
}
