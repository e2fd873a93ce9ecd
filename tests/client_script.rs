//! `realm-client --script` against a real `realm-server` process, as a player's script or a CI smoke test would
//! run them: both binaries are started as processes, the client trusts the server's development certificate
//! through `--ca`, and the transcript on stdout and the exit codes are what is checked.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const SERVER: &str = env!("CARGO_BIN_EXE_realm-server");
mod common;

const CLIENT: &str = env!("CARGO_BIN_EXE_realm-client");

/// A port that is free for both TCP and UDP right now (the game listens on both with the same number).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn lines_of(reader: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A `realm-server` process on loopback with its development certificate.
struct ServerProcess {
    child: Child,
    log: Receiver<String>,
    seen: Vec<String>,
    address: String,
    cert: PathBuf,
}

impl ServerProcess {
    fn start() -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let mut child = Command::new(SERVER)
            .env("REALM_SERVER_HOST", "127.0.0.1")
            .env("REALM_SERVER_PORT", port.to_string())
            .env("REALM_ADMIN_HOST", "127.0.0.1")
            .env("REALM_ADMIN_PORT", admin_port.to_string())
            .env("REALM_SERVER_IO_THREADS", "1")
            .env("REALM_WORKERS_THREADS", "2")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start realm-server");
        let log = lines_of(child.stderr.take().expect("stderr is piped"));
        let mut server =
            Self { child, log, seen: Vec::new(), address: format!("127.0.0.1:{port}"), cert: PathBuf::new() };
        let marker = "USING A SELF-SIGNED DEVELOPMENT CERTIFICATE (written to ";
        let cert = server.wait_for_line(marker, Duration::from_secs(60));
        let path = cert.split(marker).nth(1).and_then(|rest| rest.split(')').next()).expect("certificate path");
        server.cert = PathBuf::from(path);
        server.wait_for_line("ready:", Duration::from_secs(60));
        assert!(server.cert.exists(), "the logged certificate {} exists", server.cert.display());
        server
    }

    fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("server never logged {needle:?}; log so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// SIGTERM, then the exit status (the server drains: saves players, kicks them with a reason).
    fn terminate(mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a valid signal number only sends a signal; `pid` is our own child, not yet reaped
        // (we hold the `Child` and have not waited on it), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for realm-server") {
                return status;
            }
            assert!(Instant::now() < deadline, "realm-server did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Only reached un-terminated when a test failed: do not leave a server behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn client(server: &ServerProcess) -> Command {
    let mut c = Command::new(CLIENT);
    c.arg("--server").arg(&server.address).arg("--ca").arg(&server.cert);
    c
}

/// Runs a script given on stdin (`--script -`).
fn run_script(server: &ServerProcess, script: &str) -> Output {
    common::process::run_client_script(&server.address, &server.cert, script)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `(x,y)` pairs of a `moved from (x,y) to (x,y)` line.
fn parse_moved(line: &str) -> ((f32, f32), (f32, f32)) {
    let nums: Vec<f32> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a number"))
        .collect();
    assert_eq!(nums.len(), 4, "{line}");
    ((nums[0], nums[1]), (nums[2], nums[3]))
}

fn wait_for_stdout(lines: &Receiver<String>, needle: &str, transcript: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        transcript.push(line.clone());
        if line.contains(needle) {
            return;
        }
    }
    panic!("client never printed {needle:?}: {transcript:?}");
}

#[test]
fn a_scripted_player_registers_walks_chats_and_logs_out_and_a_wrong_password_is_refused() {
    let server = ServerProcess::start();
    let name = format!("scripted_{}", std::process::id() % 100_000);

    // The script from a file, as a player would write it.
    let script = format!(
        "# register, walk east for 1.5 s, talk, check, leave\n\
         register {name} password123\n\
         move 1 0 1.5\n\
         say hello from the script\n\
         expect-chat hello from the script\n\
         expect-moved\n\
         logout\n"
    );
    let file = std::env::temp_dir().join(format!("realm-client-script-{}.txt", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let out = client(&server).arg("--script").arg(&file).output().expect("realm-client runs");
    let _ = std::fs::remove_file(&file);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}", out.status, text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let find = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    let logged_in = find("logged-in player=").unwrap_or_else(|| panic!("no logged-in line:\n{stdout}"));
    assert!(lines[logged_in].contains(" entity=") && lines[logged_in].contains("zone=starter-vale"), "{stdout}");
    assert!(find("connected zone=starter-vale").is_some_and(|i| i < logged_in), "{stdout}");
    let moved = find("moved from ").unwrap_or_else(|| panic!("no moved line:\n{stdout}"));
    let ((x0, y0), (x1, y1)) = parse_moved(lines[moved]);
    // 1.5 s east at 6 m/s is 9 m; input pacing and the final stop allow a little either way.
    assert!((6.0..=10.5).contains(&(x1 - x0)) && (y1 - y0).abs() < 0.5, "{}", lines[moved]);
    let chat = format!("chat from={name} channel=say text=hello from the script");
    assert!(find(&chat).is_some_and(|i| i > moved), "{stdout}");
    assert!(find("ok expect-moved distance=").is_some(), "{stdout}");
    assert_eq!(lines.last().copied(), Some("logged-out"), "{stdout}");
    assert!(!stdout.contains("error"), "{stdout}");

    // The same account with a wrong password: refused with the reason, non-zero exit.
    let out = run_script(&server, &format!("login {name} wrong-password\nexpect-moved\n"));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{}", text(&out.stderr));
    assert!(stdout.contains("error login refused (invalid credentials): "), "{stdout}");
    assert!(!stdout.contains("logged-in"), "{stdout}");

    // The right password works again after the logout (the account is no longer online).
    let out = run_script(&server, &format!("login {name} password123\nwait 0.2\nlogout\n"));
    assert!(out.status.success(), "{}", text(&out.stdout));

    let status = server.terminate();
    assert!(status.success(), "realm-server exits 0 after SIGTERM: {status:?}");
}

#[test]
fn a_dropped_connection_is_resumed_by_the_client_with_the_same_character() {
    let server = ServerProcess::start();
    let name = format!("resumer_{}", std::process::id() % 100_000);
    let script =
        format!("register {name} password123\nmove 1 0 1\ndrop-connection\nwait 1\nmove 1 0 1\nexpect-moved\nlogout\n");
    let out = run_script(&server, &script);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}", out.status, text(&out.stderr));
    let joined: Vec<&str> = stdout.lines().filter(|l| l.starts_with("logged-in player=")).collect();
    assert_eq!(joined.len(), 2, "logged in, then resumed:\n{stdout}");
    let entity = |l: &str| l.split_whitespace().find(|w| w.starts_with("entity=")).map(str::to_owned);
    assert_eq!(entity(joined[0]), entity(joined[1]), "the same character came back:\n{stdout}");
    assert!(stdout.contains("notice connection lost"), "{stdout}");
    assert!(!stdout.contains("notice the session expired"), "resumed, not logged in again:\n{stdout}");
    assert_eq!(stdout.lines().last(), Some("logged-out"), "{stdout}");
}

#[test]
fn a_player_online_when_the_server_stops_is_told_why_and_the_client_fails() {
    let server = ServerProcess::start();
    let name = format!("stayer_{}", std::process::id() % 100_000);
    let mut child = client(&server)
        .args(["--script", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start realm-client");
    let script = format!("register {name} password123\nwait 60\nlogout\n");
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write the script");
    let stdout: ChildStdout = child.stdout.take().expect("stdout");
    let lines = lines_of(stdout);
    let mut transcript = Vec::new();
    wait_for_stdout(&lines, "logged-in", &mut transcript);

    let status = server.terminate();
    assert!(status.success(), "realm-server exits 0 after SIGTERM with a player online: {status:?}");
    wait_for_stdout(&lines, "error kicked by the server (server shutting down)", &mut transcript);
    let exit = child.wait().expect("client exits");
    assert_eq!(exit.code(), Some(1), "{transcript:?}");
}

#[test]
fn client_errors_are_clear_before_and_without_a_server() {
    // A typo fails before connecting, with the line number, exit code 2.
    let mut child = Command::new(CLIENT)
        .args(["--insecure", "--script", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start realm-client");
    child.stdin.take().unwrap().write_all(b"register ann password123\ndance\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("error line 2: unknown command 'dance'"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("WARNING: --insecure"), "--insecure is loud: {}", text(&out.stderr));

    // No server listening: the reason names the address.
    let port = free_port();
    let mut child = Command::new(CLIENT)
        .args(["--insecure", "--server", &format!("127.0.0.1:{port}"), "--script", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start realm-client");
    child.stdin.take().unwrap().write_all(b"login ann password123\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("error cannot connect to 127.0.0.1:{port}: ")), "{stdout}");

    // Trust must be chosen explicitly.
    let out = Command::new(CLIENT).args(["--script", "-"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--ca"), "{}", text(&out.stderr));
}
