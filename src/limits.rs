//! Counting events per source address in fixed windows: the building block of the per-address limits a peer
//! meets before it is anyone (new connections, failed logins, registrations).
//!
//! Invariant: memory is bounded whatever the number of addresses: past 100,000 tracked addresses, every address
//! whose window has ended is forgotten before a new one is counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most addresses tracked before expired windows are swept.
const SWEEP_ABOVE: usize = 100_000;

/// Events per source address, each address in its own fixed window that starts with its first event.
#[derive(Debug)]
pub struct PerAddressWindow {
    window: Duration,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl PerAddressWindow {
    /// Windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self { window, counts: Mutex::new(HashMap::new()) }
    }

    /// Events from `ip` in its current window, and the time left in that window.
    pub fn current(&self, ip: IpAddr, now: Instant) -> (u32, Duration) {
        match self.counts.lock().get(&ip) {
            Some(&(since, n)) => match self.window.checked_sub(now.duration_since(since)) {
                Some(left) if !left.is_zero() => (n, left),
                _ => (0, self.window),
            },
            None => (0, self.window),
        }
    }

    /// Counts one event from `ip`; returns the count in the current window, this one included.
    pub fn add(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut counts = self.counts.lock();
        if counts.len() > SWEEP_ABOVE {
            let window = self.window;
            counts.retain(|_, (since, _)| now.duration_since(*since) < window);
        }
        let e = counts.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_until_the_window_ends() {
        let w = PerAddressWindow::new(Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!((w.add(a, t0), w.add(a, t0), w.add(b, t0)), (1, 2, 1));
        assert_eq!(w.current(a, t0 + Duration::from_secs(20)), (2, Duration::from_secs(40)));
        assert_eq!(w.current(a, t0 + Duration::from_secs(60)).0, 0, "the window ended");
        assert_eq!(w.add(a, t0 + Duration::from_secs(61)), 1, "a new window");
    }
}
