//! Synchronisation shim: every atomic, `UnsafeCell`, `Mutex`, `Arc`, thread and spin used by lock-free code
//! comes from here, so the very same source can be model-checked by loom.
//!
//! Built normally, this re-exports `std` (plus `crossbeam_utils::Backoff`). Built with
//! `RUSTFLAGS="--cfg realm_loom"` (the `realm-loom-tests` crate, see `scripts/loom.sh`), it re-exports `loom`.
//! We use our own cfg name rather than `cfg(loom)` because tokio (pulled in by `postgres`) changes behaviour
//! under `cfg(loom)`.
//!
//! Invariant a reader must not break: lock-free code (`crate::queue`) never names `std::sync::atomic`,
//! `core::cell::UnsafeCell`, `std::thread` or `std::hint::spin_loop` directly; it goes through this module.
//! Anything that bypasses the shim is invisible to loom and silently unchecked.

#[cfg(realm_loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
#[cfg(realm_loom)]
pub use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(realm_loom))]
pub use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
#[cfg(not(realm_loom))]
pub use std::sync::{Arc, Mutex, MutexGuard};

/// Threads: `loom::thread` under loom, `std::thread` otherwise.
pub mod thread {
    #[cfg(realm_loom)]
    pub use loom::thread::{spawn, yield_now, JoinHandle};
    #[cfg(not(realm_loom))]
    pub use std::thread::{spawn, yield_now, JoinHandle};
}

/// Runs `f` as a loom model (every interleaving up to `LOOM_MAX_PREEMPTIONS`) under `--cfg realm_loom`,
/// or exactly once otherwise. Test bodies are written once and run through this (cordyceps' `model`).
#[cfg(realm_loom)]
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    loom::model(f);
}

/// Runs `f` as a loom model (every interleaving up to `LOOM_MAX_PREEMPTIONS`) under `--cfg realm_loom`,
/// or exactly once otherwise. Test bodies are written once and run through this (cordyceps' `model`).
#[cfg(not(realm_loom))]
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    f();
}

/// Hint that the caller is busy-waiting on another thread. Under loom this is `loom::thread::yield_now`, which
/// loom requires for spin loops to terminate (it deprioritises the spinning thread).
#[inline]
pub fn spin_loop() {
    #[cfg(realm_loom)]
    loom::thread::yield_now();
    #[cfg(not(realm_loom))]
    std::hint::spin_loop();
}

/// Exponential backoff for spin loops: `crossbeam_utils::Backoff` normally; under loom every step is a
/// `yield_now` and the backoff "completes" after two steps so models stay small.
#[derive(Debug, Default)]
pub struct Backoff {
    #[cfg(not(realm_loom))]
    inner: crossbeam_utils::Backoff,
    #[cfg(realm_loom)]
    steps: core::cell::Cell<u32>,
}

impl Backoff {
    /// A fresh backoff.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Back off in a lock-free loop (another thread made progress we are waiting to see).
    #[inline]
    pub fn spin(&self) {
        #[cfg(not(realm_loom))]
        self.inner.spin();
        #[cfg(realm_loom)]
        {
            self.steps.set(self.steps.get() + 1);
            loom::thread::yield_now();
        }
    }

    /// Back off in a blocking loop (waiting for another thread to do something); may yield the time slice.
    #[inline]
    pub fn snooze(&self) {
        #[cfg(not(realm_loom))]
        self.inner.snooze();
        #[cfg(realm_loom)]
        {
            self.steps.set(self.steps.get() + 1);
            loom::thread::yield_now();
        }
    }

    /// True once spinning stopped paying off: the caller should block, or take its slow path.
    #[inline]
    pub fn is_completed(&self) -> bool {
        #[cfg(not(realm_loom))]
        return self.inner.is_completed();
        #[cfg(realm_loom)]
        return self.steps.get() >= 2;
    }
}

/// `UnsafeCell` with loom's closure API (`with` / `with_mut`), so loom can check every access for races.
/// Without loom it is a zero-cost wrapper around `core::cell::UnsafeCell`.
#[cfg(realm_loom)]
pub use loom::cell::UnsafeCell;

/// `UnsafeCell` with loom's closure API (`with` / `with_mut`), so loom can check every access for races.
/// Without loom it is a zero-cost wrapper around `core::cell::UnsafeCell`.
#[cfg(not(realm_loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(realm_loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `data`.
    #[inline]
    pub const fn new(data: T) -> Self {
        Self(core::cell::UnsafeCell::new(data))
    }

    /// Calls `f` with a shared raw pointer to the contents. Dereferencing it is the caller's `unsafe`.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a mutable raw pointer to the contents. Dereferencing it is the caller's `unsafe`.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
