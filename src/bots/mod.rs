//! `realm-bots`, the load generator: N real game clients (TLS control channel, sealed UDP data channel, exactly
//! README's protocol) spread over T threads, each thread one mio `Poll` driving its bots without blocking. No async
//! runtime.
//!
//! A run: bots start connecting spread evenly over `--ramp` seconds, each registers an account `<prefix><n>`
//! (logging in instead when the name exists), binds its own UDP socket, then sends one `Input` per server tick
//! (walk / fight / chat behaviours, [`Behaviour`]) and reads one `Snapshot` per tick, measuring input -> snapshot
//! latency and checking that it sees its own entity move. After the ramp, `--duration` seconds are measured; then
//! every bot logs out and the [`Report`] is returned. Traffic goes only to `--server`.
//!
//! Parts: [`bot`] (one client's state machine), [`driver`] (a thread's event loop and timers), [`behaviour`]
//! (decisions), [`histogram`] (log-linear latency histogram), [`stats`] (measurements and the report).
//!
//! The invariant a reader must not break: **the run is time-bounded and a misbehaving server cannot crash it** —
//! every bot stops at `ramp + duration` (plus a 2 s logout grace) whatever the server does, and anything unexpected
//! from the server becomes an error kind in the report, never a panic.

#![warn(missing_docs)]

pub mod behaviour;
mod bot;
mod driver;
pub mod histogram;
mod play;
mod stats;
mod ws;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

pub use self::behaviour::Behaviour;
use self::bot::{Bot, Shared};
use self::driver::{Agent, Driver};
use self::stats::{Live, ReportHeader, ThreadStats};
pub use self::stats::{Quantiles, Report};
use crate::net::tls::{self, ServerTrust};

