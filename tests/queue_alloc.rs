//! Proves the queue's steady state allocates nothing, and that dropping a channel frees every byte it allocated.
//!
//! A counting `#[global_allocator]` counts only on threads that opted in (a thread-local flag), so the test harness
//! and other tests running in parallel do not pollute the figures; tests here are serialised by `SERIAL`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use realm::queue::{channel, Pop, Producer};

struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

fn set_counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

// SAFETY: forwards every call to `System` unchanged; the bookkeeping only touches atomics and a const-initialised
// thread-local (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const WARM_UP: u64 = 100_000;
const MEASURED: u64 = 100_000;
/// Messages a producer may have in flight (the per-session inbound credits of the io layer).
const CREDITS: u64 = 256;

/// `producers` threads push `WARM_UP + MEASURED` messages each (per message, or in chains of `chain`), never more
/// than `CREDITS` in flight; the consumer pops them. Allocations are counted on every producer thread and on the
/// consumer during the last `MEASURED` messages of each producer. Returns that count.
fn allocations_in_steady_state(producers: usize, chain: usize) -> usize {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCATIONS.store(0, Ordering::SeqCst);
    let (tx, mut rx) = channel::<u64>();
    let per = WARM_UP + MEASURED;
    let consumed: Arc<Vec<AtomicUsize>> = Arc::new((0..producers).map(|_| AtomicUsize::new(0)).collect());
    // Every producer fills its credits once before the consumer starts, so the pools reach their peak size during
    // warm-up whatever the scheduling (otherwise a first-ever full credit window inside the measured window
    // would legitimately grow a pool).
    let prefilled = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let tx: Producer<u64> = tx.clone();
            let consumed = consumed.clone();
            let prefilled = prefilled.clone();
            thread::spawn(move || {
                let mut sent = 0u64;
                let mut capacity_at_start = 0;
                while sent < per {
                    if sent >= WARM_UP && !counting() {
                        capacity_at_start = tx.pool_capacity();
                        set_counting(true);
                    }
                    // Wait for credits.
                    while sent - consumed[p].load(Ordering::Acquire) as u64 + chain as u64 > CREDITS {
                        std::hint::spin_loop();
                    }
                    if chain == 1 {
                        tx.push(((p as u64) << 32) | sent);
                    } else {
                        let mut c = tx.chain();
                        for i in 0..chain as u64 {
                            c.push(((p as u64) << 32) | (sent + i));
                        }
                        tx.push_chain(c);
                    }
                    sent += chain as u64;
                    if sent + chain as u64 > CREDITS && sent <= CREDITS {
                        prefilled.fetch_add(1, Ordering::Release);
                    }
                }
                set_counting(false);
                assert_eq!(tx.pool_capacity(), capacity_at_start, "the pool grew while measuring");
            })
        })
        .collect();
    drop(tx);
    while prefilled.load(Ordering::Acquire) < producers {
        std::hint::spin_loop();
    }
    let mut next = vec![0u64; producers];
    let mut received = 0u64;
    while received < per * producers as u64 {
        if !counting() && next.iter().all(|&n| n >= WARM_UP) {
            set_counting(true);
        }
        match rx.pop() {
            Pop::Item(v) => {
                let (p, seq) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(seq, next[p], "order");
                next[p] += 1;
                received += 1;
                consumed[p].store(next[p] as usize, Ordering::Release);
            }
            Pop::Empty | Pop::Inconsistent => std::hint::spin_loop(),
        }
    }
    set_counting(false);
    for h in handles {
        h.join().expect("producer failed");
    }
    ALLOCATIONS.load(Ordering::SeqCst)
}

#[test]
fn steady_state_push_allocates_nothing_with_one_producer() {
    assert_eq!(allocations_in_steady_state(1, 1), 0);
}

#[test]
fn steady_state_push_allocates_nothing_with_two_producers() {
    assert_eq!(allocations_in_steady_state(2, 1), 0);
}

#[test]
fn steady_state_chain_push_allocates_nothing() {
    assert_eq!(allocations_in_steady_state(2, 16), 0);
}

#[test]
fn the_counter_sees_allocations_on_counted_threads() {
    // Guards the test itself: were counting broken, the zero results above would mean nothing.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCATIONS.store(0, Ordering::SeqCst);
    set_counting(true);
    let (tx, mut rx) = channel::<u64>();
    tx.push(1); // first push on a fresh pool allocates its first slab
    set_counting(false);
    assert!(matches!(rx.pop(), Pop::Item(1)));
    assert!(ALLOCATIONS.load(Ordering::SeqCst) >= 2, "channel + slab allocations were not counted");
}

#[test]
fn dropping_the_channel_frees_every_byte() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    set_counting(true);
    {
        let (tx, mut rx) = channel::<Box<u64>>();
        let tx2 = tx.clone();
        for i in 0..5_000 {
            tx.push(Box::new(i));
            tx2.push(Box::new(i));
        }
        let mut chain = tx2.chain();
        for i in 0..100 {
            chain.push(Box::new(i));
        }
        tx2.push_chain(chain);
        let mut unpublished = tx.chain();
        unpublished.push(Box::new(7));
        drop(unpublished);
        for _ in 0..3_000 {
            assert!(matches!(rx.pop(), Pop::Item(_)));
        }
        drop(tx2); // parked pool, adopted below
        let tx3 = tx.clone();
        tx3.push(Box::new(1));
        // The consumer goes first, then the producers: values left in the queue die with the channel.
        drop(rx);
        drop(tx3);
        drop(tx);
    }
    set_counting(false);
    assert_eq!(LIVE_BYTES.load(Ordering::SeqCst) - before, 0, "bytes leaked");
}
