//! Model checks of the MPSC queue. Each body is written once and run through `model`: under
//! `RUSTFLAGS="--cfg realm_loom"` (see `scripts/loom.sh`) loom explores its interleavings; without it the body runs
//! once as a plain test.

use std::sync::atomic::{AtomicBool as StdAtomicBool, AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::sync::Arc as StdArc;

use realm_loom_tests::queue::{channel, Consumer, Pop};
use realm_loom_tests::sync::{self, model, thread, AtomicUsize, Ordering};

/// Receives exactly `n` messages, retrying `Empty` (producers still running) and `Inconsistent` (mid-push).
/// Returns the messages and whether the mid-push window was observed.
fn recv_n<T>(rx: &mut Consumer<T>, n: usize) -> (Vec<T>, bool) {
    let mut got = Vec::with_capacity(n);
    let mut saw_inconsistent = false;
    while got.len() < n {
        match rx.pop() {
            Pop::Item(v) => got.push(v),
            Pop::Empty => sync::spin_loop(),
            Pop::Inconsistent => {
                saw_inconsistent = true;
                sync::spin_loop();
            }
        }
    }
    (got, saw_inconsistent)
}

/// Messages of each producer arrive in that producer's order, and nothing is lost or duplicated.
fn assert_per_producer_fifo(got: &[(usize, usize)], producers: usize, per_producer: usize) {
    assert_eq!(got.len(), producers * per_producer);
    for p in 0..producers {
        let seq: Vec<usize> = got.iter().filter(|(q, _)| *q == p).map(|(_, i)| *i).collect();
        assert_eq!(seq, (0..per_producer).collect::<Vec<_>>(), "producer {p}");
    }
}

/// Counts drops so a test can prove every value is dropped exactly once (a double drop overshoots).
struct Tracked(StdArc<StdAtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, StdOrdering::SeqCst);
    }
}

#[test]
fn single_producer_order_is_preserved() {
    model(|| {
        let (tx, mut rx) = channel();
        let producer = thread::spawn(move || {
            for i in 0..3usize {
                tx.push(i);
            }
        });
        let (got, _) = recv_n(&mut rx, 3);
        assert_eq!(got, vec![0, 1, 2]);
        producer.join().unwrap();
        assert_eq!(rx.pop(), Pop::Empty);
    });
}

fn producers_interleaved_with_consumer(producers: usize, per_producer: usize) {
    let (tx, mut rx) = channel();
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..per_producer {
                    tx.push((p, i));
                }
            })
        })
        .collect();
    drop(tx);
    let (got, _) = recv_n(&mut rx, producers * per_producer);
    assert_per_producer_fifo(&got, producers, per_producer);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(rx.pop(), Pop::Empty);
    assert_eq!(rx.producers(), 0);
}

#[test]
fn two_producers_interleaved_with_the_consumer() {
    model(|| producers_interleaved_with_consumer(2, 2));
}

#[test]
fn three_producers_interleaved_with_the_consumer() {
    model(|| producers_interleaved_with_consumer(3, 1));
}

#[test]
fn chain_is_delivered_contiguously_among_concurrent_pushes() {
    model(|| {
        let (tx, mut rx) = channel();
        let other = tx.clone();
        let chainer = thread::spawn(move || {
            let mut chain = tx.chain();
            for i in 0..3usize {
                chain.push((0usize, i));
            }
            tx.push_chain(chain);
        });
        let single = thread::spawn(move || other.push((1usize, 0usize)));
        let (got, _) = recv_n(&mut rx, 4);
        let start = got.iter().position(|m| m.0 == 0).unwrap();
        assert_eq!(&got[start..start + 3], &[(0, 0), (0, 1), (0, 2)], "chain split: {got:?}");
        assert!(got.contains(&(1, 0)));
        chainer.join().unwrap();
        single.join().unwrap();
        assert_eq!(rx.pop(), Pop::Empty);
    });
}

/// Set when some execution saw `Pop::Inconsistent`; loom must find that window.
static SAW_MID_PUSH: StdAtomicBool = StdAtomicBool::new(false);

