//! `CacheManager`: named in-memory caches with a time-to-live, LRU eviction at a capacity bound, statistics, and a
//! background thread (`realm-cache-evictor`) that removes expired entries.
//!
//! Each [`Cache`] keeps its entries in a slab threaded by two intrusive lists under one mutex: a recency list
//! (LRU order; `get` moves an entry to the front, a full cache evicts from the back) and a write list (insertion
//! order; since the TTL is per cache, the oldest write expires first, so expiry pops from the head and never scans
//! live entries). Time comes from a [`Clock`], so tests move time instead of sleeping.
//!
//! Invariant: a cache is an optimisation, never the source of truth. Writers call [`Cache::invalidate`] after the
//! database write commits (the data layer's save path does); another process's writes are bounded only by the
//! TTL, so anything that must be current reads the database.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;

/// Source of time for expiry.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset_nanos: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock { base: Instant::now(), offset_nanos: AtomicU64::new(0) }
    }
}

impl ManualClock {
    /// A clock at an arbitrary fixed instant.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.offset_nanos.fetch_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }
}

/// Settings of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries; inserting into a full cache evicts the least recently used.
    pub capacity: usize,
    /// Entries expire this long after they were written.
    pub ttl: Duration,
}

/// Counters of one cache (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `get`s that found a live entry.
    pub hits: u64,
    /// `get`s that found nothing (or an expired entry).
    pub misses: u64,
    /// Entries written.
    pub inserts: u64,
    /// Entries evicted by the capacity bound (LRU).
    pub evictions: u64,
    /// Entries removed because their TTL passed (on access or by the evictor).
    pub expirations: u64,
    /// Entries removed by `invalidate`.
    pub invalidations: u64,
    /// Entries now.
    pub len: usize,
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node<K, V> {
    key: K,
    value: V,
    written: Instant,
    // Recency list (front = most recently used).
    lru_prev: usize,
    lru_next: usize,
    // Write list (front = oldest write = next to expire).
    w_prev: usize,
    w_next: usize,
}

#[derive(Debug)]
struct Links {
    head: usize,
    tail: usize,
}

#[derive(Debug)]
struct Inner<K, V> {
    map: HashMap<K, usize>,
    slots: Vec<Option<Node<K, V>>>,
    free: Vec<usize>,
    lru: Links,   // head = most recent, tail = least recent
    write: Links, // head = oldest write, tail = newest write
    stats: CacheStats,
}

impl<K: Eq + Hash + Clone, V> Inner<K, V> {
    fn node(&mut self, i: usize) -> &mut Node<K, V> {
        // Indices in the lists and the map always point at occupied slots (maintained by insert/remove).
        self.slots[i].as_mut().expect("linked slot is occupied")
    }

    fn lru_unlink(&mut self, i: usize) {
        let (p, n) = {
            let node = self.node(i);
            (node.lru_prev, node.lru_next)
        };
        if p == NIL {
            self.lru.head = n
        } else {
            self.node(p).lru_next = n
        }
        if n == NIL {
            self.lru.tail = p
        } else {
            self.node(n).lru_prev = p
        }
    }

    fn lru_push_front(&mut self, i: usize) {
        let head = self.lru.head;
        {
            let node = self.node(i);
            node.lru_prev = NIL;
            node.lru_next = head;
        }
        if head == NIL {
            self.lru.tail = i
        } else {
            self.node(head).lru_prev = i
        }
        self.lru.head = i;
    }

    fn w_unlink(&mut self, i: usize) {
        let (p, n) = {
            let node = self.node(i);
            (node.w_prev, node.w_next)
        };
        if p == NIL {
            self.write.head = n
        } else {
            self.node(p).w_next = n
        }
        if n == NIL {
            self.write.tail = p
        } else {
            self.node(n).w_prev = p
        }
    }

    fn w_push_back(&mut self, i: usize) {
        let tail = self.write.tail;
        {
            let node = self.node(i);
            node.w_next = NIL;
            node.w_prev = tail;
        }
        if tail == NIL {
            self.write.head = i
        } else {
            self.node(tail).w_next = i
        }
        self.write.tail = i;
    }

