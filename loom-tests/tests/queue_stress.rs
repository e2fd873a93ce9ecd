//! Plain multi-threaded stress tests of the MPSC queue (real threads, real memory model, many interleavings by
//! volume rather than by enumeration). Not built under `--cfg realm_loom`.
#![cfg(not(realm_loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use realm_loom_tests::queue::{channel, Pop};

const PRODUCERS: usize = 4;
const PER_PRODUCER: usize = 100_000;

/// Drains exactly `n` messages, checking per-producer FIFO order; returns how often `Inconsistent` was seen.
fn drain_checking_order(
    rx: &mut realm_loom_tests::queue::Consumer<(usize, usize)>,
    producers: usize,
    n: usize,
) -> usize {
    let mut next = vec![0usize; producers];
    let mut received = 0;
    let mut inconsistent = 0;
    while received < n {
        match rx.pop() {
            Pop::Item((p, i)) => {
                assert_eq!(i, next[p], "producer {p} out of order");
                next[p] += 1;
                received += 1;
            }
            Pop::Empty => std::hint::spin_loop(),
            Pop::Inconsistent => {
                inconsistent += 1;
                std::hint::spin_loop();
            }
        }
    }
    assert!(next.iter().all(|&c| c == n / producers));
    inconsistent
}

#[test]
fn four_producers_per_message_push_keep_per_producer_order() {
    let (tx, mut rx) = channel();
    let handles: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    tx.push((p, i));
                }
            })
        })
        .collect();
    drop(tx);
    let inconsistent = drain_checking_order(&mut rx, PRODUCERS, PRODUCERS * PER_PRODUCER);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(rx.pop(), Pop::Empty);
    assert_eq!(rx.approx_len(), 0);
    eprintln!("inconsistent pops observed: {inconsistent}");
}

#[test]
fn four_producers_mixing_chains_and_single_pushes() {
    let (tx, mut rx) = channel();
    let handles: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut i = 0;
                while i < PER_PRODUCER {
                    // Chains of 1..=16 (varying), then one single push.
                    let len = (i % 16 + 1).min(PER_PRODUCER - i);
                    let mut chain = tx.chain();
                    for _ in 0..len {
                        chain.push((p, i));
                        i += 1;
                    }
                    tx.push_chain(chain);
                    if i < PER_PRODUCER {
                        tx.push((p, i));
                        i += 1;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    drain_checking_order(&mut rx, PRODUCERS, PRODUCERS * PER_PRODUCER);
    for h in handles {
        h.join().unwrap();
    }
}

struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn consumer_dropped_mid_stream_every_value_dropped_once() {
    for _ in 0..20 {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = channel();
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let tx = tx.clone();
                let drops = drops.clone();
                thread::spawn(move || {
                    for _ in 0..10_000 {
                        tx.push(Tracked(drops.clone()));
                    }
                })
            })
            .collect();
        drop(tx);
        let mut taken = 0;
        while taken < 5_000 {
            if let Pop::Item(v) = rx.pop() {
                drop(v);
                taken += 1;
            }
        }
        drop(rx); // producers are still pushing
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(drops.load(Ordering::Relaxed), PRODUCERS * 10_000);
    }
}

#[test]
fn producer_churn_adopts_parked_pools_instead_of_growing() {
    // Producers come and go (as workers do). A dropped handle parks its pool, and the next clone adopts it with
    // its nodes, so memory is bounded by the peak number of concurrent producers, not by the number ever created.
    let (tx, mut rx) = channel::<usize>();
    let mut capacities = Vec::new();
    for round in 0..200 {
        // Both handles exist before either thread runs, so each round really has two pools in use.
        let producers: Vec<_> = (0..2).map(|_| tx.clone()).collect();
        if round > 0 {
            for p in &producers {
                assert!(p.pool_capacity() > 0, "round {round}: a fresh pool instead of a parked one");
            }
        }
        let handles: Vec<_> = producers
            .into_iter()
            .map(|tx| {
                thread::spawn(move || {
                    for i in 0..100 {
                        tx.push(i);
                    }
                    tx.pool_capacity()
                })
            })
            .collect();
        let mut received = 0;
        while received < 200 {
            match rx.pop() {
                Pop::Item(_) => received += 1,
                _ => std::hint::spin_loop(),
            }
        }
        for h in handles {
            capacities.push(h.join().unwrap());
        }
        assert_eq!(rx.pop(), Pop::Empty);
    }
    // 100 in flight plus at most 31 pending returns always fit in the first slab: no pool ever grew.
    assert!(capacities.iter().all(|&c| c == capacities[0]), "a pool grew: {capacities:?}");
}
