//! The web client in real headless Chromium against a real `realm-server` process (issue 18): two pages register,
//! walk toward each other with the keyboard and see each other, chat on the zone channel, attack an NPC, a
//! screenshot of the canvas shows the world, a `realm-client --script` player shares the world with a page, and a
//! page whose network drops resumes as the same entity. The browser side is `web/tools/e2e.mjs` (playwright-core
//! driving Debian's /usr/bin/chromium); this test starts the server, runs it, and checks what it reports.
//!
//! Needs node, web/node_modules (`scripts/web.sh build|check|test` installs them) and Chromium (`scripts/tools.sh`
//! installs it): ignored by a plain `cargo test`, run by `scripts/test.sh` (`--include-ignored`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::ServerProcess;

/// A 400 m zone with one spawn point (every player starts in view of every other), one NPC 12 m north of it (in
/// firebolt range, out of its own aggro range) and no portal. Returns the file's path.
fn zone_with_an_npc(dir: &Path) -> PathBuf {
    let dummy = common::Npcs {
        kind: "training-dummy",
        count: 1,
        at: (200.0, 212.0, 0.5),
        max_hp: 5000,
        damage: (1, 2),
        radii: (2.0, 20.0),
    };
    common::zone_file(dir, "starter-vale.toml", &dummy.toml())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` with a deadline: (exit status success, stdout). Kills it when the deadline passes.
fn run_with_deadline(mut cmd: Command, deadline: Duration) -> (bool, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start node");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let end = Instant::now() + deadline;
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (ok, out.join().unwrap(), err.join().unwrap())
}

#[test]
#[ignore = "needs Chromium and node: run scripts/test.sh"]
fn two_browsers_and_a_script_player_play_together_and_a_dropped_page_resumes() {
    let started = Instant::now();
    assert!(Path::new("/usr/bin/chromium").exists(), "no /usr/bin/chromium: run scripts/tools.sh (apt chromium)");
    assert!(
        repo().join("web/node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run scripts/web.sh build (npm ci)"
    );

    let dir = std::env::temp_dir().join(common::unique("browser_e2e_zone"));
    let zone = zone_with_an_npc(&dir).to_string_lossy().into_owned();
    let server = ServerProcess::start(&[("REALM_GAME_ZONE_FILE", &zone)]);
    let web = server.web.expect("the browser endpoint's URL is in the log");

    // Artefacts (screenshots, result.json) under target/, kept after the test.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-e2e");
    let _ = std::fs::remove_dir_all(&out);
    let mut node = Command::new("node");
    node.current_dir(repo().join("web"))
        .arg("tools/e2e.mjs")
        .arg("--url")
        .arg(format!("http://{web}/"))
        .arg("--out")
        .arg(&out)
        .arg("--client")
        .arg(env!("CARGO_BIN_EXE_realm-client"))
        .arg("--game")
        .arg(server.game.to_string())
        .arg("--ca")
        .arg(&server.cert);
    let (ok, stdout, stderr) = run_with_deadline(node, Duration::from_secs(80));
    println!("{stdout}");
    let server_log = || server.log.lock().unwrap().iter().rev().take(60).rev().cloned().collect::<Vec<_>>().join("\n");
    assert!(ok, "e2e.mjs failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log (tail):\n{}", server_log());

    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("E2E-RESULT "))
        .unwrap_or_else(|| panic!("no E2E-RESULT line:\n{stdout}"));
    let r: serde_json::Value = serde_json::from_str(json).unwrap();

    // Two distinct players in the test zone, who walked apart and back and see each other.
    let (a, b) = (&r["players"]["a"], &r["players"]["b"]);
    assert_eq!(r["zone"], "starter-vale");
    assert_ne!(a["name"], b["name"]);
    assert_ne!(a["entityId"], b["entityId"]);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("a number: {v}"));
    assert!(f(&r["walk"]["apartM"]) > 10.0 && f(&r["walk"]["togetherM"]) < f(&r["walk"]["apartM"]) - 5.0, "{r}");
    for (seen, actual) in [("aSeesB", "b"), ("bSeesA", "a")] {
        let dx = f(&r["walk"][seen]["x"]) - f(&r["walk"][actual]["x"]);
        let dy = f(&r["walk"][seen]["y"]) - f(&r["walk"][actual]["y"]);
        assert!(dx.hypot(dy) < 1.0, "{seen}: {}", r["walk"]);
    }

    // B's page shows A's zone line; A's combat log has its firebolt.
    let line = r["chat"]["line"].as_str().unwrap();
    assert!(r["chat"]["bChatLog"].as_str().unwrap().contains(line), "{}", r["chat"]);
    let combat: Vec<&str> = r["combat"]["domLines"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(combat.iter().any(|l| l.starts_with("you ") && l.contains("firebolt")), "{combat:?}");

    // The screenshot shows a world and is kept.
    let shot = &r["screenshot"];
    let path = PathBuf::from(shot["path"].as_str().unwrap());
    assert!(path.starts_with(&out) && std::fs::metadata(&path).map(|m| m.len() > 1000).unwrap_or(false), "{shot}");
    assert!(f(&shot["distinctColours"]) >= 16.0 && f(&shot["nonBackgroundFraction"]) >= 0.01, "{shot}");
    println!("canvas screenshot: {}", path.display());

    // The script player and the page were in one world.
    let transcript: Vec<&str> =
        r["native"]["transcript"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(transcript.iter().any(|l| l.starts_with("ok expect-chat")), "{transcript:?}");
    assert_eq!(transcript.last().copied(), Some("logged-out"), "{transcript:?}");
    assert!(!r["native"]["aSeesItAt"].is_null(), "{}", r["native"]);

    // The dropped page came back as the same entity.
    assert_eq!(r["resume"]["entityBefore"], r["resume"]["entityAfter"], "{}", r["resume"]);
    assert!(r["resume"]["entityAfter"].is_u64(), "{}", r["resume"]);
    // ... by the server's resumption (not a new login), once: the attempts made while offline never reached it.
    assert_eq!(server.metric("game_server_resumes_total", &[("outcome", "resumed")]), 1.0);
    assert_eq!(server.metric("game_server_resumes_total", &[("outcome", "refused")]), 0.0);
    assert_eq!(server.log_lines("panicked").len(), 0, "{}", server_log());

    println!("browser e2e: {:.1} s in all (node {} s)", started.elapsed().as_secs_f64(), r["seconds"]);
    assert_eq!(server.stop(), 0);
}
