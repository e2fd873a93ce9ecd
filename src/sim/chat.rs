//! Chat limits: how fast one player may talk on each channel, and how many chat deliveries (lines x recipients)
//! the whole zone makes per second. A zone line reaches every player, so without them three clients sending just
//! under their message credits made the server send tens of thousands of messages a second (issue 15).
//!
//! Both limits are counted in simulation ticks, never the wall clock: the same lines at the same ticks meet the
//! same refusals, as the rest of the simulation. The invariants a reader must not break: the zone's budget is
//! charged only for lines delivered, and a line refused for its sender's allowance costs nothing (hammering never
//! pushes the sender's next line further away). A line that passes the allowance spends it even when the zone's
//! budget then refuses it: otherwise a flooder retrying every tick would take each refill of the budget before a
//! person who speaks once, while this way every sender gets the same number of tries at a busy zone.
//!
//! * Per sender and channel: a token bucket (kept as its "theoretical arrival time", GCRA) of `burst` lines,
//!   one line back every `refill_ms`. Keyed by account, not session, so reconnecting does not refill it; an entry
//!   is forgotten once its bucket is full again (it then says nothing a fresh entry would not).
//! * Zone-wide: a budget of `deliveries_per_sec`, one second's worth usable at once. A line is admitted while the
//!   budget is positive and then charged for all its recipients, so a line to more players than one second's
//!   budget still goes out (and the zone then waits until the budget is positive again). Every channel draws on
//!   it: in a crowd, `say` reaches as many players as zone chat.
//!
//! A flooder is refused, not kicked: each refused line costs the server one small `ChatRefused` frame, no more
//! than the `Pong` a `Ping` costs, and the io layer's message credits already bound how many lines a session can
//! send and kick it (`KICK_REASON_FLOOD`) beyond them. A second kick policy here would add nothing but the risk of
//! disconnecting a player who pasted a few lines.

use std::collections::HashMap;

use crate::config::ChatConfig;
use crate::metrics::ChatRefusals;
use crate::proto::{self, ChatChannel, ChatRefusedReason};

/// Time inside the limiter: thousandths of a tick. A refill interval of `ms` milliseconds at `rate` ticks per
/// second is exactly `ms * rate` of these, whatever the tick rate.
type Milliticks = u64;

/// How often (in ticks) entries whose buckets are full again are dropped.
const PRUNE_EVERY_TICKS: u64 = 256;

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The sender spent its allowance on this channel.
    SenderRate,
    /// The zone spent its deliveries budget.
    ZoneFanout,
}

/// A refused line: why, and the earliest the same line could be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// Milliseconds until the limit that refused it has room again (at least one tick).
    pub retry_after_ms: u32,
}

impl Refusal {
    /// The answer the sender gets.
    pub fn to_proto(self, channel: ChatChannel) -> proto::ChatRefused {
        let (reason, message) = match self.reason {
            RefusalReason::SenderRate => (
                ChatRefusedReason::ChatRefusedSenderRate,
                format!("you are chatting too fast; wait {} ms", self.retry_after_ms),
            ),
            RefusalReason::ZoneFanout => (
                ChatRefusedReason::ChatRefusedZoneFanout,
                format!("chat in this zone is too busy; try again in {} ms", self.retry_after_ms),
            ),
        };
        proto::ChatRefused {
            channel: channel as i32,
            reason: reason as i32,
            retry_after_ms: self.retry_after_ms,
            message,
        }
    }
}

/// A line that passed its sender's allowance ([`ChatLimiter::check_sender`]), to be admitted in the same tick.
#[derive(Debug)]
#[must_use = "the sender's allowance is spent only by ChatLimiter::admit"]
pub struct SenderOk {
    sender: u64,
    channel: usize,
    /// The sender's arrival time on the channel once the line is charged.
    tat: Milliticks,
}