    fn remove(&mut self, i: usize) -> Option<Node<K, V>> {
        self.lru_unlink(i);
        self.w_unlink(i);
        let node = self.slots[i].take()?;
        self.map.remove(&node.key);
        self.free.push(i);
        self.stats.len = self.map.len();
        Some(node)
    }

    fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut n = 0;
        while self.write.head != NIL {
            let i = self.write.head;
            if now.saturating_duration_since(self.node(i).written) < ttl {
                break;
            }
            self.remove(i);
            self.stats.expirations += 1;
            n += 1;
        }
        n
    }
}

/// One named cache.
pub struct Cache<K, V> {
    name: String,
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner<K, V>>,
}

impl<K, V> fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache").field("name", &self.name).field("config", &self.config).finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Cache<K, V> {
    /// An empty cache (a capacity of 0 is raised to 1).
    pub fn new(name: impl Into<String>, config: CacheConfig, clock: Arc<dyn Clock>) -> Cache<K, V> {
        let config = CacheConfig { capacity: config.capacity.max(1), ..config };
        Cache {
            name: name.into(),
            config,
            clock,
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity(config.capacity.min(1 << 16)),
                slots: Vec::new(),
                free: Vec::new(),
                lru: Links { head: NIL, tail: NIL },
                write: Links { head: NIL, tail: NIL },
                stats: CacheStats::default(),
            }),
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its settings.
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// The live value of `key`, marking it most recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let Some(&i) = g.map.get(key) else {
            g.stats.misses += 1;
            return None;
        };
        if now.saturating_duration_since(g.node(i).written) >= self.config.ttl {
            g.remove(i);
            g.stats.expirations += 1;
            g.stats.misses += 1;
            return None;
        }
        g.lru_unlink(i);
        g.lru_push_front(i);
        g.stats.hits += 1;
        Some(g.node(i).value.clone())
    }

    /// Writes `key`; a full cache evicts its least recently used entry first.
    pub fn insert(&self, key: K, value: V) {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        g.stats.inserts += 1;
        if let Some(&i) = g.map.get(&key) {
            {
                let node = g.node(i);
                node.value = value;
                node.written = now;
            }
            g.lru_unlink(i);
            g.lru_push_front(i);
            g.w_unlink(i);
            g.w_push_back(i);
            return;
        }
        // Expired entries go before live ones are evicted.
        g.expire(now, self.config.ttl);
        if g.map.len() >= self.config.capacity {
            let victim = g.lru.tail;
            if victim != NIL {
                g.remove(victim);
                g.stats.evictions += 1;
            }
        }
        let node =
            Node { key: key.clone(), value, written: now, lru_prev: NIL, lru_next: NIL, w_prev: NIL, w_next: NIL };
        let i = match g.free.pop() {
            Some(i) => {
                g.slots[i] = Some(node);
                i
            }
            None => {
                g.slots.push(Some(node));
                g.slots.len() - 1
            }
        };
        g.map.insert(key, i);
        g.lru_push_front(i);
        g.w_push_back(i);
        g.stats.len = g.map.len();
    }

    /// Removes `key` (call after writing it to the database). True when it was cached.
    pub fn invalidate(&self, key: &K) -> bool {
        let mut g = self.inner.lock();
        let Some(&i) = g.map.get(key) else { return false };
        g.remove(i);
        g.stats.invalidations += 1;
        true
    }

    /// Removes everything.
    pub fn clear(&self) {
        let mut g = self.inner.lock();
        let n = g.map.len() as u64;
        g.map.clear();
        g.slots.clear();
        g.free.clear();
        g.lru = Links { head: NIL, tail: NIL };
        g.write = Links { head: NIL, tail: NIL };
        g.stats.invalidations += n;
        g.stats.len = 0;
    }

    /// Entries now (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired entries; how many.
    pub fn evict_expired(&self) -> usize {
        let now = self.clock.now();
        self.inner.lock().expire(now, self.config.ttl)
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.inner.lock().stats
    }
}

