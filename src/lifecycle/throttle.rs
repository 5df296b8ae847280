//! A bytes-per-second pace shared by the tasks that move or read data in
//! the background (`--stream-rate`, `--scrub-rate`), so that they leave
//! room for clients.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets `rate` bytes per second through, on average; unlimited without a
/// rate. Callers ask before each piece of work and sleep as long as told.
pub struct Throttle {
    /// Bytes per second allowed, if limited.
    rate: Option<u64>,
    /// When the next byte may go; a std mutex, held only to read and move it.
    next_free: Mutex<Instant>,
}

impl Throttle {
    /// A throttle at `rate` bytes per second (`None` or 0: unlimited).
    pub fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate: rate.filter(|r| *r > 0),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// How long to wait before `bytes` more may go (reserving them).
    pub fn reserve(&self, bytes: u64) -> Duration {
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
    pub async fn wait(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_space_out_at_the_rate() {
        let unlimited = Throttle::new(None);
        assert!(unlimited.reserve(1 << 30).is_zero());
        let throttle = Throttle::new(Some(1000));
        assert!(throttle.reserve(500).is_zero());
        // The next byte waits for the 500 reserved before it: about 0.5 s.
        let wait = throttle.reserve(500);
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
    }
}
