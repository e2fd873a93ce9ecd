//! One load-generator thread: a mio `Poll` driving many non-blocking [`Bot`]s, a timer heap for their wake-ups,
//! and a once-a-second publication of its counters for the progress line.
//!
//! Loop shape (mio's `tcp_server` example plus timers): poll until the earliest timer, dispatch socket events by
//! token (`slot * 2` = TLS, `slot * 2 + 1` = UDP), then run every timer that is due.
//!
//! The invariant a reader must not break: **a bot's entry in the heap is live only while it equals
//! `Bot::scheduled`**; every call into a bot is followed by [`Driver::reschedule`], and stale heap entries are
//! skipped when popped. Skipping the reschedule strands a bot (it never wakes again).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use super::bot::{Bot, Ctx, Outcome, Shared};
use super::stats::{Live, ThreadStats};
use super::ws::WsBot;
use crate::proto::MAX_DATAGRAM_BYTES;

/// How long bots that are logging out may take after the run ends before the thread gives up on them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One thread's bots and their event loop.
pub(crate) struct Driver {
    poll: Poll,
    bots: Vec<Agent>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    stats: ThreadStats,
    shared: Arc<Shared>,
    live: Arc<Live>,
    live_slot: usize,
    buf: Vec<u8>,
}

impl Driver {
    /// A driver for `bots` (each built with its slot index in this vector).
    pub(crate) fn new(bots: Vec<Agent>, shared: Arc<Shared>, live: Arc<Live>, live_slot: usize) -> io::Result<Self> {
        let mut timers = BinaryHeap::with_capacity(bots.len() * 2);
        let mut bots = bots;
        for (slot, bot) in bots.iter_mut().enumerate() {
            if let Some(at) = bot.wake() {
                timers.push(Reverse((at, slot)));
                *bot.scheduled() = Some(at);
            }
        }
        Ok(Self {
            poll: Poll::new()?,
            bots,
            timers,
            stats: ThreadStats::default(),
            shared,
            live,
            live_slot,
            buf: vec![0u8; MAX_DATAGRAM_BYTES + 512],
        })
    }

    /// Runs until `end`, then logs every bot out and returns the measurements and outcomes.
    pub(crate) fn run(mut self, end: Instant) -> io::Result<(ThreadStats, Vec<Outcome>)> {
        let mut events = Events::with_capacity(1024);
        let mut next_publish = Instant::now() + Duration::from_secs(1);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if stop_deadline.is_none() && now >= end {
                for slot in 0..self.bots.len() {
                    self.with_bot(slot, now, |bot, ctx| bot.stop(ctx));
                }
                stop_deadline = Some(now + STOP_GRACE);
            }
            if let Some(deadline) = stop_deadline {
                if now >= deadline || self.bots.iter().all(Agent::is_done) {
                    break;
                }
            }
            if now >= next_publish {
                self.publish();
                next_publish = now + Duration::from_secs(1);
                // Every bot already failed (a dead server): nothing left to measure or wait for.
                if stop_deadline.is_none() && self.bots.iter().all(Agent::is_done) {
                    break;
                }
            }
            let mut wake = next_publish.min(stop_deadline.unwrap_or(end));
            if let Some(Reverse((at, _))) = self.timers.peek() {
                wake = wake.min(*at);
            }
            let timeout = wake.saturating_duration_since(now);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                let slot = event.token().0 / 2;
                if slot >= self.bots.len() {
                    continue;
                }
                if event.token().0 % 2 == 0 {
                    self.with_bot(slot, now, |bot, ctx| bot.on_tcp(ctx));
                } else {
                    self.with_bot(slot, now, |bot, ctx| bot.on_udp(ctx));
                }
            }
            while let Some(&Reverse((at, slot))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if *self.bots[slot].scheduled() != Some(at) {
                    continue; // stale: the bot rescheduled since
                }
                *self.bots[slot].scheduled() = None;
                self.with_bot(slot, now, |bot, ctx| bot.on_timer(ctx));
            }
        }
        // Bots still closing when the grace ran out: nothing more to wait for.
        let now = Instant::now();
        for slot in 0..self.bots.len() {
            if !self.bots[slot].is_done() {
                self.with_bot(slot, now, |bot, ctx| bot.stop(ctx));
            }
        }
        self.publish();
        let outcomes = self.bots.iter().map(|b| b.outcome().clone()).collect();
        Ok((self.stats, outcomes))
    }

    /// Calls into one bot with a context, then puts its next wake-up in the heap.
    fn with_bot(&mut self, slot: usize, now: Instant, f: impl FnOnce(&mut Agent, &mut Ctx<'_>)) {
        let mut ctx = Ctx {
            registry: self.poll.registry(),
            shared: &self.shared,
            stats: &mut self.stats,
            buf: &mut self.buf,
            now,
        };
        f(&mut self.bots[slot], &mut ctx);
        self.reschedule(slot);
    }

    fn reschedule(&mut self, slot: usize) {
        let bot = &mut self.bots[slot];
        let wake = bot.wake();
        if wake != *bot.scheduled() {
            *bot.scheduled() = wake;
            if let Some(at) = wake {
                self.timers.push(Reverse((at, slot)));
            }
        }
    }

    /// Publishes this thread's counts for the progress line.
    fn publish(&mut self) {
        let mut phases = [0u64; 5];
        for bot in &self.bots {
            phases[usize::from(bot.phase())] += 1;
        }
        let failed = self.bots.iter().filter(|b| b.outcome().failure.is_some()).count() as u64;
        let live = &self.live.threads[self.live_slot];
        live.connecting.store(phases[1], Ordering::Relaxed);
        live.logging_in.store(phases[2], Ordering::Relaxed);
        live.playing.store(phases[3], Ordering::Relaxed);
        live.failed.store(failed, Ordering::Relaxed);
        live.inputs.store(self.stats.inputs, Ordering::Relaxed);
        live.snapshots.store(self.stats.snapshots, Ordering::Relaxed);
        if let Ok(mut window) = self.live.window.lock() {
            window.merge(&self.stats.window);
        }
        self.stats.window.clear();
    }
}

/// A bot on either transport.
pub(crate) enum Agent {
    /// TLS control channel + UDP data channel.
    Tls(Box<Bot>),
    /// The browser transport: HTTP login, one WebSocket.
    Ws(Box<WsBot>),
}

macro_rules! each {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            Agent::Tls($b) => $e,
            Agent::Ws($b) => $e,
        }
    };
}

impl Agent {
    fn wake(&self) -> Option<Instant> {
        each!(self, b => b.wake())
    }
    fn is_done(&self) -> bool {
        each!(self, b => b.is_done())
    }
    fn phase(&self) -> u8 {
        each!(self, b => b.phase())
    }
    fn scheduled(&mut self) -> &mut Option<Instant> {
        each!(self, b => &mut b.scheduled)
    }
    fn outcome(&self) -> &Outcome {
        each!(self, b => &b.outcome)
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        each!(self, b => b.on_timer(ctx))
    }
    fn on_tcp(&mut self, ctx: &mut Ctx<'_>) {
        each!(self, b => b.on_tcp(ctx))
    }
    fn on_udp(&mut self, ctx: &mut Ctx<'_>) {
        each!(self, b => b.on_udp(ctx))
    }
    fn stop(&mut self, ctx: &mut Ctx<'_>) {
        each!(self, b => b.stop(ctx))
    }
}
