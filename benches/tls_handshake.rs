//! Server CPU per full TLS 1.3 handshake through Realm's io thread, against the same rustls handshake done in
//! memory (no sockets, no event loop) in the same run.
//!
//! The io thread's CPU time is read from /proc (the scheduler's exact runtime of the thread named realm-io-0, from
//! `schedstat`; the user/kernel split from `stat`'s tick samples) before and after
//! N real loopback handshakes (each: connect, handshake, close_notify, close). The in-memory baseline times only
//! the server side's rustls calls. Target (DESIGN.md section 11): ratio <= 1.25.
//! Run: `cargo bench --bench tls_handshake` (REALM_TLS_BENCH_N to change N).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realm::client::Connection;
use realm::config::Config;
use realm::net::io::{self, Inbound, NetShared, Outbound};
use realm::net::tls::{self, ServerTrust};
use realm::proto::KickReason;
use realm::queue::{self, Pop};
use rustls::pki_types::ServerName;

/// The task directory of the thread named `name` in this process.
fn thread_dir(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(Result::ok)
        .map(|t| t.path())
        .find(|dir| std::fs::read_to_string(dir.join("comm")).is_ok_and(|comm| comm.trim() == name))
}

/// CPU time of the thread named `name`: exact (the scheduler's nanosecond runtime from `schedstat`), and split
/// into (user, kernel) as sampled at timer ticks from `stat` (only an estimate of the split: a thread that runs in
/// bursts shorter than a tick is charged by where the tick lands).
fn thread_cpu(name: &str) -> Option<(Duration, Duration, Duration)> {
    let dir = thread_dir(name)?;
    let schedstat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
    let exact = Duration::from_nanos(schedstat.split(' ').next()?.parse().ok()?);
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((exact, Duration::from_secs_f64(utime / ticks), Duration::from_secs_f64(stime / ticks)))
}

fn in_memory(n: usize, server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Duration {
    let mut server_time = Duration::ZERO;
    for _ in 0..n {
        let mut c =
            rustls::ClientConnection::new(Arc::clone(&client), ServerName::try_from("localhost").unwrap()).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::clone(&server)).unwrap();
        let mut buf = Vec::new();
        while c.is_handshaking() || s.is_handshaking() {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let t = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets().unwrap();
            let mut out = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut out).unwrap();
            }
            server_time += t.elapsed();
            let mut rd = &out[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets().unwrap();
        }
        let _ = (c.writer().write(b""), s.reader().read(&mut [0u8; 1]));
    }
    server_time / n as u32
}

fn main() {
    let n: usize = std::env::var("REALM_TLS_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let mut config = Config::default();
    config.server.host = "127.0.0.1".parse().unwrap();
    config.server.port = 0;
    config.server.io_threads = 1;
    config.net.connect_rate_max = 1_000_000;
    let server_tls = tls::server_config(&config.tls, &std::env::temp_dir()).unwrap();
    let client_tls = tls::client_config(&ServerTrust::InsecureAcceptAny).unwrap();

    let baseline = in_memory(n, Arc::clone(&server_tls.config), Arc::clone(&client_tls));

    let (tx, mut rx) = queue::channel::<Inbound>();
    let shared = Arc::new(NetShared::new(&config));
    let io = io::spawn(&config, Arc::clone(&server_tls.config), tx, Arc::clone(&shared)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Pop::Empty = rx.pop() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let addr = io.local_addr.to_string();
    // Warm up, then measure.
    for _ in 0..50 {
        Connection::connect(&addr, "localhost", Arc::clone(&client_tls), Duration::from_secs(5)).unwrap().close();
    }
    let before = thread_cpu("realm-io-0").expect("io thread CPU from /proc");
    let t = Instant::now();
    for _ in 0..n {
        Connection::connect(&addr, "localhost", Arc::clone(&client_tls), Duration::from_secs(5)).unwrap().close();
    }
    let wall = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let after = thread_cpu("realm-io-0").unwrap();
    let per = (after.0 - before.0) / n as u32;
    let (user_ticks, kernel_ticks) = ((after.1 - before.1).as_secs_f64(), (after.2 - before.2).as_secs_f64());
    let user_share = if user_ticks + kernel_ticks > 0.0 { user_ticks / (user_ticks + kernel_ticks) } else { 0.0 };
    let user = per.mul_f64(user_share);
    let kernel = per - user;
    let ratio = per.as_secs_f64() / baseline.as_secs_f64();
    println!("TLS 1.3 full handshakes: {n} (sessions not resumed: the server keeps no session cache)");
    println!("| what | CPU per handshake (server side) |");
    println!("| --- | ---: |");
    println!("| in-memory rustls (server calls only) | {:.1} us |", baseline.as_secs_f64() * 1e6);
    println!(
        "| realm io thread over loopback (accept, TLS handshake, close_notify, close) | {:.1} us |",
        per.as_secs_f64() * 1e6
    );
    println!("| - of which user space (rustls + realm), tick-sampled share | {:.1} us |", user.as_secs_f64() * 1e6);
    println!(
        "| - of which kernel (accept, TCP, epoll, close), tick-sampled share | {:.1} us |",
        kernel.as_secs_f64() * 1e6
    );
    println!(
        "ratio {ratio:.2}x (target <= 1.25x); {:.0} handshakes/s end to end on one client thread",
        n as f64 / wall.as_secs_f64()
    );
    for h in &io.handles {
        h.send(Outbound::Shutdown { reason: KickReason::ServerShutdown, message: String::new() });
        h.wake();
    }
    for j in io.joins {
        let _ = j.join();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::json!({"baseline_us": baseline.as_secs_f64() * 1e6, "io_thread_us": per.as_secs_f64() * 1e6,
        "io_user_us": user.as_secs_f64() * 1e6, "io_kernel_us": kernel.as_secs_f64() * 1e6, "ratio": ratio,
        "user_ratio": user.as_secs_f64() / baseline.as_secs_f64()});
    let _ = std::fs::write(dir.join("tls_handshake.json"), json.to_string());
}
