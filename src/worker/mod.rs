//! The blocking worker pool: `realm-worker-K` threads that run everything that may block (PostgreSQL, Redis,
//! argon2) so the simulation thread never does.
//!
//! The simulation holds only a [`JobSender`]: it can hand a closure to the pool, and the closure gets the
//! worker-side context (`&Ctx`: pools, locks, caches) — the simulation itself never can, which is how its type
//! makes blocking calls impossible. A job's result comes back as an event through the same inbound queue the io
//! threads use. The job queue is bounded: [`JobSender::submit`] fails with [`WorkerError::QueueFull`] instead of
//! blocking the tick.
//!
//! Invariant: a job must not assume which worker runs it, nor that jobs run in submission order (there are several
//! workers); jobs that must be ordered go through one job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::queue::Producer;

/// Why a job could not be submitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerError {
    /// The job queue holds `workers.queue_depth` jobs already.
    #[error("worker queue is full ({0} jobs)")]
    QueueFull(usize),
    /// The pool is shutting down.
    #[error("worker pool is stopped")]
    Stopped,
}

type BoxedJob<Ctx, Out> = Box<dyn FnOnce(&Ctx) -> Option<Out> + Send + 'static>;

struct Queued<Ctx, Out> {
    name: &'static str,
    enqueued: Instant,
    job: BoxedJob<Ctx, Out>,
    /// Delivered instead of the job's result if the job panics, so the simulation hears of every job that
    /// matters to it (a save, a transfer, a login) whatever happens to it.
    on_panic: Option<Out>,
}

/// Timing of one job name.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JobTiming {
    /// Jobs run.
    pub count: u64,
    /// Total time running.
    pub run_total: Duration,
    /// Longest run.
    pub run_max: Duration,
    /// Total time waiting in the queue.
    pub wait_total: Duration,
    /// Jobs that panicked (the worker survives; the panic is logged).
    pub panics: u64,
}

/// Counters shared by the pool and its senders.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs refused because the queue was full.
    pub rejected: AtomicU64,
    /// Jobs queued and not yet started.
    pub queued: AtomicU64,
    /// Jobs running now.
    pub running: AtomicU64,
    timings: Mutex<Vec<(&'static str, JobTiming)>>,
}

impl WorkerStats {
    /// Per-job-name timings.
    pub fn timings(&self) -> Vec<(&'static str, JobTiming)> {
        self.timings.lock().clone()
    }

    fn record(&self, name: &'static str, wait: Duration, run: Duration, panicked: bool) {
        let mut timings = self.timings.lock();
        let entry = match timings.iter_mut().position(|(n, _)| *n == name) {
            Some(i) => &mut timings[i].1,
            None => {
                timings.push((name, JobTiming::default()));
                &mut timings.last_mut().expect("just pushed").1
            }
        };
        entry.count += 1;
        entry.run_total += run;
        entry.run_max = entry.run_max.max(run);
        entry.wait_total += wait;
        entry.panics += u64::from(panicked);
    }
}

/// The simulation's only way to reach blocking resources.
pub struct JobSender<Ctx, Out> {
    tx: Sender<Queued<Ctx, Out>>,
    depth: usize,
    stats: Arc<WorkerStats>,
}

impl<Ctx, Out> Clone for JobSender<Ctx, Out> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), depth: self.depth, stats: Arc::clone(&self.stats) }
    }
}

impl<Ctx, Out> JobSender<Ctx, Out> {
    /// Queues `job`; its `Some` result is delivered to the simulation's inbound queue. Never blocks.
    pub fn submit(
        &self,
        name: &'static str,
        job: impl FnOnce(&Ctx) -> Option<Out> + Send + 'static,
    ) -> Result<(), WorkerError> {
        self.enqueue(Queued { name, enqueued: Instant::now(), job: Box::new(job), on_panic: None }).map_err(|(e, _)| e)
    }

    /// As [`JobSender::submit`], and if the job panics `on_panic` is delivered in its place: a typed failure,
    /// never silence. When the job cannot be queued, `on_panic` comes back with the error, for the caller to
    /// handle the same way at once.
    pub fn submit_or(
        &self,
        name: &'static str,
        job: impl FnOnce(&Ctx) -> Option<Out> + Send + 'static,
        on_panic: Out,
    ) -> Result<(), (WorkerError, Out)> {
        self.enqueue(Queued { name, enqueued: Instant::now(), job: Box::new(job), on_panic: Some(on_panic) })
            .map_err(|(e, q)| (e, q.on_panic.expect("set above")))
    }

    fn enqueue(&self, queued: Queued<Ctx, Out>) -> Result<(), (WorkerError, Queued<Ctx, Out>)> {
        match self.tx.try_send(queued) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(q)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err((WorkerError::QueueFull(self.depth), q))
            }
            Err(TrySendError::Disconnected(q)) => Err((WorkerError::Stopped, q)),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }
}

/// The running pool. Dropping every [`JobSender`] and calling [`WorkerPool::join`] drains the queue and stops.
pub struct WorkerPool {
    joins: Vec<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

impl WorkerPool {
    /// Starts `threads` workers named `realm-worker-K` sharing `ctx`; results go to `results`.
    pub fn start<Ctx, Out>(
        threads: usize,
        queue_depth: usize,
        ctx: Arc<Ctx>,
        results: Producer<Out>,
    ) -> std::io::Result<(WorkerPool, JobSender<Ctx, Out>)>
    where
        Ctx: Send + Sync + 'static,
        Out: Send + 'static,
    {
        Self::start_named("realm-worker", threads, queue_depth, ctx, results)
    }

