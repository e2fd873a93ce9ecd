//! A real `realm-server` process on loopback, for the tests that attack it from outside: it is started with
//! environment overrides, waits for "ready:", and gives the game and admin addresses, the development
//! certificate, an HTTP GET on the admin port and a metric read from a live `/metrics` scrape.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use realm::client::Connection;
use realm::net::tls::{self, ServerTrust};

/// A free TCP port on loopback (the UDP port of the same number is free too in practice: tests own the machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `realm-server`; killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub game: SocketAddr,
    pub admin: SocketAddr,
    pub cert: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The browser endpoint (`REALM_SERVER_WS_PORT=0` by default here: a free port).
    pub web: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts `realm-server` on loopback with embedded defaults plus `env`, and waits until it is ready.
    pub fn start(env: &[(&str, &str)]) -> ServerProcess {
        let (port, admin) = (free_port(), free_port());
        // REALM_TEST_SERVER_BIN runs the same attacks against another build (an older commit, say).
        let bin = std::env::var("REALM_TEST_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_realm-server").into());
        let mut cmd = Command::new(bin);
        cmd.env("REALM_SERVER_HOST", "127.0.0.1")
            .env("REALM_SERVER_PORT", port.to_string())
            .env("REALM_ADMIN_HOST", "127.0.0.1")
            .env("REALM_ADMIN_PORT", admin.to_string())
            .env("REALM_SERVER_SHUTDOWN_GRACE_SECS", "5")
            // A free browser port (an older build, under REALM_TEST_SERVER_BIN, may not know the key).
            .env(
                if std::env::var_os("REALM_TEST_SERVER_BIN").is_some() {
                    "REALM_TEST_UNUSED"
                } else {
                    "REALM_SERVER_WS_PORT"
                },
                "0",
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start realm-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("written to ")
                        || line.contains("ready:")
                        || line.contains("cannot start")
                        || line.contains("play in a browser: ")
                    {
                        let _ = tx.send(line.clone());
                    }
                    let mut log = log.lock().unwrap();
                    if log.len() < 20_000 {
                        log.push(line);
                    }
                }
            });
        }
        let mut cert = None;
        let mut web = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server never became ready: {:?}", log.lock().unwrap()));
            if let Some(url) = line.split("play in a browser: ").nth(1) {
                web = url
                    .trim()
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .trim_end_matches('/')
                    .parse()
                    .ok();
            }
            if let Some(rest) = line.split("written to ").nth(1) {
                cert = rest.split(')').next().map(PathBuf::from);
            }
            if line.contains("ready:") {
                break;
            }
            assert!(!line.contains("cannot start"), "{line}");
        }
        ServerProcess {
            child,
            game: format!("127.0.0.1:{port}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
            cert: cert.expect("dev cert path in the log"),
            log,
            web,
        }
    }

    /// The client TLS configuration that trusts this server's development certificate.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        tls::client_config(&ServerTrust::CaFile(self.cert.clone())).unwrap()
    }

    /// A connection through TLS and Hello.
    pub fn connect(&self) -> Result<Connection, realm::client::ClientError> {
        let mut c =
            Connection::connect(&self.game.to_string(), "localhost", self.client_tls(), Duration::from_secs(10))?;
        c.hello("attack-test")?;
        Ok(c)
    }

    /// `GET path` on the admin port: (status code, body); `None` when no answer came within `timeout`.
    pub fn admin_get(&self, path: &str, timeout: Duration) -> Option<(u16, String)> {
        http_get(self.admin, path, timeout)
    }

    /// The sum of every sample of `name` whose labels contain all of `labels`, from a live scrape.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.admin_get("/metrics", Duration::from_secs(5)).expect("/metrics answers");
        metric_in(&body, name, labels)
    }

    /// Lines of the server's log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Open file descriptors of the server process (Linux).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Resident set size of the server process in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Sends `sig` to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling a child process we spawned and have not reaped; its pid is still ours.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    /// SIGTERM, then waits up to 15 s for the exit: the exit code (-1 for a signal).
    pub fn stop(mut self) -> i32 {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "server did not stop: {:?}", self.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `f` until it is true or `within` passes; returns whether it became true.
    pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET: (status code, body); `None` on no answer within `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// The sum of every sample of `name` in a Prometheus text body whose labels contain all of `labels`.
pub fn metric_in(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            if !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Runs `realm-client --server <server> --ca <ca> --script -` with `script` on its stdin and waits for it.
pub fn run_client_script(server: &str, ca: &std::path::Path, script: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_realm-client"))
        .arg("--server")
        .arg(server)
        .arg("--ca")
        .arg(ca)
        .args(["--script", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start realm-client");
    child.stdin.take().expect("stdin is piped").write_all(script.as_bytes()).expect("write the script");
    child.wait_with_output().expect("realm-client runs")
}