/// What the manager needs from a cache of any type.
trait AnyCache: Send + Sync {
    fn evict_expired(&self) -> usize;
    fn stats(&self) -> CacheStats;
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<K, V> AnyCache for Cache<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn evict_expired(&self) -> usize {
        Cache::evict_expired(self)
    }

    fn stats(&self) -> CacheStats {
        Cache::stats(self)
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// Why a cache could not be created or found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheError {
    /// A cache of that name exists with other key/value types.
    #[error("cache {0:?} exists with different key or value types")]
    TypeMismatch(String),
    /// The evictor thread could not be started.
    #[error("cannot start realm-cache-evictor: {0}")]
    Thread(String),
}

type Registry = Arc<Mutex<Vec<(String, Arc<dyn AnyCache>)>>>;

/// The named caches of a process and their evictor thread (stopped and joined on drop).
pub struct CacheManager {
    caches: Registry,
    clock: Arc<dyn Clock>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for CacheManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.caches.lock().iter().map(|(n, _)| n.clone()).collect();
        f.debug_struct("CacheManager").field("caches", &names).finish_non_exhaustive()
    }
}

impl CacheManager {
    /// A manager on the system clock whose evictor runs every `evict_every`.
    pub fn new(evict_every: Duration) -> Result<CacheManager, CacheError> {
        CacheManager::with_clock(evict_every, Arc::new(SystemClock))
    }

    /// A manager on `clock` (tests pass a [`ManualClock`]).
    pub fn with_clock(evict_every: Duration, clock: Arc<dyn Clock>) -> Result<CacheManager, CacheError> {
        let caches: Registry = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let for_thread = Arc::clone(&caches);
        let thread = std::thread::Builder::new()
            .name("realm-cache-evictor".into())
            .spawn(move || loop {
                match stopped.recv_timeout(evict_every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                // Clone the list so eviction never holds the registry lock while taking a cache's lock.
                let caches: Vec<Arc<dyn AnyCache>> = for_thread.lock().iter().map(|(_, c)| Arc::clone(c)).collect();
                for c in caches {
                    c.evict_expired();
                }
            })
            .map_err(|e| CacheError::Thread(e.to_string()))?;
        Ok(CacheManager { caches, clock, stop: Some(stop), thread: Some(thread) })
    }

    /// The cache called `name`, created with `config` if it does not exist (an existing one keeps its settings).
    pub fn cache<K, V>(&self, name: &str, config: CacheConfig) -> Result<Arc<Cache<K, V>>, CacheError>
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let mut caches = self.caches.lock();
        if let Some((_, c)) = caches.iter().find(|(n, _)| n == name) {
            return Arc::clone(c).as_any().downcast::<Cache<K, V>>().map_err(|_| CacheError::TypeMismatch(name.into()));
        }
        let cache = Arc::new(Cache::<K, V>::new(name, config, Arc::clone(&self.clock)));
        caches.push((name.to_owned(), Arc::clone(&cache) as Arc<dyn AnyCache>));
        Ok(cache)
    }

    /// Stats of every cache, by name.
    pub fn stats(&self) -> Vec<(String, CacheStats)> {
        self.caches.lock().iter().map(|(n, c)| (n.clone(), c.stats())).collect()
    }

    /// Runs one eviction pass now (the evictor thread does this periodically); expired entries removed.
    pub fn evict_expired(&self) -> usize {
        let caches: Vec<Arc<dyn AnyCache>> = self.caches.lock().iter().map(|(_, c)| Arc::clone(c)).collect();
        caches.iter().map(|c| c.evict_expired()).sum()
    }
}

