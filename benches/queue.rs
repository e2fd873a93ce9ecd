//! MPSC queue throughput: Realm's Vyukov queue vs crossbeam-channel unbounded vs std::sync::mpsc, in one process.
//!
//! 1, 2 and 4 producers, one consumer, `QUEUE_BENCH_MESSAGES` (default 5,000,000) one-word messages in total,
//! split evenly between producers. Each configuration runs `QUEUE_BENCH_RUNS` (default 5) times on a fresh channel;
//! runs are interleaved round-robin across variants and the median is reported. Ours is measured with per-message
//! `push` and with 16-message `push_chain`. Crossbeam is measured with a blocking `recv()` consumer and with a
//! `try_recv()` + backoff consumer (the same polling style as ours); the ratio uses the better of the two. Writes target/bench-results/queue.json.
//!
//! Run: `cargo bench --bench queue` (smoke: `QUEUE_BENCH_MESSAGES=200000 QUEUE_BENCH_RUNS=1 cargo bench --bench queue`
//! or `cargo bench --bench queue -- --messages 200000`).

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;
use realm::queue::{channel, Pop};

const CHAIN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    OursPush,
    OursChain16,
    CrossbeamRecv,
    CrossbeamTryRecv,
    StdMpsc,
}

impl Variant {
    const ALL: [Variant; 5] =
        [Variant::OursPush, Variant::OursChain16, Variant::CrossbeamRecv, Variant::CrossbeamTryRecv, Variant::StdMpsc];

    fn name(self) -> &'static str {
        match self {
            Variant::OursPush => "realm push",
            Variant::OursChain16 => "realm push_chain(16)",
            Variant::CrossbeamRecv => "crossbeam unbounded (recv)",
            Variant::CrossbeamTryRecv => "crossbeam unbounded (try_recv)",
            Variant::StdMpsc => "std::sync::mpsc",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::OursPush => "realm_push",
            Variant::OursChain16 => "realm_chain16",
            Variant::CrossbeamRecv => "crossbeam_recv",
            Variant::CrossbeamTryRecv => "crossbeam_try_recv",
            Variant::StdMpsc => "std_mpsc",
        }
    }
}

/// Spawns `producers` threads running `produce(thread_index, count)` after a common start barrier, runs `consume`
/// on the calling thread, and returns the elapsed time from the barrier to the last message received.
fn timed<P, C>(producers: usize, produce: P, consume: C) -> Duration
where
    P: Fn(usize) -> Box<dyn FnOnce() + Send>,
    C: FnOnce() -> u64,
{
    let barrier = Arc::new(Barrier::new(producers + 1));
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let work = produce(p);
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                work();
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let checksum = consume();
    let elapsed = start.elapsed();
    for h in handles {
        h.join().expect("producer panicked");
    }
    std::hint::black_box(checksum);
    elapsed
}