/// The per-sender and zone-wide chat limits of one zone.
pub struct ChatLimiter {
    rate: u64,
    /// Per channel (indexed by [`channel_index`]): emission interval and burst tolerance of the sender buckets.
    interval: [Milliticks; 2],
    tolerance: [Milliticks; 2],
    /// Per account: each channel's theoretical arrival time (the bucket is full when it is not after now).
    senders: HashMap<u64, [Milliticks; 2]>,
    /// Zone budget in deliveries x tick rate (so one tick adds exactly `deliveries_per_sec`); `None` = no cap.
    zone: Option<ZoneBudget>,
    now: Milliticks,
    tick: u64,
    metrics: Option<ChatRefusals>,
}

struct ZoneBudget {
    per_tick: i64,
    capacity: i64,
    tokens: i64,
}

fn channel_index(channel: ChatChannel) -> usize {
    match channel {
        ChatChannel::Say => 0,
        ChatChannel::Zone => 1,
    }
}

impl ChatLimiter {
    /// Limits from `config` at `tick_rate` ticks per second (values are validated by `Config::validate`; here
    /// they are only kept from overflowing).
    pub fn new(config: &ChatConfig, tick_rate: u32) -> Self {
        let rate = u64::from(tick_rate.max(1));
        let bucket = |burst: u32, refill_ms: u32| {
            let interval = u64::from(refill_ms.max(1)) * rate;
            (interval, interval * u64::from(burst.max(1) - 1))
        };
        let say = bucket(config.say_burst, config.say_refill_ms);
        let zone = bucket(config.zone_burst, config.zone_refill_ms);
        let budget = (config.deliveries_per_sec > 0).then(|| {
            let per_tick = i64::from(config.deliveries_per_sec);
            let capacity = per_tick * rate as i64;
            ZoneBudget { per_tick, capacity, tokens: capacity }
        });
        Self {
            rate,
            interval: [say.0, zone.0],
            tolerance: [say.1, zone.1],
            senders: HashMap::new(),
            zone: budget,
            now: 0,
            tick: 0,
            metrics: None,
        }
    }

    /// Counts refusals in `metrics` as they happen.
    pub fn with_metrics(mut self, metrics: ChatRefusals) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Moves the limiter to `tick` (call once per tick, before [`ChatLimiter::admit`]): refills the zone budget
    /// and now and then forgets senders whose buckets are full again.
    pub fn start_tick(&mut self, tick: u64) {
        let elapsed = tick.saturating_sub(self.tick);
        self.tick = tick;
        self.now = tick * 1000;
        if let Some(z) = &mut self.zone {
            let refill = z.per_tick.saturating_mul(i64::try_from(elapsed).unwrap_or(i64::MAX));
            z.tokens = z.tokens.saturating_add(refill).min(z.capacity);
        }
        if tick % PRUNE_EVERY_TICKS == 0 {
            let now = self.now;
            self.senders.retain(|_, tat| tat.iter().any(|&t| t > now));
        }
    }

    /// First step of admitting a line of `sender` (an account id) on `channel`: its allowance. Cheap, so a flood
    /// is refused before anything is spent on finding the line's recipients. Charges nothing.
    pub fn check_sender(&self, sender: u64, channel: ChatChannel) -> Result<SenderOk, Refusal> {
        let c = channel_index(channel);
        let now = self.now;
        let tat = self.senders.get(&sender).map_or(now, |t| t[c]).max(now);
        if tat - now > self.tolerance[c] {
            return Err(self.refuse(RefusalReason::SenderRate, tat - now - self.tolerance[c]));
        }
        Ok(SenderOk { sender, channel: c, tat: tat + self.interval[c] })
    }

    /// Second step: the line reaches `recipients` players. Spends the sender's allowance, then admits the line
    /// and charges the zone, or refuses it for the zone's budget.
    pub fn admit(&mut self, ok: SenderOk, recipients: usize) -> Result<(), Refusal> {
        self.senders.entry(ok.sender).or_insert([0; 2])[ok.channel] = ok.tat;
        if let Some(z) = &self.zone {
            if z.tokens <= 0 {
                // Positive again after this many whole ticks.
                let ticks = (-z.tokens) as u64 / z.per_tick as u64 + 1;
                return Err(self.refuse(RefusalReason::ZoneFanout, ticks * 1000));
            }
        }
        if let Some(z) = &mut self.zone {
            let cost = i64::try_from(recipients).unwrap_or(i64::MAX).saturating_mul(self.rate as i64);
            z.tokens = z.tokens.saturating_sub(cost);
        }
        Ok(())
    }

