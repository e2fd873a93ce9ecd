//! The backup drill: a backup that has never been restored is a hope, not a backup. Against the real PostgreSQL
//! (fresh databases for a primary and two shards) and Redis, with real `realm-server` and `realm-client` processes:
//!
//! * players play (register, walk, kill NPCs, loot items), `scripts/backup.sh` dumps the world, they play more,
//!   and `scripts/restore.sh` brings back exactly the world of the backup in fresh databases (every table's rows
//!   and checksum), with item ids unique, every id sequence ahead of every id the lost world ever handed out, no
//!   stale owner able to save, and a restored player logging in to a zone started on it;
//! * point-in-time recovery on a throwaway WAL-archiving cluster recovers to a time between two known writes:
//!   the first is there, the second is not;
//! * retention keeps exactly the daily/weekly/monthly sets of a calendar of fake dates.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use postgres::{Client, NoTls};
use realm::account::{GrantOutcome, PlayerStore, Progress, SaveOutcome, SaveRow};
use realm::client::{ClientError, Connection, UdpLink};
use realm::config::Config;
use realm::db::store::PgPlayers;
use realm::db::{ChatLine, CombatEvent, Database};
use realm::proto::{
    control_message::Body, data_message::Body as DataBody, CombatEventKind, ControlMessage, DataMessage, EntityKind,
    Input, KickReason, Login, Register, Vec2,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SERVER: &str = env!("CARGO_BIN_EXE_realm-server");
const PASSWORD: &str = "password123";
/// `scripts/restore.sh`'s default `--id-gap`.
const ID_GAP: i64 = 1 << 32;

// ---- databases ---------------------------------------------------------------------------------------------------

/// `url` with its database name replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (server, _) = url.rsplit_once('/').expect("a postgres:// URL with a database");
    format!("{server}/{db}")
}

fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Databases created for the test on the shared server (unique names); dropped on drop, even when the test fails.
struct FreshDbs {
    admin: String,
    names: Vec<String>,
}

impl FreshDbs {
    fn new(tag: &str, roles: &[&str]) -> FreshDbs {
        let admin = with_db(&common::pg_url(), "postgres");
        let base = common::unique(tag);
        let names: Vec<String> = roles.iter().map(|r| format!("{base}_{r}")).collect();
        let mut c = connect(&admin);
        for n in &names {
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)")).unwrap();
            c.batch_execute(&format!("CREATE DATABASE {n}")).unwrap();
        }
        FreshDbs { admin, names }
    }

    /// Names only: the restore creates them (and they are dropped with the others).
    fn names_only(tag: &str, roles: &[&str]) -> FreshDbs {
        let dbs = FreshDbs::new(tag, roles);
        let mut c = connect(&dbs.admin);
        for n in &dbs.names {
            c.batch_execute(&format!("DROP DATABASE {n}")).unwrap();
        }
        dbs
    }

    fn url(&self, i: usize) -> String {
        with_db(&common::pg_url(), &self.names[i])
    }

    fn primary(&self) -> String {
        self.url(0)
    }

    fn shards(&self) -> Vec<String> {
        (1..self.names.len()).map(|i| self.url(i)).collect()
    }
}

impl Drop for FreshDbs {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.admin, NoTls) {
            for n in &self.names {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"));
            }
        }
    }
}

/// A scratch directory, removed on drop (also when the test fails).
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Columns compared exactly for each table; the restore deliberately changes the others (owner_epoch and
/// owner_zone: fencing; sessions.expires_at: every session expired), and the test checks those separately.
fn row_expr(table: &str) -> &'static str {
    match table {
        "player_progress" => "(t.player_id, t.zone, t.pos_x, t.pos_y, t.level, t.experience, t.health, t.updated_at)",
        "sessions" => "(t.id, t.player_id, t.token_hash, t.created_at, t.ip_address, t.user_agent)",
        _ => "t",
    }
}

/// Every table of schema public (leaf partitions included): (rows, checksum of the sorted row texts).
fn table_state(url: &str) -> BTreeMap<String, (i64, String)> {
    let mut c = connect(url);
    c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1").unwrap();
    let tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let e = row_expr(&t);
            let row = c
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(md5({e}::text), '' ORDER BY md5({e}::text))), '') \
                         FROM public.\"{t}\" t"
                    ),
                    &[],
                )
                .unwrap();
            (t, (row.get(0), row.get(1)))
        })
        .collect()
}

/// The state of a world: each database's tables, in role order (primary, shard 0, shard 1).
fn world_state(urls: &[String]) -> Vec<BTreeMap<String, (i64, String)>> {
    urls.iter().map(|u| table_state(u)).collect()
}

fn scalar_i64(url: &str, sql: &str) -> i64 {
    connect(url).query_one(sql, &[]).unwrap().get(0)
}

/// player_id -> owner_epoch over every shard.
fn epochs(shards: &[String]) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for s in shards {
        for r in connect(s).query("SELECT player_id, owner_epoch FROM player_progress", &[]).unwrap() {
            out.insert(r.get(0), r.get(1));
        }
    }
    out
}

