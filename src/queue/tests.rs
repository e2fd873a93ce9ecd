//! Unit tests of the queue (single-threaded behaviour and deterministic windows). Concurrency is covered by
//! `loom-tests/` (model-checked, and the same bodies as plain tests) and by its stress tests.

use super::*;
use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::sync::Arc as StdArc;

/// Counts drops, to prove every value is dropped exactly once.
struct Tracked(StdArc<StdAtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn drops() -> StdArc<StdAtomicUsize> {
    StdArc::new(StdAtomicUsize::new(0))
}

#[test]
fn single_producer_messages_arrive_in_order() {
    let (tx, mut rx) = channel();
    assert_eq!(rx.pop(), Pop::Empty);
    for i in 0..1000u32 {
        tx.push(i);
    }
    for i in 0..1000u32 {
        assert_eq!(rx.pop(), Pop::Item(i));
    }
    assert_eq!(rx.pop(), Pop::Empty);
}

#[test]
fn mid_push_is_reported_as_inconsistent_not_empty() {
    let (tx, mut rx) = channel();
    tx.push(1u64);
    tx.push(2u64);
    let node = tx.take_node();
    // SAFETY: the node is ours; we hold the mid-push window open, then close it exactly once.
    unsafe {
        node.as_ref().value.with_mut(|v| (*v).write(3));
        let prev = tx.shared.queue.claim_tail(node);
        assert_eq!(rx.pop(), Pop::Item(1), "messages before the window are readable");
        // Message 2 is the node being linked to: it cannot be handed out until its `next` is written.
        assert_eq!(rx.pop(), Pop::Inconsistent);
        assert_eq!(rx.pop(), Pop::Inconsistent, "still inconsistent, never Empty");
        RawQueue::link(prev, node);
    }
    assert_eq!(rx.pop(), Pop::Item(2));
    assert_eq!(rx.pop(), Pop::Item(3));
    assert_eq!(rx.pop(), Pop::Empty);
}

#[test]
fn mid_push_behind_the_stub_is_inconsistent() {
    // The consumer's cursor is on the stub (queue drained), then a producer claims the tail.
    let (tx, mut rx) = channel();
    tx.push(1u64);
    assert_eq!(rx.pop(), Pop::Item(1));
    assert_eq!(rx.pop(), Pop::Empty);
    let node = tx.take_node();
    // SAFETY: as in the previous test.
    unsafe {
        node.as_ref().value.with_mut(|v| (*v).write(2));
        let prev = tx.shared.queue.claim_tail(node);
        assert_eq!(rx.pop(), Pop::Inconsistent);
        RawQueue::link(prev, node);
    }
    assert_eq!(rx.pop_spin(), Some(2));
    assert_eq!(rx.pop_spin(), None);
}

#[test]
fn chain_is_published_contiguously_and_in_order() {
    let (tx, mut rx) = channel();
    let other = tx.clone();
    tx.push(0u32);
    let mut chain = tx.chain();
    for i in 1..=16 {
        chain.push(i);
    }
    assert_eq!(chain.len(), 16);
    assert_eq!(rx.pop(), Pop::Item(0));
    assert_eq!(rx.pop(), Pop::Empty, "an unpublished chain is invisible");
    other.push(100);
    tx.push_chain(chain);
    other.push(101);
    let mut got = Vec::new();
    while let Some(v) = rx.pop_spin() {
        got.push(v);
    }
    let mut expected = vec![100];
    expected.extend(1..=16);
    expected.push(101);
    assert_eq!(got, expected);
}

#[test]
fn empty_chain_is_a_no_op() {
    let (tx, mut rx) = channel::<u8>();
    let chain = tx.chain();
    assert!(chain.is_empty());
    tx.push_chain(chain);
    assert_eq!(rx.pop(), Pop::Empty);
}

#[test]
#[should_panic(expected = "another producer")]
fn chain_from_another_producer_is_rejected() {
    let (tx, _rx) = channel::<u8>();
    let other = tx.clone();
    let mut chain = other.chain();
    chain.push(1);
    tx.push_chain(chain);
}

#[test]
fn dropped_chain_drops_its_values_and_recycles_nodes() {
    let counter = drops();
    let (tx, mut rx) = channel();
    {
        let mut chain = tx.chain();
        for _ in 0..5 {
            chain.push(Tracked(counter.clone()));
        }
    }
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert!(matches!(rx.pop(), Pop::Empty));
    let capacity = tx.pool_capacity();
    for _ in 0..5 {
        tx.push(Tracked(counter.clone()));
    }
    assert_eq!(tx.pool_capacity(), capacity, "the chain's nodes were reused");
    drop(rx);
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 10);
}

