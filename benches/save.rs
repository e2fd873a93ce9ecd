//! Save wave benchmark (issue 6): 10,000 dirty players saved with ONE fenced batched statement
//! (`save_players_batch`: `UPDATE ... FROM unnest(arrays) ... WHERE owner_epoch = v.owner_epoch RETURNING`) versus
//! one fenced statement per player (`save_player`, autocommit, what a naive save loop does), on the same pool and
//! connection, against the real PostgreSQL primary in a scratch schema. Also reports per-row statements inside one
//! transaction, to separate the commit cost from the round-trip cost.
//!
//! Run: `cargo bench --bench save` (services from `eval "$(scripts/services.sh)"`; default URL
//! `postgres://postgres@127.0.0.1:5432/realm_test`). `REALM_SAVE_BENCH_ROWS` (default 10000) and
//! `REALM_SAVE_BENCH_ROUNDS` (default 3) tune it. Results: stdout and `target/bench-results/save.json`.
//! Target (DESIGN.md section 11): batched >= 10x the rows/s of per-row saves.

use std::time::{Duration, Instant};

use realm::db::ops::{save_batch, save_one, PlayerSave};
use realm::db::testing::ScratchSchema;
use realm::db::{Database, DbOptions};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn saves(rows: usize, round: usize) -> Vec<PlayerSave> {
    (1..=rows as u64)
        .map(|id| PlayerSave {
            player_id: id,
            owner_epoch: 1,
            zone: "bench-zone".into(),
            pos_x: (id % 1000) as f32 + round as f32,
            pos_y: (id % 777) as f32,
            level: 1 + round as i32,
            experience: (id as i64) * 10 + round as i64,
            health: 100 - (round as i32 % 50),
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rows = env_or("REALM_SAVE_BENCH_ROWS", 10_000);
    let rounds = env_or("REALM_SAVE_BENCH_ROUNDS", 3).max(1);
    let url = std::env::var("REALM_TEST_PG_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/realm_test".into());
    let schema = ScratchSchema::create(&format!("bench_save_{}", std::process::id()), &url, &[], &[])?;
    let mut config = schema.config();
    config.database.pool_size = 2;
    let db = Database::connect_with(&config, DbOptions { statement_timeout: None, ..DbOptions::default() })?;

    let mut conn = db.shard(0)?;
    conn.client().batch_execute(&format!(
        "INSERT INTO player_progress (player_id, zone, health, owner_epoch, owner_zone) \
         SELECT g, 'bench-zone', 100, 1, 'bench' FROM generate_series(1, {rows}) g; ANALYZE player_progress;"
    ))?;

    let (mut per_row, mut per_row_tx, mut batched) = (Vec::new(), Vec::new(), Vec::new());
    let mut round = 0;
    for _ in 0..rounds {
        // Interleaved so background noise (other builds on the machine) hits every mode alike.
        round += 1;
        let s = saves(rows, round);
        let t = Instant::now();
        for p in &s {
            save_one(&mut conn, p)?;
        }
        per_row.push(rows as f64 / t.elapsed().as_secs_f64());

        round += 1;
        let s = saves(rows, round);
        let t = Instant::now();
        conn.client().batch_execute("BEGIN")?;
        for p in &s {
            save_one(&mut conn, p)?;
        }
        conn.client().batch_execute("COMMIT")?;
        per_row_tx.push(rows as f64 / t.elapsed().as_secs_f64());

        round += 1;
        let s = saves(rows, round);
        let t = Instant::now();
        let saved = save_batch(&mut conn, &s)?;
        let took = t.elapsed();
        assert_eq!(saved.len(), rows, "every player must be saved by the batch");
        batched.push(rows as f64 / took.as_secs_f64());
    }
    // The last batch really wrote: level = 1 + last round for every row.
    let check =
        conn.client().query_one("SELECT count(*) FROM player_progress WHERE level = $1", &[&(1 + round as i32)])?;
    let written: i64 = check.get(0);
    assert_eq!(written as usize, rows, "batched save did not write every row");
    drop(conn);

    let (pr, prt, b) = (median(per_row), median(per_row_tx), median(batched));
    let ratio = b / pr;
    let pass = ratio >= 10.0;
    println!("save wave: {rows} players, {rounds} rounds (median)");
    println!("  per-row fenced UPDATE, autocommit     {pr:>12.0} rows/s");
    println!("  per-row fenced UPDATE, one transaction {prt:>11.0} rows/s");
    println!("  batched fenced UPDATE FROM unnest      {b:>11.0} rows/s");
    println!("  ratio batched / per-row: {ratio:.1}x (target >= 10x: {})", if pass { "PASS" } else { "FAIL" });
    println!("  ratio batched / per-row in one transaction: {:.1}x", b / prt);

    let json = serde_json::json!({
        "bench": "save",
        "rows": rows,
        "rounds": rounds,
        "per_row_autocommit_rows_per_s": pr,
        "per_row_one_tx_rows_per_s": prt,
        "batched_rows_per_s": b,
        "ratio": ratio,
        "ratio_vs_one_tx": b / prt,
        "target_ratio": 10.0,
        "pass": pass,
        "batch_time_ms": Duration::from_secs_f64(rows as f64 / b).as_secs_f64() * 1000.0,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("save.json"), serde_json::to_string_pretty(&json)?)?;
    println!("  wrote {}", dir.join("save.json").display());
    Ok(())
}
