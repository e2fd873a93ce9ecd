//! Ownership locks against the real Redis: the same contract as the embedded lock table, plus what only a
//! shared server can show (two independent lock managers, as two zone processes would have).

mod common;

use std::sync::Arc;
use std::time::Duration;

use realm::account::OwnershipLocks;
use realm::lock::RedisLocks;

fn locks(prefix: &str) -> RedisLocks {
    let url = common::redis_url();
    RedisLocks::connect(&url, &common::unique(prefix), 4).expect("redis reachable")
}

#[test]
#[ignore = "needs Redis: run scripts/test.sh"]
fn redis_locks_honour_the_backend_contract() {
    let metrics = realm::metrics::Metrics::new("test");
    let l = realm::lock::MeteredLocks::new(Arc::new(locks("contract")), metrics.locks.clone());
    realm::account::contract::locks(&l, 42).unwrap();
    assert!(metrics.locks.acquisitions.get() >= 3);
    assert!(metrics.locks.contentions.get() >= 1);
    assert_eq!(
        metrics.locks.acquire_duration.get_sample_count(),
        metrics.locks.acquisitions.get() + metrics.locks.contentions.get()
    );
}

#[test]
#[ignore = "needs Redis: run scripts/test.sh"]
fn two_zone_processes_never_hold_the_same_player_at_once() {
    let url = common::redis_url();
    let prefix = common::unique("two_zones");
    let a = Arc::new(RedisLocks::connect(&url, &prefix, 2).unwrap());
    let b = Arc::new(RedisLocks::connect(&url, &prefix, 2).unwrap());
    // Both race for 200 players; each player ends up with exactly one owner.
    let race = |locks: Arc<RedisLocks>, me: &'static str| {
        std::thread::spawn(move || {
            (0..200u64).filter(|p| locks.acquire(*p, me, Duration::from_secs(30)).unwrap()).collect::<Vec<_>>()
        })
    };
    let ta = race(Arc::clone(&a), "zone-a");
    let tb = race(Arc::clone(&b), "zone-b");
    let (won_a, won_b) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!(won_a.len() + won_b.len(), 200, "every player owned exactly once");
    assert!(won_a.iter().all(|p| !won_b.contains(p)));
    // Zone b cannot release zone a's players.
    for p in &won_a {
        assert!(!b.release(*p, "zone-b").unwrap());
        assert!(a.release(*p, "zone-a").unwrap());
    }
    for p in &won_b {
        b.release(*p, "zone-b").unwrap();
    }
}

#[test]
#[ignore = "needs Redis: run scripts/test.sh"]
fn acquire_with_retry_waits_for_a_lock_to_expire_and_gives_up_at_the_deadline() {
    let l = locks("retry");
    assert!(l.acquire(7, "old", Duration::from_millis(400)).unwrap());
    assert!(
        !l.acquire_with_retry(7, "new", Duration::from_secs(5), Duration::from_millis(100)).unwrap(),
        "gave up in time"
    );
    assert!(
        l.acquire_with_retry(7, "new", Duration::from_secs(5), Duration::from_secs(3)).unwrap(),
        "got it after expiry"
    );
    assert!(!l.extend(7, "old", Duration::from_secs(5)).unwrap(), "the old owner lost it");
    l.release(7, "new").unwrap();
}

#[test]
fn an_unreachable_redis_is_a_typed_error_not_a_hang() {
    let l = RedisLocks::connect("redis://127.0.0.1:1/", "unreachable", 1);
    let started = std::time::Instant::now();
    let result = l.and_then(|l| l.acquire(1, "t", Duration::from_secs(1)));
    assert!(matches!(result, Err(realm::account::StoreError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