/// Command line of `realm-bots`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "realm-bots", version, about = "Realm load generator: many real game clients on a few threads")]
pub struct Args {
    /// Game server address (TLS on TCP; UDP on the port LoginOk announces), or with `--transport ws` the
    /// browser endpoint (`server.ws_port`, plain HTTP).
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub server: String,
    /// How the bots connect: `tls` (TLS control channel + UDP, as realm-client) or `ws` (HTTP login and one
    /// WebSocket, as the web client).
    #[arg(long, value_enum, default_value_t = Transport::Tls)]
    pub transport: Transport,
    /// Protocol version the bots speak: 2 (delta snapshots) or 1 (full snapshots), to measure both.
    #[arg(long, default_value_t = crate::proto::PROTOCOL_VERSION,
          value_parser = clap::value_parser!(u32).range(1..=2))]
    pub protocol: u32,
    /// Name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Number of bots.
    #[arg(long, default_value_t = 10)]
    pub bots: usize,
    /// Seconds measured after the ramp (every bot plays until ramp + duration).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds over which bot logins are spread.
    #[arg(long, default_value_t = 5.0)]
    pub ramp: f64,
    /// Seconds between the end of the ramp and the measured window: logins still in flight when the ramp ends
    /// (a server hashing passwords at its limit) finish before anything is measured.
    #[arg(long, default_value_t = 0.0)]
    pub settle: f64,
    /// Driver threads (each a mio Poll over N/T bots).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// What the bots do.
    #[arg(long, value_enum, default_value_t = Behaviour::Walk)]
    pub behaviour: Behaviour,
    /// PEM file with the certificate (or CA) to trust, e.g. the server's development certificate.
    #[arg(long, conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (development only).
    #[arg(long)]
    pub insecure: bool,
    /// Print the report as one JSON object on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Account name prefix; bot n is `<prefix><n>`. Accounts are registered, or logged into when they exist.
    #[arg(long, default_value = "bot")]
    pub prefix: String,
    /// Password of every bot account.
    #[arg(long, default_value = "realm-bots-password")]
    pub password: String,
    /// Seconds a bot may wait for LoginOk (logins queue behind the server's argon2 limit).
    #[arg(long, default_value_t = 60.0)]
    pub login_timeout: f64,
    /// Each playing bot drops its connection (a TCP reset, as a phone losing its network) with this probability
    /// per second, reconnects at once and resumes its session with its token (reported as resumes).
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Exit with status 0 even when bots failed.
    #[arg(long)]
    pub allow_failures: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// How bots reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TLS control channel + UDP data channel.
    Tls,
    /// HTTP login + one WebSocket (the browser transport).
    Ws,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BotsError {
    /// A flag is out of range.
    #[error("invalid argument {flag}: {reason}")]
    InvalidArgument {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The server address does not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS configuration is unusable (unreadable CA file, ...).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A driver thread could not start or died.
    #[error("driver thread: {0}")]
    Thread(String),
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> BotsError {
    BotsError::InvalidArgument { flag, reason: reason.into() }
}

impl Args {
    /// Checks every flag; errors name the flag.
    pub fn validate(&self) -> Result<(), BotsError> {
        if self.bots == 0 {
            return Err(invalid("--bots", "at least 1"));
        }
        if self.threads == 0 || self.threads > 64 {
            return Err(invalid("--threads", "1..=64"));
        }
        for (flag, v) in [
            ("--duration", self.duration),
            ("--ramp", self.ramp),
            ("--settle", self.settle),
            ("--login-timeout", self.login_timeout),
        ] {
            if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
                return Err(invalid(flag, format!("{v} is not 0..=86400 seconds")));
            }
        }
        if !self.drop_rate.is_finite() || !(0.0..=10.0).contains(&self.drop_rate) {
            return Err(invalid("--drop-rate", format!("{} is not 0..=10 per second", self.drop_rate)));
        }
        if self.ca.is_none() && !self.insecure {
            return Err(invalid("--ca", "give the server's certificate with --ca PEM, or --insecure"));
        }
        let longest = format!("{}{}", self.prefix, self.bots - 1);
        let charset = self.prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !charset || longest.len() > 32 {
            return Err(invalid("--prefix", format!("{longest:?} is not at most 32 of [A-Za-z0-9_-]")));
        }
        if !(8..=128).contains(&self.password.len()) {
            return Err(invalid("--password", "8..=128 bytes"));
        }
        Ok(())
    }

    /// Account name of bot `n` (padded to 3 characters, the server's minimum).
    fn account_name(&self, n: usize) -> String {
        let name = format!("{}{n}", self.prefix);
        if name.len() < 3 {
            format!("{}{n:0>width$}", self.prefix, width = 3 - self.prefix.len())
        } else {
            name
        }
    }
}

/// Runs the load: returns when every bot has stopped. Progress goes to stderr once a second unless `--quiet`.
pub fn run(args: &Args) -> Result<Report, BotsError> {
    args.validate()?;
    let server = resolve(&args.server)?;
    let trust = match &args.ca {
        Some(path) => ServerTrust::CaFile(path.clone()),
        None => ServerTrust::InsecureAcceptAny,
    };
    let tls = tls::client_config(&trust)?;
    let server_name = ServerName::try_from(args.server_name.clone())
        .map_err(|e| invalid("--server-name", format!("{:?}: {e}", args.server_name)))?;
    let epoch = Instant::now();
    let ramp = Duration::from_secs_f64(args.ramp);
    let settle = Duration::from_secs_f64(args.settle);
    let duration = Duration::from_secs_f64(args.duration);
    let shared = Arc::new(Shared {
        server,
        server_name,
        tls,
        epoch,
        measure_from: epoch + ramp + settle,
        password: args.password.clone(),
        handshake_timeout: Duration::from_secs(10),
        login_timeout: Duration::from_secs_f64(args.login_timeout),
        udp_timeout: Duration::from_secs(5),
        drop_rate: args.drop_rate,
        protocol: args.protocol,
    });
    let end = epoch + ramp + settle + duration;
    let threads = args.threads.min(args.bots);
    let live = Arc::new(Live::new(threads));

    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let bots: Vec<Agent> = (t..args.bots)
            .step_by(threads)
            .enumerate()
            .map(|(slot, n)| {
                let start_at = epoch + ramp.mul_f64(n as f64 / args.bots as f64);
                let seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n as u64 + 1);
                let (name, role) = (args.account_name(n), args.behaviour.role(n));
                match args.transport {
                    Transport::Tls => Agent::Tls(Box::new(Bot::new(name, role, seed, slot, start_at))),
                    Transport::Ws => Agent::Ws(Box::new(ws::WsBot::new(name, role, seed, slot, start_at))),
                }
            })
            .collect();
        let driver = Driver::new(bots, Arc::clone(&shared), Arc::clone(&live), t)
            .map_err(|e| BotsError::Thread(e.to_string()))?;
        let handle = std::thread::Builder::new()
            .name(format!("realm-bots-{t}"))
            .spawn(move || driver.run(end))
            .map_err(|e| BotsError::Thread(e.to_string()))?;
        handles.push(handle);
    }

    let mut last = (0, 0);
    let mut last_at = epoch;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now.duration_since(last_at) >= Duration::from_secs(1) {
            let line = live.progress(
                now.duration_since(epoch).as_secs_f64(),
                now.duration_since(last_at).as_secs_f64(),
                &mut last,
            );
            last_at = now;
            if !args.quiet {
                eprintln!("{line}");
            }
        }
    }
    let mut stats = ThreadStats::default();
    let mut outcomes = Vec::with_capacity(args.bots);
    for h in handles {
        let (s, o) = h
            .join()
            .map_err(|_| BotsError::Thread("a driver thread panicked".into()))?
            .map_err(|e| BotsError::Thread(e.to_string()))?;
        stats.merge(s);
        outcomes.extend(o);
    }
    let header = ReportHeader {
        server: args.server.clone(),
        bots: args.bots,
        threads,
        behaviour: args.behaviour,
        ramp_secs: args.ramp,
        settle_secs: args.settle,
        duration_secs: args.duration,
        protocol: args.protocol,
    };
    Ok(Report::build(header, stats, &outcomes))
}