fn item_ids(shards: &[String]) -> Vec<i64> {
    let mut ids = Vec::new();
    for s in shards {
        ids.extend(
            connect(s).query("SELECT item_id FROM inventory_items", &[]).unwrap().iter().map(|r| r.get::<_, i64>(0)),
        );
    }
    ids
}

fn player_id(primary: &str, name: &str) -> Option<i64> {
    connect(primary).query_opt("SELECT id FROM players WHERE username = $1", &[&name]).unwrap().map(|r| r.get(0))
}

// ---- scripts -----------------------------------------------------------------------------------------------------

fn script(name: &str) -> PathBuf {
    Path::new(ROOT).join("scripts").join(name)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("run script");
    eprintln!(
        "$ {cmd:?}\n  exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An executable on PATH.
fn which(name: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} not on PATH"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn restore_cmd(set: &Path, primary: &str, shards: &[String]) -> Command {
    let mut c = Command::new(script("restore.sh"));
    c.arg("--set").arg(set).arg("--primary").arg(primary);
    for s in shards {
        c.arg("--shard").arg(s);
    }
    c
}

// ---- playing -----------------------------------------------------------------------------------------------------

/// A 400 m zone whose spawn is surrounded by harmless one-hit NPCs: every firebolt is a kill, a third of kills loot.
fn drill_zone(dir: &Path) -> String {
    let wolves = common::Npcs {
        kind: "wolf",
        count: 240,
        at: (200.0, 200.0, 40.0),
        max_hp: 5,
        damage: (0, 0),
        radii: (1.0, 5.0),
    };
    common::zone_file(dir, "drill-zone.toml", &wolves.toml()).display().to_string()
}

fn start_zone(primary: &str, shards: &[String], prefix: &str, zone_file: &str) -> ServerProcess {
    let shard_urls = shards.join(",");
    let redis = common::redis_url();
    ServerProcess::start(&[
        ("REALM_SERVER_ZONE", "starter-vale"),
        ("REALM_GAME_ZONE_FILE", zone_file),
        ("REALM_DATABASE_URL", primary),
        ("REALM_DATABASE_SHARD_URLS", &shard_urls),
        ("REALM_DATABASE_POOL_SIZE", "3"),
        ("REALM_DATABASE_MIN_IDLE", "0"),
        ("REALM_REDIS_URL", &redis),
        ("REALM_REDIS_KEY_PREFIX", prefix),
        ("REALM_SERVER_IO_THREADS", "1"),
        ("REALM_WORKERS_THREADS", "2"),
        // Six players log in at once: enough hashing slots that none is told "server busy".
        ("REALM_SECURITY_MAX_CONCURRENT_HASHES", "8"),
    ])
}

/// Runs a `realm-client --script` session against `zone`: (exit success, transcript).
fn play(zone: &ServerProcess, lines: &str) -> (bool, String) {
    let out = common::process::run_client_script(&zone.game.to_string(), &zone.cert, lines);
    (out.status.success(), format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

/// How a player enters the game.
#[derive(Debug, Clone, Copy)]
enum Enter {
    Register,
    Login,
}

/// One player's session through the client library, as a game client plays it: enter, walk away from the spawn in
/// direction `dir` (of 8, so players spread out), then firebolt the nearest living NPC until `kills` kills (the
/// target is chosen again and the input sent again every 300 ms: inputs ride unreliable UDP, and another player may
/// take the kill), then log out and wait for the server's goodbye (saved and released). Returns the looted item ids.
fn play_session(zone: &ServerProcess, enter: Enter, name: &str, dir: usize, walk_secs: f32, kills: usize) -> Vec<u64> {
    let mut c = zone.connect().unwrap_or_else(|e| panic!("{name}: connect: {e}"));
    let (username, password) = (name.to_owned(), PASSWORD.to_owned());
    let ok = c
        .authenticate(match enter {
            Enter::Register => Body::Register(Register { username, password }),
            Enter::Login => Body::Login(Login { username, password }),
        })
        .unwrap_or_else(|e| panic!("{name}: {enter:?}: {e}"));
    let keys = c.udp_keys(ok.session_id).unwrap();
    let mut link = UdpLink::bind(zone.game, ok.session_id, &keys, Duration::from_secs(5)).unwrap();
    c.set_timeout(Duration::from_millis(10)).unwrap();
    let mut seq = 0;
    let mut send = |link: &mut UdpLink, move_dir: Option<Vec2>, ability: u32, target_entity: u64| {
        seq += 1;
        let input = Input { sequence: seq, move_dir, ability, target_entity, ..Default::default() };
        let _ = link.send(&DataMessage::new(DataBody::Input(input)));
    };
    let angle = dir as f32 * std::f32::consts::TAU / 8.0;
    let start = Instant::now();
    while start.elapsed().as_secs_f32() < walk_secs {
        send(&mut link, Some(Vec2 { x: angle.cos(), y: angle.sin() }), 0, 0);
        let _ = link.recv(Duration::from_millis(50));
    }
    send(&mut link, None, 0, 0);

    let (mut killed, mut loot) = (0, Vec::new());
    let control = |c: &mut Connection, killed: &mut usize, loot: &mut Vec<u64>| -> bool {
        loop {
            match c.recv() {
                Ok(m) => match m.body {
                    Some(Body::CombatEvent(e))
                        if e.kind == CombatEventKind::CombatEventKill as i32 && e.source_entity == ok.entity_id =>
                    {
                        *killed += 1
                    }
                    Some(Body::Loot(l)) => loot.push(l.item_id),
                    _ => {}
                },
                Err(ClientError::Timeout) => return false,
                // The answer to Logout: saved and released.
                Err(ClientError::Kicked { reason: KickReason::LoggedOut, .. }) => return true,
                Err(e) => {
                    let log = zone.log.lock().unwrap();
                    let tail: Vec<&String> = log.iter().rev().take(15).collect();
                    panic!("{name}: connection ended: {e}; the zone's last log lines (newest first): {tail:#?}")
                }
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut target, mut last_shot) = (None, Instant::now() - Duration::from_secs(1));
    while killed < kills {
        assert!(Instant::now() < deadline, "{name}: only {killed} of {kills} kills in 40 s");
        if let Ok(DataMessage { body: Some(DataBody::Snapshot(snap)) }) = link.recv(Duration::from_millis(20)) {
            let me = snap.entities.iter().find(|e| e.id == ok.entity_id).and_then(|e| e.position);
            target = me.and_then(|me| {
                let d2 = |p: &Vec2| (p.x - me.x).powi(2) + (p.y - me.y).powi(2);
                snap.entities
                    .iter()
                    .filter(|e| e.kind == EntityKind::Npc as i32 && e.flags & 1 == 0 && e.hp > 0)
                    .filter_map(|e| e.position.map(|p| (e.id, d2(&p))))
                    .filter(|&(_, d)| d < 24.0 * 24.0)
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(id, _)| id)
            });
        }
        if let Some(t) = target {
            if last_shot.elapsed() >= Duration::from_millis(300) {
                send(&mut link, None, 2, t);
                last_shot = Instant::now();
            }
        }
        control(&mut c, &mut killed, &mut loot);
    }
    c.send(&ControlMessage::new(Body::Logout(Default::default()))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !control(&mut c, &mut killed, &mut loot) {
        assert!(Instant::now() < deadline, "{name}: no answer to Logout");
    }
    loot
}

/// Several players at once, arriving 150 ms apart (logins do not all hash at the same instant). Returns every item
/// id looted.
fn play_all(zone: &ServerProcess, players: &[(Enter, String, usize)]) -> Vec<u64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = players
            .iter()
            .enumerate()
            .map(|(i, (enter, name, dir))| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(150 * i as u64));
                    play_session(zone, *enter, name, *dir, 1.5, 3)
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

fn wait_all_offline(zone: &ServerProcess) {
    assert!(
        ServerProcess::wait_until(Duration::from_secs(15), || zone.metric("game_server_players_online", &[]) == 0.0),
        "players still online"
    );
}

// ---- the drill ---------------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs PostgreSQL and Redis"]
fn a_dump_restores_exactly_the_backed_up_world_fenced_and_playable() {
    let t0 = Instant::now();
    let live = FreshDbs::new("drill_live", &["p", "s0", "s1"]);
    let (primary, shards) = (live.primary(), live.shards());
    let all_live: Vec<String> = std::iter::once(primary.clone()).chain(shards.iter().cloned()).collect();
    let tmp_guard = TmpDir(std::env::temp_dir().join(common::unique("realm-drill")));
    let tmp = tmp_guard.0.clone();
    let zone_file = drill_zone(&tmp);
    let prefix = common::unique("drill");
    let zone = start_zone(&primary, &shards, &prefix, &zone_file);

    // --- play: six players register, walk, kill and loot (until the world holds a few items) -------------------
    let players: Vec<String> = (0..6).map(|i| format!("early_{i}")).collect();
    let spread = |enter: Enter, shift: usize| -> Vec<(Enter, String, usize)> {
        players.iter().enumerate().map(|(i, p)| (enter, p.clone(), i + shift)).collect()
    };
    let mut loot = play_all(&zone, &spread(Enter::Register, 0));
    while loot.len() < 4 {
        loot.extend(play_all(&zone, &spread(Enter::Login, loot.len() + 1)));
    }
    // The partitioned event logs (the server does not write them yet; the data layer does).
    {
        let mut cfg = Config::default();
        cfg.database.url = primary.clone();
        cfg.database.shard_urls = shards.clone();
        cfg.database.pool_size = 2;
        cfg.database.min_idle = 0;
        let db = Database::connect(&cfg).unwrap();
        let ids: Vec<u64> = players.iter().map(|p| player_id(&primary, p).unwrap() as u64).collect();
        let combat: Vec<CombatEvent> =
            ids.iter().map(|&a| CombatEvent { actor: a, target: None, kind: 1, amount: 20 }).collect();
        let chat: Vec<ChatLine> = ids
            .iter()
            .map(|&a| ChatLine { actor: a, target: None, channel: "say".into(), text: format!("hello from {a}") })
            .collect();
        assert_eq!(db.log_combat("starter-vale", &combat).unwrap(), 6);
        assert_eq!(db.log_chat("starter-vale", &chat).unwrap(), 6);
    }
    wait_all_offline(&zone);
    let played = t0.elapsed();

    // --- back up -------------------------------------------------------------------------------------------------
    let before = world_state(&all_live);
    let epochs_before = epochs(&shards);
    assert_eq!(epochs_before.len(), 6, "every player has progress on a shard");
    let items_before = item_ids(&shards);
    assert!(items_before.len() >= 4);
    let dest = tmp.join("backups");
    let upload = tmp.join("uploaded");
    std::fs::create_dir_all(&upload).unwrap();
    let textfile = tmp.join("textfile").join("realm_backup.prom");
    let mut backup = Command::new(script("backup.sh"));
    backup
        .arg("--dest")
        .arg(&dest)
        .arg("--primary")
        .arg(&primary)
        .args(shards.iter().flat_map(|s| ["--shard", s.as_str()]))
        .arg("--textfile")
        .arg(&textfile)
        .arg("--upload-cmd")
        .arg(format!("cp -r \"$1\" '{}/'", upload.display()));
    let backup_started = Instant::now();
    let out = run(&mut backup);
    let backup_secs = backup_started.elapsed().as_secs_f64();
    assert!(out.status.success(), "backup failed");
    let status_line = text(&out.stdout);
    assert!(status_line.contains("realm-backup kind=dump status=ok exit=0"), "{status_line}");
    assert_eq!(world_state(&all_live), before, "the world changed while it was backed up: not quiescent");
    let sets: Vec<PathBuf> = std::fs::read_dir(dest.join("dumps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with('2'))
        .collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    let set = sets[0].clone();
    for f in ["primary.dump", "shard-0.dump", "shard-1.dump", "manifest.json", "SHA256SUMS"] {
        assert!(set.join(f).is_file(), "{f} missing from the set");
        assert!(upload.join(set.file_name().unwrap()).join(f).is_file(), "the upload hook did not get {f}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(set.join("manifest.json")).unwrap())
            .expect("manifest.json is JSON");
    assert_eq!(manifest["schema_version"], "0003_event_logs");
    assert_eq!(manifest["shard_map"]["count"], 2);
    assert_eq!(manifest["databases"].as_array().unwrap().len(), 3);
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    let success: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("realm_backup_last_success_timestamp_seconds{kind=\"dump\"} "))
        .expect("last success metric")
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - success).abs() < 120.0, "last success {success}, now {now}");
    assert!(metrics.contains("realm_backup_last_status{kind=\"dump\"} 1"), "{metrics}");
    // The file is valid Prometheus text (what node_exporter's textfile collector will parse).
    if let Ok(promtool) = which("promtool") {
        let mut lint = Command::new(promtool).args(["check", "metrics"]).stdin(Stdio::piped()).spawn().unwrap();
        lint.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
        assert!(lint.wait().unwrap().success(), "promtool check metrics rejects {}", textfile.display());
    }
    // A failing run says so (exit code, log line, last_status 0) and leaves the last success where it was, so
    // RealmBackupMissing keeps counting from the last backup that worked.
    let mut broken = Command::new(script("backup.sh"));
    broken.arg("--dest").arg(&dest).arg("--primary").arg("postgres://postgres@127.0.0.1:1/nowhere");
    broken.arg("--textfile").arg(&textfile);
    let out = run(&mut broken);
    assert_eq!(out.status.code(), Some(3), "an unreachable database is exit 3");
    assert!(text(&out.stdout).contains("realm-backup kind=dump status=failed exit=3"), "{}", text(&out.stdout));
    let after_failure = std::fs::read_to_string(&textfile).unwrap();
    assert!(after_failure.contains("realm_backup_last_status{kind=\"dump\"} 0"), "{after_failure}");
    assert!(
        after_failure.contains(&format!("realm_backup_last_success_timestamp_seconds{{kind=\"dump\"}} {success}")),
        "the failed run moved the last success: {after_failure}"
    );
    assert_eq!(std::fs::read_dir(dest.join("dumps")).unwrap().count(), 1, "the failed run left a set behind");

    // --- play more: new players, and an early player comes back and moves on -----------------------------------
    let mut late: Vec<(Enter, String, usize)> = (0..3).map(|i| (Enter::Register, format!("late_{i}"), 2 * i)).collect();
    late.push((Enter::Login, "early_0".into(), 7));
    let mut late_loot = play_all(&zone, &late);
    while late_loot.is_empty() {
        // Items looted after the backup are what the restore must never hand out again: make sure there are some.
        late_loot = play_all(&zone, &[(Enter::Login, "late_0".into(), 3)]);
    }
    wait_all_offline(&zone);
    let live_after = world_state(&all_live);
    assert_ne!(live_after, before, "playing after the backup changed nothing");
    let early_0 = player_id(&primary, "early_0").unwrap();
    let live_epoch_early_0 = epochs(&shards)[&early_0];
    assert!(live_epoch_early_0 > epochs_before[&early_0]);
    let live_max_item = item_ids(&shards).into_iter().max().unwrap();
    let live_max_player = scalar_i64(&primary, "SELECT max(id) FROM players");
    eprintln!("late players looted {late_loot:?}; live max item id {live_max_item}, max player id {live_max_player}");
    // The old world's zone dies holding a lock on a player (kill -9 leaves it until its TTL): planted by hand.
    let early_1 = player_id(&primary, "early_1").unwrap();
    let lock_key = format!("{prefix}:lock:player:{early_1}");
    let mut redis = redis::Client::open(common::redis_url()).unwrap().get_connection().unwrap();
    let _: () =
        redis::cmd("SET").arg(&lock_key).arg("dead-zone:token").arg("PX").arg(600_000).query(&mut redis).unwrap();
    assert_eq!(zone.stop(), 0);

    // --- restore: refused where it must be, exact where it runs ---------------------------------------------------
    let restored = FreshDbs::names_only("drill_restored", &["p", "s0", "s1"]);
    let (r_primary, r_shards) = (restored.primary(), restored.shards());
    let all_restored: Vec<String> = std::iter::once(r_primary.clone()).chain(r_shards.iter().cloned()).collect();
    // A set whose file was altered is refused before anything is written.
    let tampered = tmp.join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    for e in std::fs::read_dir(&set).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tampered.join(e.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(tampered.join("shard-1.dump")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(tampered.join("shard-1.dump"), bytes).unwrap();
    let out = run(&mut restore_cmd(&tampered, &r_primary, &r_shards));
    assert_eq!(out.status.code(), Some(3), "a tampered set must be refused (exit 3)");
    assert!(text(&out.stderr).contains("do not verify"));
    let admin = with_db(&common::pg_url(), "postgres");
    for n in &restored.names {
        let exists = scalar_i64(&admin, &format!("SELECT count(*) FROM pg_database WHERE datname = '{n}'"));
        assert_eq!(exists, 0, "{n} was created although the manifest did not verify");
    }
    // A set whose dumps do not hold what its manifest says (a table's checksum altered, SHA256SUMS made to match):
    // the restore loads it, compares every table with the manifest, and fails (exit 6) instead of serving it.
    let lying = tmp.join("lying");
    std::fs::create_dir_all(&lying).unwrap();
    for e in std::fs::read_dir(&set).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), lying.join(e.file_name())).unwrap();
    }
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lying.join("manifest.json")).unwrap()).unwrap();
    let primary_db = m["databases"].as_array_mut().unwrap().iter_mut().find(|d| d["role"] == "primary").unwrap();
    primary_db["tables"]["players"]["checksum"] = "0:0".into();
    std::fs::write(lying.join("manifest.json"), serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let resum = Command::new("bash")
        .arg("-c")
        .arg("sha256sum -- *.dump manifest.json > SHA256SUMS")
        .current_dir(&lying)
        .status()
        .unwrap();
    assert!(resum.success());
    let scratch = FreshDbs::names_only("drill_lying", &["p", "s0", "s1"]);
    let out = run(&mut restore_cmd(&lying, &scratch.primary(), &scratch.shards()));
    assert_eq!(out.status.code(), Some(6), "restored tables that differ from the manifest must fail the restore");
    assert!(text(&out.stderr).contains("differ from the manifest"), "{}", text(&out.stderr));
    // Those databases now hold tables: the good set goes in only with --force (dropped and recreated), exactly.
    let scratch_urls: Vec<String> = std::iter::once(scratch.primary()).chain(scratch.shards()).collect();
    let out = run(&mut restore_cmd(&set, &scratch.primary(), &scratch.shards()));
    assert_eq!(out.status.code(), Some(4), "a non-empty target needs --force");
    let out = run(restore_cmd(&set, &scratch.primary(), &scratch.shards()).arg("--force"));
    assert!(out.status.success(), "--force restore failed");
    assert_eq!(world_state(&scratch_urls), before, "--force restored something else than the backup");
    drop(scratch);
    // The wrong number of shards is refused.
    let out = run(&mut restore_cmd(&set, &r_primary, &r_shards[..1]));
    assert_eq!(out.status.code(), Some(3));
    // Onto the live (non-empty) databases without --force: refused, and the live world is untouched.
    let out = run(&mut restore_cmd(&set, &primary, &shards));
    assert_eq!(out.status.code(), Some(4), "overwriting a non-empty database needs --force");
    assert_eq!(world_state(&all_live), live_after);

    let mut restore = restore_cmd(&set, &r_primary, &r_shards);
    restore.arg("--redis").arg(common::redis_url()).arg("--key-prefix").arg(&prefix);
    let restore_started = Instant::now();
    let out = run(&mut restore);
    let restore_secs = restore_started.elapsed().as_secs_f64();
    assert!(out.status.success(), "restore failed");
    assert!(text(&out.stdout).contains("realm-restore status=ok exit=0"));

    // Exactly the backed-up world: every table of every database, rows and checksums.
    assert_eq!(world_state(&all_restored), before, "the restored world differs from the backed-up one");
    // Fenced: every epoch jumped past anything the old world's zones can hold, nobody owns anyone.
    let r_epochs = epochs(&r_shards);
    assert_eq!(r_epochs.len(), epochs_before.len());
    for (p, e) in &epochs_before {
        assert_eq!(r_epochs[p], e + ID_GAP, "player {p}");
    }
    for s in &r_shards {
        assert_eq!(scalar_i64(s, "SELECT count(*) FROM player_progress WHERE owner_zone IS NOT NULL"), 0);
    }
    assert_eq!(scalar_i64(&r_primary, "SELECT count(*) FROM sessions WHERE expires_at > now()"), 0);
    // Item ids unique across shards; sequences ahead of every id, including those the lost world handed out later.
    let mut r_items = item_ids(&r_shards);
    let n_items = r_items.len();
    r_items.sort_unstable();
    r_items.dedup();
    assert_eq!(r_items.len(), n_items, "an item id appears twice");
    assert_eq!(n_items, items_before.len());
    let item_seq = scalar_i64(&r_primary, "SELECT last_value FROM item_id_seq");
    assert!(item_seq > live_max_item && item_seq > *r_items.last().unwrap(), "item_id_seq {item_seq}");
    let player_seq = scalar_i64(&r_primary, "SELECT last_value FROM players_id_seq");
    assert!(player_seq > live_max_player, "players_id_seq {player_seq} <= {live_max_player}");
    // The dead zone's lock is gone.
    let exists: i64 = redis::cmd("EXISTS").arg(&lock_key).query(&mut redis).unwrap();
    assert_eq!(exists, 0, "the restore left the old world's ownership lock");

    // A zone of the old world that still holds early_0 (its newest epoch) can neither save nor grant an item.
    {
        let mut cfg = Config::default();
        cfg.database.url = r_primary.clone();
        cfg.database.shard_urls = r_shards.clone();
        cfg.database.pool_size = 2;
        cfg.database.min_idle = 0;
        cfg.database.migrate_on_start = false;
        let store = PgPlayers::new(Arc::new(Database::connect(&cfg).unwrap()), 100);
        let stale = SaveRow {
            player_id: early_0 as u64,
            epoch: live_epoch_early_0 as u64,
            progress: Progress { zone: "starter-vale".into(), pos: (1.0, 1.0), level: 99, xp: 1, hp: 1 },
        };
        assert_eq!(store.save(&[stale]).unwrap(), vec![SaveOutcome::OwnershipLost]);
        assert!(matches!(
            store.grant_item(early_0 as u64, live_epoch_early_0 as u64, 1, 1).unwrap(),
            GrantOutcome::OwnershipLost
        ));
    }
    assert_eq!(world_state(&all_restored), before, "a stale owner changed the restored world");

    // --- a zone on the restored databases: restored players log in, a post-backup account does not exist --------
    let zone = start_zone(&r_primary, &r_shards, &prefix, &zone_file);
    let (ok, transcript) = play(&zone, "login early_1 password123\nwait 0.3\nlogout\n");
    assert!(ok, "a restored player (whose old lock the restore cleared) could not log in:\n{transcript}");
    assert!(transcript.contains(&format!("logged-in player={early_1} ")), "{transcript}");
    let (ok, transcript) = play(&zone, "login late_0 password123\n");
    assert!(
        !ok && transcript.contains("invalid credentials"),
        "an account made after the backup exists:\n{transcript}"
    );
    // early_0 logs in and loots: a new item id above every id the lost world used.
    let mut new_ids = Vec::new();
    while new_ids.is_empty() {
        new_ids = play_session(&zone, Enter::Login, "early_0", 3, 1.0, 3);
    }
    assert!(new_ids.iter().all(|&id| id as i64 > live_max_item), "a new item reused an old id: {new_ids:?}");
    let stored: Vec<i64> = item_ids(&r_shards).into_iter().filter(|id| !r_items.contains(id)).collect();
    assert_eq!(stored.len(), new_ids.len(), "every looted item is stored, once");
    assert!(epochs(&r_shards)[&early_0] > r_epochs[&early_0], "logging in claimed above the fence");
    assert_eq!(zone.stop(), 0);

    let bytes: u64 = std::fs::read_dir(&set).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    eprintln!(
        "drill: played {:.1} s; backup {backup_secs:.2} s ({bytes} bytes, {} players, {} items); restore + verify + \
         fence {restore_secs:.2} s; total {:.1} s",
        played.as_secs_f64(),
        epochs_before.len(),
        items_before.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// A throwaway PostgreSQL cluster (scripts/pitr-cluster.sh) with WAL archiving; stopped and deleted on drop.
struct PitrCluster {
    dir: PathBuf,
    port: u16,
    recovered: Option<PathBuf>,
}

impl PitrCluster {
    fn url(&self, port: u16, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{db}")
    }
}

impl Drop for PitrCluster {
    fn drop(&mut self) {
        for data in std::iter::once(self.dir.join("data")).chain(self.recovered.clone()) {
            let _ = Command::new(script("pitr-cluster.sh")).arg("stop").arg("--pgdata").arg(data).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Registers `name` on `zone` (the account row is the known write) and logs out.
fn register(zone: &ServerProcess, name: &str) {
    let (ok, transcript) = play(zone, &format!("register {name} {PASSWORD}\nwait 0.2\nlogout\n"));
    assert!(ok, "{transcript}");
}

#[test]
#[ignore = "needs PostgreSQL and Redis"]
fn point_in_time_recovery_stops_between_two_known_writes() {
    // PostgreSQL runs as postgres under root: the directories must be reachable for it.
    let dir = PathBuf::from("/var/tmp").join(common::unique("realm-pitr"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cluster = PitrCluster { dir: dir.clone(), port: common::process::free_port(), recovered: None };
    let archive = dir.join("wal");
    let dbs = ["realm", "realm_shard_0", "realm_shard_1"];
    let mut start = Command::new(script("pitr-cluster.sh"));
    start.arg("start").arg("--pgdata").arg(dir.join("data")).arg("--port").arg(cluster.port.to_string());
    start.arg("--archive").arg(&archive);
    for db in dbs {
        start.args(["--db", db]);
    }
    assert!(run(&mut start).status.success());
    let p = cluster.port;
    let (primary, shards) = (cluster.url(p, dbs[0]), vec![cluster.url(p, dbs[1]), cluster.url(p, dbs[2])]);
    let migrate = Command::new(SERVER)
        .arg("migrate")
        .env("REALM_DATABASE_URL", &primary)
        .env("REALM_DATABASE_SHARD_URLS", shards.join(","))
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));

    // Two base backups with --keep-base 1: the older one and the WAL only it needed are pruned. The writes below are
    // then replayed from the kept base backup and the archive.
    let dest = dir.join("backups");
    let base_backup = || {
        run(Command::new(script("backup.sh"))
            .arg("base")
            .arg("--dest")
            .arg(&dest)
            .arg("--primary")
            .arg(cluster.url(p, "postgres"))
            .arg("--wal-archive")
            .arg(&archive)
            .arg("--keep-base")
            .arg("1")
            .arg("--textfile")
            .arg(dir.join("realm_backup.prom")))
    };
    assert!(base_backup().status.success(), "base backup failed");
    let bases = |dest: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dest.join("base"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with('2'))
            .collect();
        v.sort();
        v
    };
    let first = bases(&dest);
    assert_eq!(first.len(), 1);
    std::thread::sleep(Duration::from_millis(1100)); // base backups are named by the second
    assert!(base_backup().status.success(), "second base backup failed");
    let kept = bases(&dest);
    assert_eq!(kept.len(), 1, "--keep-base 1 keeps one: {kept:?}");
    assert_ne!(kept, first, "the newer base backup is the one kept");
    let base = kept[0].clone();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("manifest.json")).unwrap()).unwrap();
    let start_wal = manifest["start_wal"].as_str().unwrap().to_owned();
    assert_eq!(start_wal.len(), 24, "{manifest}");
    let segments: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    assert!(segments.iter().all(|n| *n >= start_wal), "WAL older than the kept base backup remains: {segments:?}");

    let prefix = common::unique("pitr");
    let tmp = dir.join("zone");
    let zone = start_zone(&primary, &shards, &prefix, &drill_zone(&tmp));
    register(&zone, "first_write");
    std::thread::sleep(Duration::from_millis(700));
    let target = utc_now();
    std::thread::sleep(Duration::from_millis(700));
    register(&zone, "second_write");
    assert_eq!(zone.stop(), 0);
    assert!(player_id(&primary, "first_write").is_some() && player_id(&primary, "second_write").is_some());
    let switched = Instant::now();
    assert!(run(Command::new(script("pitr-cluster.sh")).args(["switch-wal", "--port", &p.to_string()]))
        .status
        .success());
    eprintln!("pitr: the last writes were archived {:.2} s after pg_switch_wal", switched.elapsed().as_secs_f64());

    let rp = common::process::free_port();
    let recovered = dir.join("recovered");
    cluster.recovered = Some(recovered.clone());
    let (r_primary, r_shards) = (cluster.url(rp, dbs[0]), vec![cluster.url(rp, dbs[1]), cluster.url(rp, dbs[2])]);
    let mut restore = Command::new(script("restore.sh"));
    restore
        .arg("--to-time")
        .arg(&target)
        .arg("--base")
        .arg(&base)
        .arg("--wal-archive")
        .arg(&archive)
        .arg("--pgdata")
        .arg(&recovered)
        .arg("--port")
        .arg(rp.to_string())
        .arg("--primary")
        .arg(&r_primary)
        .args(r_shards.iter().flat_map(|s| ["--shard", s.as_str()]))
        .arg("--redis")
        .arg(common::redis_url())
        .arg("--key-prefix")
        .arg(&prefix);
    let started = Instant::now();
    let out = run(&mut restore);
    assert!(out.status.success(), "point-in-time recovery failed");
    eprintln!("pitr: recovered to {target} in {:.2} s", started.elapsed().as_secs_f64());

    let first = player_id(&r_primary, "first_write");
    assert!(first.is_some(), "the write before the target time is missing");
    assert_eq!(player_id(&r_primary, "second_write"), None, "the write after the target time was recovered");
    // Fenced like a dump restore: the player's epoch is above the gap, and ids move on past the gap.
    let e = epochs(&r_shards);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[&first.unwrap()] > ID_GAP);
    assert!(scalar_i64(&r_primary, "SELECT last_value FROM players_id_seq") > ID_GAP);
    // The recovered cluster serves: a zone on it logs the recovered player in.
    let zone = start_zone(&r_primary, &r_shards, &prefix, &drill_zone(&tmp));
    let (ok, transcript) = play(&zone, "login first_write password123\nwait 0.2\nlogout\n");
    assert!(ok, "{transcript}");
    assert_eq!(zone.stop(), 0);
}

/// Now as RFC 3339 UTC with microseconds, from `date` (no time crate in the dependencies).
fn utc_now() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"]).output().unwrap();
    text(&out.stdout).trim().to_owned()
}

// ---- retention ---------------------------------------------------------------------------------------------------

/// Fake sets (a manifest is what makes a directory a complete set) at the given UTC times.
fn fake_sets(dest: &Path, names: &[String]) {
    for n in names {
        let d = dest.join("dumps").join(n);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("manifest.json"), "{\"format\": \"realm-backup/1\"}").unwrap();
    }
}

fn surviving(dest: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dest.join("dumps")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn prune(dest: &Path, now: &str) -> Output {
    run(Command::new(script("backup.sh")).arg("prune").arg("--dest").arg(dest).arg("--now").arg(now))
}

#[test]
fn retention_keeps_seven_dailies_four_weeklies_and_twelve_monthlies() {
    let dest_guard = TmpDir(std::env::temp_dir().join(common::unique("realm-retention")));
    let dest = dest_guard.0.clone();
    // A nightly set at 03:00 from 2025-01-01 to 2026-03-15, plus an earlier one on the last day.
    let out = Command::new("bash")
        .arg("-c")
        .arg("d=2025-01-01; while [[ $d < 2026-03-16 ]]; do date -u -d $d +%Y%m%dT030000Z; d=$(date -u -d \"$d + 1 day\" +%F); done")
        .output()
        .unwrap();
    let mut names: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(names.len(), 365 + 31 + 28 + 15);
    names.push("20260315T010000Z".into());
    fake_sets(&dest, &names);
    // A crashed run's leftovers are not a set: not counted, and kept until they are a day old.
    std::fs::create_dir_all(dest.join("dumps").join(".partial-20260315T040000Z")).unwrap();

    // 2026-03-15 is a Sunday: ISO weeks start on 03-09, 03-02, 02-23, 02-16.
    let out = prune(&dest, "2026-03-15T12:00:00Z");
    assert!(out.status.success());
    let mut want: Vec<String> = [
        // daily: the newest of each of the last 7 days (03-15's 03:00, not its 01:00)
        "20260309", "20260310", "20260311", "20260312", "20260313", "20260314", "20260315",
        // weekly: the newest of each of the last 4 ISO weeks (Sundays)
        "20260308", "20260301", "20260222", // monthly: the newest of each of the last 12 months
        "20260228", "20260131", "20251231", "20251130", "20251031", "20250930", "20250831", "20250731", "20250630",
        "20250531", "20250430",
    ]
    .iter()
    .map(|d| format!("{d}T030000Z"))
    .collect();
    want.push(".partial-20260315T040000Z".into());
    want.sort();
    assert_eq!(surviving(&dest), want);
    assert!(text(&out.stdout).contains("realm-backup kind=prune status=ok exit=0"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("kept=21 pruned=419"), "{}", text(&out.stdout));

    // Running it again the same day changes nothing.
    assert!(prune(&dest, "2026-03-15T23:59:59Z").status.success());
    assert_eq!(surviving(&dest), want);

    // Backups stopped long ago: everything is past every window, yet the newest set is never deleted.
    assert!(prune(&dest, "2028-01-01T00:00:00Z").status.success());
    assert_eq!(surviving(&dest), vec![".partial-20260315T040000Z".to_owned(), "20260315T030000Z".to_owned()]);
}