#[test]
fn values_left_in_the_queue_are_dropped_exactly_once() {
    let counter = drops();
    let (tx, mut rx) = channel();
    let tx2 = tx.clone();
    for _ in 0..100 {
        tx.push(Tracked(counter.clone()));
        tx2.push(Tracked(counter.clone()));
    }
    for _ in 0..50 {
        assert!(matches!(rx.pop(), Pop::Item(_)));
    }
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 50);
    // Producers outlive the consumer: its Drop drops what it can read.
    drop(rx);
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 200);
    drop(tx);
    drop(tx2);
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 200);
}

#[test]
fn values_pushed_after_the_consumer_is_gone_are_dropped_with_the_channel() {
    let counter = drops();
    let (tx, rx) = channel();
    assert!(!tx.is_closed());
    drop(rx);
    assert!(tx.is_closed());
    tx.push(Tracked(counter.clone()));
    tx.push(Tracked(counter.clone()));
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 0);
    drop(tx);
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn steady_state_reuses_nodes() {
    let (tx, mut rx) = channel();
    for round in 0..1000u64 {
        for i in 0..10 {
            tx.push(round * 10 + i);
        }
        for i in 0..10 {
            assert_eq!(rx.pop(), Pop::Item(round * 10 + i));
        }
        assert_eq!(rx.pop(), Pop::Empty); // flushes the pending returns
        assert_eq!(tx.pool_capacity(), Slab::<u64>::NODES, "round {round} allocated");
    }
}

#[test]
fn pool_grows_with_messages_in_flight_then_stays_flat() {
    let (tx, mut rx) = channel();
    for i in 0..10_000u64 {
        tx.push(i);
    }
    let capacity = tx.pool_capacity();
    assert!(capacity >= 10_000);
    for _ in 0..3 {
        assert_eq!(rx.pop_batch(usize::MAX, drop), 10_000);
        for i in 0..10_000u64 {
            tx.push(i);
        }
    }
    assert_eq!(tx.pool_capacity(), capacity);
}

#[test]
fn dropped_producer_pool_is_adopted_by_the_next_clone() {
    let (tx, mut rx) = channel();
    let tx2 = tx.clone();
    for i in 0..100u32 {
        tx2.push(i);
    }
    let capacity = tx2.pool_capacity();
    assert_eq!(rx.producers(), 2);
    drop(tx2);
    assert_eq!(rx.producers(), 1);
    // Its messages are still delivered after the handle is gone, and their nodes go back to the parked pool.
    assert_eq!(rx.pop_batch(usize::MAX, drop), 100);
    let tx3 = tx.clone();
    assert_eq!(tx3.pool_capacity(), capacity, "adopted, not a fresh pool");
    for i in 0..100u32 {
        tx3.push(i);
    }
    assert_eq!(tx3.pool_capacity(), capacity, "the adopted nodes were reused");
}

#[test]
fn approx_len_tracks_pushes_and_pops() {
    let (tx, mut rx) = channel();
    let tx2 = tx.clone();
    assert_eq!(rx.approx_len(), 0);
    tx.push(1u8);
    tx2.push_iter([2, 3, 4], 2);
    assert_eq!(rx.approx_len(), 4);
    assert_eq!(rx.pop(), Pop::Item(1));
    assert_eq!(rx.approx_len(), 3);
    assert_eq!(rx.pop_batch(10, drop), 3);
    assert_eq!(rx.approx_len(), 0);
}

#[test]
fn pop_batch_stops_at_max() {
    let (tx, mut rx) = channel();
    tx.push_iter(0..10u32, 4);
    let mut got = Vec::new();
    assert_eq!(rx.pop_batch(7, |v| got.push(v)), 7);
    assert_eq!(got, (0..7).collect::<Vec<_>>());
    assert_eq!(rx.pop_batch(7, |v| got.push(v)), 3);
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn one_word_messages_travel_in_sixteen_byte_nodes() {
    assert_eq!(core::mem::size_of::<Node<u64>>(), 16);
    assert_eq!(Slab::<u64>::BYTES, 64 * 1024);
    assert_eq!(Slab::<u64>::NODES, (64 * 1024 - 128) / 16);
}

#[test]
fn large_messages_still_get_a_useful_slab() {
    let (mtu_sized, huge) = (Slab::<[u8; 1500]>::NODES, Slab::<[u8; 100_000]>::NODES);
    assert!(mtu_sized >= 32, "{mtu_sized}");
    assert!(huge >= 32, "{huge}");
}

#[test]
fn handles_are_send_and_producer_is_clone() {
    fn is_send<S: Send>() {}
    fn is_clone<C: Clone>() {}
    is_send::<Producer<Vec<u8>>>();
    is_send::<Consumer<Vec<u8>>>();
    is_clone::<Producer<Vec<u8>>>();
}