fn resolve(addr: &str) -> Result<SocketAddr, BotsError> {
    let resolve_err = |reason: String| BotsError::Resolve { addr: addr.to_owned(), reason };
    addr.to_socket_addrs()
        .map_err(|e| resolve_err(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_err("no address".into()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["realm-bots", "--insecure"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn flags_parse_with_defaults() {
        let a = args(&["--bots", "30", "--behaviour", "mixed", "--json"]);
        assert_eq!((a.bots, a.threads, a.behaviour, a.json), (30, 2, Behaviour::Mixed, true));
        assert!(a.validate().is_ok());
    }

    #[test]
    fn invalid_flags_are_named() {
        let e = args(&["--bots", "0"]).validate().unwrap_err().to_string();
        assert!(e.contains("--bots"), "{e}");
        let e = args(&["--prefix", "bad name"]).validate().unwrap_err().to_string();
        assert!(e.contains("--prefix"), "{e}");
        let e = args(&["--prefix", "a_very_long_prefix_for_bot_names_x"]).validate().unwrap_err().to_string();
        assert!(e.contains("--prefix"), "{e}");
        let e = Args::parse_from(["realm-bots"]).validate().unwrap_err().to_string();
        assert!(e.contains("--ca"), "{e}");
        let e = args(&["--ramp=-1"]).validate().unwrap_err().to_string();
        assert!(e.contains("--ramp"), "{e}");
        let e = args(&["--settle=NaN"]).validate().unwrap_err().to_string();
        assert!(e.contains("--settle"), "{e}");
    }

    #[test]
    fn account_names_meet_the_server_minimum() {
        assert_eq!(args(&["--prefix", "b"]).account_name(7), "b07");
        assert_eq!(args(&["--prefix", "load"]).account_name(12), "load12");
    }

    #[test]
    fn an_unreachable_server_fails_every_bot_with_a_connect_error_not_a_panic() {
        // Bind then drop: a loopback port that is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let a = args(&[
            "--server",
            &format!("127.0.0.1:{port}"),
            "--bots",
            "3",
            "--ramp",
            "0",
            "--duration",
            "1",
            "--quiet",
        ]);
        let r = run(&a).unwrap();
        assert_eq!((r.connected, r.failed), (0, 3));
        assert!(r.errors.keys().all(|k| k.starts_with("connect:")), "{:?}", r.errors);
    }
}
