//! A byte-rate throttle shared by background work that moves data between
//! nodes: range streaming into a joining node (`--stream-rate`) and
//! anti-entropy (`--repair-rate`; scrub is meant to share the repair one).
//!
//! It is a pacer, not a queue: each [`Throttle::take`] books its bytes at
//! the configured rate right after the previous booking and waits until its
//! slot starts. So the first caller after an idle period goes at once, and
//! a caller that books a large amount makes the *next* caller wait for it.
//! Bookings made while idle are not saved up: the throttle never allows a
//! burst above the rate after a quiet period. Several tasks may share one
//! throttle; together they stay under the rate.
//!
//! Not done here: fairness between callers (whoever books first goes
//! first), or any limit on requests rather than bytes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Paces byte transfers to a rate in bytes per second. Cheap to share
/// (`Arc<Throttle>`); a rate of `None` (or 0) lets everything through.
#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second allowed, if limited.
    rate: Option<u64>,
    /// When the next booking may start; a std mutex, held only to read and
    /// move this instant (never across an await).
    next_free: Mutex<Instant>,
}

impl Throttle {
    /// A throttle at `rate` bytes per second; `None` or `Some(0)`: unlimited.
    pub fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate: rate.filter(|r| *r > 0),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// The rate in bytes per second, when limited.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Books `bytes` and returns how long the caller must wait before
    /// sending them (zero when unlimited or idle). [`Throttle::take`] waits
    /// for it; exposed for callers that cannot await.
    pub fn book(&self, bytes: u64) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        start.saturating_duration_since(now)
    }

    /// Waits as long as the rate asks before `bytes` more.
    pub async fn take(&self, bytes: u64) {
        let wait = self.book(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        for rate in [None, Some(0)] {
            let throttle = Throttle::new(rate);
            assert_eq!(throttle.rate(), None);
            assert_eq!(throttle.book(u64::MAX), Duration::ZERO);
            assert_eq!(throttle.book(1), Duration::ZERO);
        }
    }

    #[test]
    fn bookings_queue_at_the_rate() {
        let throttle = Throttle::new(Some(1000));
        // The first booking goes at once; the next waits for its 1 s.
        assert_eq!(throttle.book(1000), Duration::ZERO);
        let second = throttle.book(500);
        assert!(
            second > Duration::from_millis(900) && second <= Duration::from_secs(1),
            "{second:?}"
        );
        let third = throttle.book(1);
        assert!(
            third > Duration::from_millis(1400) && third <= Duration::from_millis(1500),
            "{third:?}"
        );
    }

    #[tokio::test]
    async fn take_paces_shared_callers() {
        let throttle = std::sync::Arc::new(Throttle::new(Some(10_000)));
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let throttle = throttle.clone();
                tokio::spawn(async move { throttle.take(100).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        // Four bookings of 10 ms each: the last starts about 30 ms later.
        assert!(started.elapsed() >= Duration::from_millis(29));
    }
}