    /// Senders currently remembered (tests: the map does not grow without bound).
    pub fn tracked_senders(&self) -> usize {
        self.senders.len()
    }

    #[cold]
    fn refuse(&self, reason: RefusalReason, wait: Milliticks) -> Refusal {
        if let Some(m) = &self.metrics {
            match reason {
                RefusalReason::SenderRate => m.sender_rate.inc(),
                RefusalReason::ZoneFanout => m.zone_fanout.inc(),
            }
        }
        // Milliticks to milliseconds: / rate (a tick is 1000 / rate ms), rounded up.
        let ms = wait.div_ceil(self.rate);
        Refusal { reason, retry_after_ms: u32::try_from(ms).unwrap_or(u32::MAX) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 20;

    fn limits(zone_burst: u32, zone_refill_ms: u32, deliveries_per_sec: u32) -> ChatConfig {
        ChatConfig { zone_burst, zone_refill_ms, deliveries_per_sec, ..ChatConfig::default() }
    }

    /// Both steps of [`ChatLimiter`]'s admission.
    fn admit(l: &mut ChatLimiter, sender: u64, channel: ChatChannel, recipients: usize) -> Result<(), Refusal> {
        let ok = l.check_sender(sender, channel)?;
        l.admit(ok, recipients)
    }

    /// Lines admitted out of one attempt per tick for `ticks` ticks from tick 1.
    fn admitted_per_tick(l: &mut ChatLimiter, sender: u64, attempts: u32, ticks: u64) -> u32 {
        let mut ok = 0;
        for tick in 1..=ticks {
            l.start_tick(tick);
            for _ in 0..attempts {
                ok += u32::from(admit(l, sender, ChatChannel::Zone, 1).is_ok());
            }
        }
        ok
    }

    #[test]
    fn a_sender_gets_its_burst_then_one_line_per_refill_interval() {
        let mut l = ChatLimiter::new(&limits(5, 1000, 0), RATE);
        // Eight lines a tick for ten seconds: the burst of 5, then one a second (ticks 21, 41, ... 181).
        assert_eq!(admitted_per_tick(&mut l, 1, 8, 10 * u64::from(RATE)), 5 + 9);
    }

    #[test]
    fn a_refused_line_says_when_to_retry_and_costs_nothing() {
        let mut l = ChatLimiter::new(&limits(2, 1000, 0), RATE);
        l.start_tick(1);
        assert!(admit(&mut l, 1, ChatChannel::Zone, 1).is_ok());
        assert!(admit(&mut l, 1, ChatChannel::Zone, 1).is_ok());
        let refused = admit(&mut l, 1, ChatChannel::Zone, 1).unwrap_err();
        assert_eq!(refused, Refusal { reason: RefusalReason::SenderRate, retry_after_ms: 1000 });
        // Hammering does not push the next line further away.
        for _ in 0..100 {
            assert!(admit(&mut l, 1, ChatChannel::Zone, 1).is_err());
        }
        l.start_tick(1 + u64::from(RATE) - 1);
        assert_eq!(admit(&mut l, 1, ChatChannel::Zone, 1).unwrap_err().retry_after_ms, 50);
        l.start_tick(1 + u64::from(RATE));
        assert!(admit(&mut l, 1, ChatChannel::Zone, 1).is_ok());
    }

    #[test]
    fn channels_and_senders_have_separate_allowances() {
        let config = ChatConfig { say_burst: 3, say_refill_ms: 500, ..limits(1, 1000, 0) };
        let mut l = ChatLimiter::new(&config, RATE);
        l.start_tick(1);
        assert!(admit(&mut l, 1, ChatChannel::Zone, 1).is_ok());
        assert!(admit(&mut l, 1, ChatChannel::Zone, 1).is_err());
        for _ in 0..3 {
            assert!(admit(&mut l, 1, ChatChannel::Say, 1).is_ok());
        }
        assert!(admit(&mut l, 1, ChatChannel::Say, 1).is_err());
        assert!(admit(&mut l, 2, ChatChannel::Zone, 1).is_ok(), "another player is not limited by the first");
    }

    #[test]
    fn zone_deliveries_per_second_are_capped_whoever_sends() {
        // 100 deliveries a second, lines to 10 players: one second's budget (10 lines) up front, then 10 a second,
        // however many senders share it.
        let mut l = ChatLimiter::new(&limits(1000, 1, 100), RATE);
        let mut admitted = 0;
        let mut fanout_refusals = 0;
        for tick in 1..=5 * u64::from(RATE) {
            l.start_tick(tick);
            for sender in 0..50 {
                match admit(&mut l, sender, ChatChannel::Zone, 10) {
                    Ok(()) => admitted += 1,
                    Err(r) => {
                        assert_eq!(r.reason, RefusalReason::ZoneFanout);
                        assert!(r.retry_after_ms >= 50, "{r:?}");
                        fanout_refusals += 1;
                    }
                }
            }
        }
        // (100 up front + 100/s x 5 s) / 10 recipients, give or take the line that overdraws the budget.
        assert!((59..=61).contains(&admitted), "{admitted}");
        assert!(fanout_refusals > 0);
    }

    #[test]
    fn a_line_to_more_players_than_a_second_of_budget_still_goes_out_then_the_zone_waits() {
        let mut l = ChatLimiter::new(&limits(5, 1000, 100), RATE);
        l.start_tick(1);
        assert!(admit(&mut l, 1, ChatChannel::Zone, 300).is_ok());
        let refused = admit(&mut l, 2, ChatChannel::Zone, 300).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::ZoneFanout);
        // 200 deliveries overdrawn at 100 a second: positive again after 2 s and one tick.
        assert_eq!(refused.retry_after_ms, 2050);
        l.start_tick(1 + 2 * u64::from(RATE) + 1);
        assert!(admit(&mut l, 2, ChatChannel::Zone, 300).is_ok());
    }

    #[test]
    fn flooders_retrying_every_tick_do_not_keep_a_busy_zone_from_a_person_who_speaks_once() {
        // 240 deliveries a second, lines to 24 players: 10 lines a second for the whole zone. Twenty flooders, a
        // line a second each after a burst of 5, try six lines every tick (twice what the budget allows); a person
        // says one line in the middle of the second second. A try refused by the busy zone spends the flooder's
        // allowance, so the flooders do not take every refill of the budget the tick it comes, and the person's
        // line goes out.
        let mut l = ChatLimiter::new(&limits(5, 1000, 240), RATE);
        let mut person = None;
        for tick in 1..=2 * u64::from(RATE) {
            l.start_tick(tick);
            for flooder in 0..20 {
                for _ in 0..6 {
                    let _ = admit(&mut l, flooder, ChatChannel::Zone, 24);
                }
            }
            if tick == u64::from(RATE) * 3 / 2 + 1 {
                person = Some(admit(&mut l, 99, ChatChannel::Zone, 24));
            }
        }
        assert_eq!(person, Some(Ok(())));
    }

    #[test]
    fn senders_whose_buckets_refilled_are_forgotten() {
        let mut l = ChatLimiter::new(&limits(5, 1000, 0), RATE);
        l.start_tick(1);
        for sender in 0..1000 {
            admit(&mut l, sender, ChatChannel::Zone, 1).unwrap();
        }
        assert_eq!(l.tracked_senders(), 1000);
        l.start_tick(PRUNE_EVERY_TICKS);
        assert_eq!(l.tracked_senders(), 0);
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let metrics = crate::metrics::Metrics::new("test");
        let mut l = ChatLimiter::new(&limits(1, 1000, 1), RATE).with_metrics(metrics.chat_refusals.clone());
        l.start_tick(1);
        admit(&mut l, 1, ChatChannel::Zone, 100).unwrap();
        let _ = admit(&mut l, 1, ChatChannel::Zone, 1);
        let _ = admit(&mut l, 2, ChatChannel::Zone, 1);
        let _ = admit(&mut l, 3, ChatChannel::Zone, 1);
        assert_eq!(metrics.chat_refusals.sender_rate.get(), 1);
        assert_eq!(metrics.chat_refusals.zone_fanout.get(), 2);
    }
}