impl Drop for CacheManager {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize, ttl_secs: u64) -> (Arc<ManualClock>, Cache<u64, String>) {
        let clock = Arc::new(ManualClock::new());
        let c = Cache::new("t", CacheConfig { capacity, ttl: Duration::from_secs(ttl_secs) }, clock.clone());
        (clock, c)
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let (clock, c) = cache(10, 30);
        c.insert(1, "a".into());
        clock.advance(Duration::from_secs(29));
        assert_eq!(c.get(&1).as_deref(), Some("a"));
        clock.advance(Duration::from_secs(1));
        assert_eq!(c.get(&1), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.expirations, s.len), (1, 1, 1, 0));
    }

    #[test]
    fn rewriting_an_entry_restarts_its_ttl() {
        let (clock, c) = cache(10, 30);
        c.insert(1, "a".into());
        clock.advance(Duration::from_secs(20));
        c.insert(1, "b".into());
        clock.advance(Duration::from_secs(20));
        assert_eq!(c.get(&1).as_deref(), Some("b"));
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used() {
        let (_clock, c) = cache(3, 60);
        for k in 1..=3 {
            c.insert(k, k.to_string());
        }
        assert!(c.get(&1).is_some()); // 1 is now the most recent; 2 is the least
        c.insert(4, "4".into());
        assert_eq!(c.get(&2), None);
        assert!(c.get(&1).is_some() && c.get(&3).is_some() && c.get(&4).is_some());
        let s = c.stats();
        assert_eq!((s.evictions, s.len, s.inserts), (1, 3, 4));
    }

    #[test]
    fn expired_entries_go_before_live_ones_are_evicted() {
        let (clock, c) = cache(2, 10);
        c.insert(1, "old".into());
        clock.advance(Duration::from_secs(5));
        c.insert(2, "live".into());
        clock.advance(Duration::from_secs(6)); // 1 expired, 2 live
        c.insert(3, "new".into());
        assert_eq!(c.get(&2).as_deref(), Some("live"));
        let s = c.stats();
        assert_eq!((s.evictions, s.expirations), (0, 1));
    }

    #[test]
    fn invalidate_removes_and_counts() {
        let (_clock, c) = cache(4, 60);
        c.insert(7, "x".into());
        assert!(c.invalidate(&7));
        assert!(!c.invalidate(&7));
        assert_eq!(c.get(&7), None);
        let s = c.stats();
        assert_eq!((s.invalidations, s.misses, s.len), (1, 1, 0));
    }

    #[test]
    fn stats_count_hits_and_misses_exactly() {
        let (_clock, c) = cache(100, 60);
        for k in 0..10 {
            c.insert(k, String::new());
        }
        for k in 0..20 {
            let _ = c.get(&k);
        }
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.inserts, s.len), (10, 10, 10, 10));
    }

    #[test]
    fn slots_are_reused_under_churn() {
        let (_clock, c) = cache(8, 60);
        for k in 0..10_000u64 {
            c.insert(k, String::new());
        }
        assert_eq!(c.len(), 8);
        assert!(c.inner.lock().slots.len() <= 8);
        for k in 9_992..10_000 {
            assert!(c.get(&k).is_some(), "{k}");
        }
    }

    #[test]
    fn the_evictor_thread_removes_expired_entries_in_the_background() {
        let clock = Arc::new(ManualClock::new());
        let m = CacheManager::with_clock(Duration::from_millis(5), clock.clone()).unwrap();
        let c = m.cache::<u64, u64>("bg", CacheConfig { capacity: 10, ttl: Duration::from_secs(1) }).unwrap();
        c.insert(1, 1);
        c.insert(2, 2);
        clock.advance(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.len(), 0, "expired entries must be evicted without any access");
        assert_eq!(c.stats().expirations, 2);
        assert_eq!(c.stats().misses, 0);
    }

    #[test]
    fn caches_are_found_by_name_and_typed() {
        let m = CacheManager::new(Duration::from_secs(60)).unwrap();
        let cfg = CacheConfig { capacity: 4, ttl: Duration::from_secs(60) };
        let a = m.cache::<u64, String>("names", cfg).unwrap();
        a.insert(1, "x".into());
        let again = m.cache::<u64, String>("names", cfg).unwrap();
        assert_eq!(again.get(&1).as_deref(), Some("x"));
        assert_eq!(m.cache::<String, u64>("names", cfg).unwrap_err(), CacheError::TypeMismatch("names".into()));
        let stats = m.stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].1.hits, 1);
    }
}
