//! Logins per second with argon2id at the OWASP parameters (m = 19 MiB, t = 2, p = 1) on this machine: the
//! server's `PasswordHasher::verify` (the work of one login) on 1 and 2 threads, and what the login lane's cap
//! (`security.max_concurrent_hashes`, default 2) allows. Run: `cargo bench --bench argon2`.

use std::sync::Arc;
use std::time::Instant;

use realm::account::password::PasswordHasher;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rss_start = rss_kib();
    let n: usize = std::env::var("REALM_ARGON2_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let hasher = Arc::new(PasswordHasher::new(2).expect("argon2 parameters"));
    let stored = hasher.hash("correct horse battery staple").expect("hash");
    println!("argon2id m=19456 KiB, t=2, p=1 ({stored:.30}...)");
    println!("| threads | logins | seconds | logins/s | ms per login |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let mut rows = Vec::new();
    for threads in [1usize, 2] {
        let start = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (h, s) = (Arc::clone(&hasher), stored.clone());
                std::thread::spawn(move || {
                    for _ in 0..n / threads {
                        assert!(h.verify("correct horse battery staple", Some(&s)).unwrap());
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        let secs = start.elapsed().as_secs_f64();
        let done = (n / threads) * threads;
        println!(
            "| {threads} | {done} | {secs:.2} | {:.1} | {:.1} |",
            done as f64 / secs,
            secs * 1e3 / done as f64 * threads as f64
        );
        rows.push(serde_json::json!({"threads": threads, "logins_per_sec": done as f64 / secs}));
    }
    println!(
        "RSS {} KiB before, {} KiB after {} hashes (argon2 works in 19 MiB per hash)",
        rss_start,
        rss_kib(),
        n + 1
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("argon2.json"), serde_json::to_string(&rows).unwrap_or_default());
}
