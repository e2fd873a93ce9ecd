//! Resident memory per idle connected TLS client: a real `realm-server` process, 2,000 clients connected over
//! loopback (TLS handshake + Hello done, then idle), RSS of the server process (VmRSS from /proc) before and after.
//! Target (DESIGN.md section 11): <= 64 KiB per connected client. Run: `cargo bench --bench conn_memory`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realm::client::Connection;
use realm::net::tls::{self, ServerTrust};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    let clients: usize = std::env::var("REALM_CONN_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let (port, admin) = (free_port(), free_port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_realm-server"))
        .env("REALM_SERVER_HOST", "127.0.0.1")
        .env("REALM_SERVER_PORT", port.to_string())
        .env("REALM_ADMIN_HOST", "127.0.0.1")
        .env("REALM_ADMIN_PORT", admin.to_string())
        .env("REALM_NET_CONNECT_RATE_MAX", "100000")
        .env("REALM_NET_IDLE_TIMEOUT_MS", "600000")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start realm-server");
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.contains("ready:") => break,
            Some(_) => {}
            None => panic!("server exited before it was ready"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(server.id());
    let cfg = tls::client_config(&ServerTrust::InsecureAcceptAny).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut c = Connection::connect(&addr, "localhost", Arc::clone(&cfg), Duration::from_secs(10)).unwrap();
        c.hello("idle").unwrap();
        conns.push(c);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(server.id());
    let per = (after.saturating_sub(before)) as f64 / clients as f64;
    println!("RSS per idle TLS client: server RSS {before} KiB -> {after} KiB with {clients} clients");
    println!("= {per:.1} KiB per connected client (target <= 64 KiB) -> {}", if per <= 64.0 { "PASS" } else { "FAIL" });
    drop(conns);
    // SAFETY: sending SIGTERM to the child we spawned; its pid is valid until we wait() for it.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let _ = server.wait();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::json!({"clients": clients, "rss_before_kib": before, "rss_after_kib": after, "kib_per_client": per});
    let _ = std::fs::write(dir.join("conn_memory.json"), json.to_string());
}