fn run_once(variant: Variant, producers: usize, total: usize) -> Duration {
    let per = total / producers;
    let total = per * producers;
    let expected: u64 = producers as u64 * (per as u64 * (per as u64 - 1) / 2);
    match variant {
        Variant::OursPush | Variant::OursChain16 => {
            let (tx, mut rx) = channel::<u64>();
            let elapsed = timed(
                producers,
                |_| {
                    let tx = tx.clone();
                    Box::new(move || {
                        if variant == Variant::OursPush {
                            for i in 0..per as u64 {
                                tx.push(i);
                            }
                        } else {
                            tx.push_iter(0..per as u64, CHAIN);
                        }
                    })
                },
                || {
                    let mut sum = 0u64;
                    let mut received = 0;
                    let backoff = Backoff::new();
                    while received < total {
                        match rx.pop() {
                            Pop::Item(v) => {
                                sum = sum.wrapping_add(v);
                                received += 1;
                                backoff.reset();
                            }
                            Pop::Empty | Pop::Inconsistent => backoff.snooze(),
                        }
                    }
                    assert_eq!(sum, expected, "lost or duplicated messages");
                    sum
                },
            );
            drop(tx);
            elapsed
        }
        Variant::CrossbeamRecv | Variant::CrossbeamTryRecv => {
            let (tx, rx) = crossbeam_channel::unbounded::<u64>();
            timed(
                producers,
                |_| {
                    let tx = tx.clone();
                    Box::new(move || {
                        for i in 0..per as u64 {
                            tx.send(i).expect("receiver alive");
                        }
                    })
                },
                || {
                    let mut sum = 0u64;
                    if variant == Variant::CrossbeamRecv {
                        for _ in 0..total {
                            sum = sum.wrapping_add(rx.recv().expect("senders alive"));
                        }
                    } else {
                        let mut received = 0;
                        let backoff = Backoff::new();
                        while received < total {
                            match rx.try_recv() {
                                Ok(v) => {
                                    sum = sum.wrapping_add(v);
                                    received += 1;
                                    backoff.reset();
                                }
                                Err(_) => backoff.snooze(),
                            }
                        }
                    }
                    assert_eq!(sum, expected, "lost or duplicated messages");
                    sum
                },
            )
        }
        Variant::StdMpsc => {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            timed(
                producers,
                |_| {
                    let tx = tx.clone();
                    Box::new(move || {
                        for i in 0..per as u64 {
                            tx.send(i).expect("receiver alive");
                        }
                    })
                },
                || {
                    let mut sum = 0u64;
                    for _ in 0..total {
                        sum = sum.wrapping_add(rx.recv().expect("senders alive"));
                    }
                    assert_eq!(sum, expected, "lost or duplicated messages");
                    sum
                },
            )
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn arg_or_env(flag: &str, env: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == flag) {
        if let Some(v) = args.get(i + 1).and_then(|v| v.replace('_', "").parse().ok()) {
            return v;
        }
    }
    std::env::var(env).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn main() {
    let total = arg_or_env("--messages", "QUEUE_BENCH_MESSAGES", 5_000_000).max(1_000);
    let runs = arg_or_env("--runs", "QUEUE_BENCH_RUNS", 5).max(1);
    println!("MPSC queue bench: {total} u64 messages per run, median of {runs} runs, 1 consumer");

    // Optional filters for investigations (the table and JSON need every variant, so they are skipped then).
    let only: Option<Vec<String>> =
        std::env::var("QUEUE_BENCH_ONLY").ok().map(|v| v.split(',').map(str::to_owned).collect());
    let producer_counts: Vec<usize> = std::env::var("QUEUE_BENCH_PRODUCERS")
        .ok()
        .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4]);

    let mut rows = Vec::new();
    for &producers in &producer_counts {
        let mut medians = std::collections::BTreeMap::new();
        let variants: Vec<Variant> = Variant::ALL
            .into_iter()
            .filter(|v| match &only {
                None => true,
                Some(o) => o.iter().any(|k| k == v.key()),
            })
            .collect();
        // Warm-up run of each (page faults, allocator arenas, CPU frequency), not recorded.
        for &variant in &variants {
            run_once(variant, producers, (total / 10).max(1_000));
        }
        // Runs are interleaved round-robin across variants, so load from other processes on this shared machine
        // hits every variant alike instead of whichever happened to run during a busy spell.
        let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); variants.len()];
        for _ in 0..runs {
            for (k, &variant) in variants.iter().enumerate() {
                let elapsed = run_once(variant, producers, total);
                rates[k].push(total as f64 / elapsed.as_secs_f64());
            }
        }
        for (k, &variant) in variants.iter().enumerate() {
            let m = median(rates[k].clone());
            println!(
                "  {producers}P {:<32} {:>8.2} M msg/s  (runs: {:?})",
                variant.name(),
                m / 1e6,
                rates[k].iter().map(|r| format!("{:.1}", r / 1e6)).collect::<Vec<_>>()
            );
            medians.insert(variant.key(), m);
        }
        rows.push((producers, medians));
    }

    if only.is_some() {
        return;
    }
    println!();
    println!(
        "| producers | realm push | realm chain16 | crossbeam recv | crossbeam try_recv | std mpsc | push / crossbeam | chain16 / crossbeam |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for (producers, m) in &rows {
        let cb = m["crossbeam_recv"].max(m["crossbeam_try_recv"]);
        let push_ratio = m["realm_push"] / cb;
        let chain_ratio = m["realm_chain16"] / cb;
        println!(
            "| {producers} | {:.2} M/s | {:.2} M/s | {:.2} M/s | {:.2} M/s | {:.2} M/s | {:.2}x | {:.2}x |",
            m["realm_push"] / 1e6,
            m["realm_chain16"] / 1e6,
            m["crossbeam_recv"] / 1e6,
            m["crossbeam_try_recv"] / 1e6,
            m["std_mpsc"] / 1e6,
            push_ratio,
            chain_ratio
        );
        json_rows.push(serde_json::json!({
            "producers": producers,
            "messages_per_second": m,
            "crossbeam_best": cb,
            "push_over_crossbeam": push_ratio,
            "chain16_over_crossbeam": chain_ratio,
        }));
    }

    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target_dir.join("bench-results");
    let json = serde_json::json!({
        "bench": "queue",
        "messages_per_run": total,
        "runs_per_config": runs,
        "statistic": "median",
        "chain_len": CHAIN,
        "results": json_rows,
    });
    match std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("queue.json"), serde_json::to_vec_pretty(&json).expect("json")))
    {
        Ok(()) => println!("\nwrote {}", dir.join("queue.json").display()),
        Err(e) => eprintln!("could not write {}: {e}", dir.display()),
    }
}