    /// As [`WorkerPool::start`], with threads named `{prefix}-K` (a separate lane, e.g. `realm-login`, so slow jobs
    /// of one kind cannot starve another).
    pub fn start_named<Ctx, Out>(
        prefix: &str,
        threads: usize,
        queue_depth: usize,
        ctx: Arc<Ctx>,
        results: Producer<Out>,
    ) -> std::io::Result<(WorkerPool, JobSender<Ctx, Out>)>
    where
        Ctx: Send + Sync + 'static,
        Out: Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded::<Queued<Ctx, Out>>(queue_depth.max(1));
        let stats = Arc::new(WorkerStats::default());
        let mut joins = Vec::with_capacity(threads);
        for k in 0..threads.max(1) {
            let rx: Receiver<Queued<Ctx, Out>> = rx.clone();
            let ctx = Arc::clone(&ctx);
            let results = results.clone();
            let stats = Arc::clone(&stats);
            joins.push(
                std::thread::Builder::new()
                    .name(format!("{prefix}-{k}"))
                    .spawn(move || worker_loop(&rx, &ctx, &results, &stats))?,
            );
        }
        let sender = JobSender { tx, depth: queue_depth, stats: Arc::clone(&stats) };
        Ok((WorkerPool { joins, stats }, sender))
    }

    /// Counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// Waits for the workers to finish the queued jobs (after every sender is dropped).
    pub fn join(self) {
        for j in self.joins {
            let _ = j.join();
        }
    }
}

fn worker_loop<Ctx, Out>(rx: &Receiver<Queued<Ctx, Out>>, ctx: &Ctx, results: &Producer<Out>, stats: &WorkerStats) {
    while let Ok(Queued { name, enqueued, job, on_panic }) = rx.recv() {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats.running.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        // A panicking job must not take the worker (and every later job) down with it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(ctx)));
        let run = started.elapsed();
        stats.running.fetch_sub(1, Ordering::Relaxed);
        let panicked = outcome.is_err();
        if panicked {
            log::error!("worker job {name} panicked");
        }
        stats.record(name, started - enqueued, run, panicked);
        match outcome {
            Ok(Some(out)) => results.push(out),
            Ok(None) => {}
            Err(_) => {
                if let Some(out) = on_panic {
                    results.push(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{self, Pop};

    fn drain<T>(rx: &mut queue::Consumer<T>, n: usize) -> Vec<T> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.len() < n && Instant::now() < deadline {
            match rx.pop() {
                Pop::Item(v) => out.push(v),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        out
    }

    #[test]
    fn job_results_come_back_through_the_queue_with_the_worker_context() {
        let (tx, mut rx) = queue::channel::<u64>();
        let (pool, jobs) = WorkerPool::start(2, 16, Arc::new(40u64), tx).unwrap();
        for i in 0..3 {
            jobs.submit("add", move |ctx: &u64| Some(ctx + i)).unwrap();
        }
        let mut got = drain(&mut rx, 3);
        got.sort();
        assert_eq!(got, vec![40, 41, 42]);
        let names: Vec<_> = jobs.stats().timings().into_iter().map(|(n, t)| (n, t.count)).collect();
        assert_eq!(names, vec![("add", 3)]);
        drop(jobs);
        pool.join();
    }

    #[test]
    fn a_full_queue_is_an_error_not_a_block() {
        let (tx, _rx) = queue::channel::<()>();
        let gate = Arc::new(parking_lot::Mutex::new(()));
        let held = gate.lock();
        let (pool, jobs) = WorkerPool::start(1, 2, Arc::clone(&gate), tx).unwrap();
        // One job occupies the worker, two fill the queue, the fourth is refused at once.
        let mut results = Vec::new();
        for _ in 0..4 {
            results.push(jobs.submit("wait", |g: &parking_lot::Mutex<()>| {
                drop(g.lock());
                None
            }));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(results.last(), Some(&Err(WorkerError::QueueFull(2))));
        assert_eq!(jobs.stats().rejected.load(Ordering::Relaxed), 1);
        drop(held);
        drop(jobs);
        pool.join();
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_worker() {
        let (tx, mut rx) = queue::channel::<u8>();
        let (pool, jobs) = WorkerPool::start(1, 4, Arc::new(()), tx).unwrap();
        jobs.submit("boom", |_: &()| panic!("job failure")).unwrap();
        jobs.submit("ok", |_: &()| Some(7)).unwrap();
        assert_eq!(drain(&mut rx, 1), vec![7]);
        drop(jobs);
        pool.join();
    }

    #[test]
    fn a_job_that_panics_comes_back_as_its_typed_failure_never_as_silence() {
        let (tx, mut rx) = queue::channel::<Result<u8, &'static str>>();
        let (pool, jobs) = WorkerPool::start(1, 4, Arc::new(()), tx).unwrap();
        jobs.submit_or("save", |_: &()| panic!("driver bug"), Err("save panicked")).unwrap();
        jobs.submit_or("save", |_: &()| Some(Ok(1)), Err("unused")).unwrap();
        assert_eq!(drain(&mut rx, 2), vec![Err("save panicked"), Ok(1)], "the fallback only when it panicked");
        drop(jobs);
        pool.join();
        assert!(matches!(rx.pop(), Pop::Empty));
    }
}