#[test]
fn mid_push_window_is_reported_and_retrying_gets_the_message() {
    model(|| {
        let (tx, mut rx) = channel();
        let producer = thread::spawn(move || {
            tx.push(7u32);
            tx.push(8u32);
        });
        // Retrying on Inconsistent (never treating it as empty) delivers both, in order.
        let (got, saw) = recv_n(&mut rx, 2);
        assert_eq!(got, vec![7, 8]);
        if saw {
            SAW_MID_PUSH.store(true, StdOrdering::SeqCst);
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(), Pop::Empty, "after all pushes completed, never Inconsistent");
    });
    // Under loom every interleaving ran, including a pop inside the swap-to-link window.
    #[cfg(realm_loom)]
    assert!(SAW_MID_PUSH.load(StdOrdering::SeqCst), "loom never observed the mid-push window");
}

#[test]
fn drop_with_items_inside_drops_each_value_exactly_once() {
    model(|| {
        let drops = StdArc::new(StdAtomicUsize::new(0));
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        let d1 = drops.clone();
        let p1 = thread::spawn(move || {
            tx.push(Tracked(d1.clone()));
            tx.push(Tracked(d1));
        });
        let d2 = drops.clone();
        let p2 = thread::spawn(move || {
            let mut chain = tx2.chain();
            chain.push(Tracked(d2.clone()));
            chain.push(Tracked(d2));
            tx2.push_chain(chain);
        });
        // Pop one message (if any is readable yet), then drop the consumer while producers may still be mid-push.
        if let Pop::Item(v) = rx.pop() {
            drop(v);
        }
        drop(rx);
        p1.join().unwrap();
        p2.join().unwrap();
        // The last handle (a producer, on its thread) freed the channel: all four values dropped once.
        assert_eq!(drops.load(StdOrdering::SeqCst), 4);
    });
}

#[test]
fn dropping_the_producers_last_drops_whatever_the_consumer_left() {
    model(|| {
        let drops = StdArc::new(StdAtomicUsize::new(0));
        let (tx, mut rx) = channel();
        let d = drops.clone();
        let p = thread::spawn(move || {
            tx.push(Tracked(d.clone()));
            tx.push(Tracked(d));
            // `tx` dropped here, maybe before, maybe after the consumer.
        });
        let consumer = thread::spawn(move || {
            if let Pop::Item(v) = rx.pop() {
                drop(v);
            }
        });
        p.join().unwrap();
        consumer.join().unwrap();
        assert_eq!(drops.load(StdOrdering::SeqCst), 2);
    });
}

#[test]
fn nodes_are_recycled_between_pushes() {
    // One message in flight at a time (a credit of 1): the pool never grows after its first slab. Under loom a
    // slab holds a single node, so every push after the first must reuse the node the consumer returned.
    model(|| {
        let (tx, mut rx) = channel();
        let acked = sync::Arc::new(AtomicUsize::new(0));
        let acked2 = acked.clone();
        let producer = thread::spawn(move || {
            let mut capacities = Vec::new();
            for round in 0..3usize {
                while acked2.load(Ordering::Acquire) < round {
                    sync::spin_loop();
                }
                tx.push(round);
                capacities.push(tx.pool_capacity());
            }
            capacities
        });
        for round in 0..3usize {
            let (got, _) = recv_n(&mut rx, 1);
            assert_eq!(got, vec![round]);
            // Empty flushes the consumer's pending returns back to the producer's pool.
            assert_eq!(rx.pop(), Pop::Empty);
            acked.store(round + 1, Ordering::Release);
        }
        let capacities = producer.join().unwrap();
        assert!(capacities.iter().all(|&c| c == capacities[0]), "the pool grew: {capacities:?}");
        #[cfg(realm_loom)]
        assert_eq!(capacities[0], 1);
    });
}

#[test]
fn dropped_producer_pool_is_adopted_while_its_nodes_come_back() {
    model(|| {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        let first = thread::spawn(move || {
            tx2.push(1usize);
            // tx2 dropped: its pool is parked, its node is still in the queue.
        });
        let second = thread::spawn(move || {
            // May adopt the parked pool (while the consumer returns a node into it) or make a new one.
            let tx3 = tx.clone();
            drop(tx);
            tx3.push(2usize);
        });
        let (mut got, _) = recv_n(&mut rx, 2);
        assert_eq!(rx.pop(), Pop::Empty);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
        first.join().unwrap();
        second.join().unwrap();
        assert_eq!(rx.producers(), 0);
    });
}
