//! End to end with real processes: `realm-server` on free loopback ports, `realm-bots` playing 30 real clients
//! against it, then SIGTERM and a clean exit. What a user would notice if it broke: bots that cannot log in, bind
//! UDP, get snapshots or see themselves move, or a server that does not stop cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the server if the test fails half-way, so no process outlives the test.
struct ServerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_realm-server"))
            .env("REALM_SERVER_HOST", "127.0.0.1")
            .env("REALM_SERVER_PORT", "0")
            .env("REALM_ADMIN_HOST", "127.0.0.1")
            .env("REALM_ADMIN_PORT", "0")
            .env("REALM_SERVER_IO_THREADS", "1")
            .env("REALM_SECURITY_MAX_CONCURRENT_HASHES", "2")
            // Thirty bots register from one address: more than the default 20 registrations per address per hour.
            .env("REALM_SECURITY_REGISTER_RATE_MAX", "100")
            .env("REALM_SERVER_SHUTDOWN_GRACE_SECS", "10")
            .env("RUST_LOG", "info")
            .env_remove("REALM_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start realm-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, log: Vec::new() }
    }

    /// Waits for a log line containing `needle` and returns it.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    panic!("no {needle:?} from realm-server within {timeout:?}; log so far:\n{}", self.log.join("\n"))
                }
            }
        }
    }
}

/// The text after `marker` up to the first character in `stop` (or the end of the line).
fn field_after<'a>(line: &'a str, marker: &str, stop: &[char]) -> &'a str {
    let start = line.find(marker).unwrap_or_else(|| panic!("{marker:?} not in {line:?}")) + marker.len();
    let rest = &line[start..];
    rest.find(stop).map_or(rest, |end| &rest[..end])
}

#[test]
fn thirty_bots_log_in_bind_udp_see_themselves_move_and_the_server_stops_cleanly() {
    let mut server = ServerProcess::start();
    let cert_line = server.wait_for("written to ", Duration::from_secs(20));
    let cert = field_after(&cert_line, "written to ", &[')']).to_owned();
    let listen_line = server.wait_for("listening on ", Duration::from_secs(20));
    let addr = field_after(&listen_line, "listening on ", &[' ']).to_owned();
    server.wait_for("ready: game on", Duration::from_secs(20));

    let bots = Command::new(env!("CARGO_BIN_EXE_realm-bots"))
        .args(["--server", &addr, "--ca", &cert, "--bots", "30", "--ramp", "3", "--duration", "8"])
        .args(["--behaviour", "mixed", "--prefix", "e2e", "--json"])
        .output()
        .expect("run realm-bots");
    let stdout = String::from_utf8_lossy(&bots.stdout);
    let stderr = String::from_utf8_lossy(&bots.stderr);
    assert!(bots.status.success(), "realm-bots failed ({:?}):\n{stdout}\n{stderr}", bots.status);
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    for (field, want) in
        [("connected", 30), ("udp_bound", 30), ("received_snapshots", 30), ("saw_self_move", 30), ("failed", 0)]
    {
        assert_eq!(report[field], want, "{field} in {report:#}");
    }
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    assert_eq!(report["tick_rate_hz"], 20.0);
    // 30 bots x 20 Hz for 8 s: allow for the edges of the window.
    let snapshots = report["snapshots_received"].as_u64().unwrap_or(0);
    assert!(snapshots > 30 * 20 * 6, "only {snapshots} snapshots in 8 s: {report:#}");
    assert!(report["latency_ms"]["count"].as_u64().unwrap_or(0) > 1000, "{report:#}");
    let p99_ticks = report["latency_ticks"]["p99"].as_f64().unwrap_or(f64::MAX);
    assert!(p99_ticks < 10.0, "input->snapshot p99 of {p99_ticks} ticks on an idle loopback server: {report:#}");
    assert!(stderr.contains("playing 30"), "the live progress line shows all bots playing:\n{stderr}");

    let pid = server.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait for realm-server") {
            break status;
        }
        assert!(Instant::now() < deadline, "realm-server did not exit within its 10 s grace period");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "graceful SIGTERM exits 0");
    let stop_line = server.wait_for("stopped after", Duration::from_secs(2));
    assert!(stop_line.contains("0 dropped"), "{stop_line}");
}
