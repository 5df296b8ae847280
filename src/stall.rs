//! No ghost writes after a pause.
//!
//! A coordinator stamps a write with its clock when it reads the request.
//! If the process was stopped (SIGSTOP, a VM freeze, a long GC-like stall)
//! while requests waited in its socket, it reads them all when it resumes
//! and would stamp them *now*: a write whose client gave up long ago would
//! then win over the writes acknowledged since. The kernel's buffer hides
//! how old those requests are, so the coordinator refuses the writes it
//! reads right after it notices it was stalled; a client still waiting gets
//! a 503 and retries, one that gave up loses nothing it was promised.
//!
//! [`StallWatch::run`] ticks every [`TICK`]; a gap between ticks longer
//! than [`STALL`] means the process did not run. Writes read while the gap
//! is still open, or within [`AFTER_STALL`] of its end, are refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often the watch ticks.
pub const TICK: Duration = Duration::from_millis(50);
/// A gap between ticks this long means the process was stopped.
pub const STALL: Duration = Duration::from_secs(2);
/// How long after a stall writes are still refused: the requests buffered
/// during it are read when the process resumes, at once on an idle host,
/// but possibly seconds later on a loaded one (with a window of 1 s, the
/// test that pauses a replica for 3 s once saw no refusal in a full run on
/// 2 cores: the buffered write was taken). Refusing costs little: the
/// coordinator counts the other replicas and keeps a hint.
pub const AFTER_STALL: Duration = Duration::from_secs(5);

/// When the process last ran its tick and when it last resumed.
#[derive(Debug)]
pub struct StallWatch {
    /// The watch's time origin (a monotonic clock, which runs on while the
    /// process is stopped).
    origin: Instant,
    /// Milliseconds since `origin` of the last tick.
    last_tick: AtomicU64,
    /// Milliseconds since `origin` when the last stall ended, and how long
    /// it was (0: none yet).
    resumed: AtomicU64,
    /// Length of the last stall, in milliseconds.
    stalled_ms: AtomicU64,
}

impl Default for StallWatch {
    fn default() -> Self {
        StallWatch {
            origin: Instant::now(),
            last_tick: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            stalled_ms: AtomicU64::new(0),
        }
    }
}

impl StallWatch {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Ticks until the process ends, noting every stall.
    pub async fn run(&self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.tick_at(self.now_ms());
        }
    }

    /// One tick at `now` (ms since the origin).
    fn tick_at(&self, now: u64) {
        let last = self.last_tick.swap(now, Ordering::AcqRel);
        let gap = now.saturating_sub(last);
        if last > 0 && gap >= STALL.as_millis() as u64 {
            self.stalled_ms.store(gap, Ordering::Release);
            self.resumed.store(now, Ordering::Release);
            tracing::warn!(
                stalled_ms = gap,
                "this process did not run for a while (paused?): refusing the writes read in the next {AFTER_STALL:?}"
            );
        }
    }

    /// Refuses a write read now if the process is, or just was, stalled.
    pub fn check(&self) -> Result<()> {
        self.check_at(self.now_ms())
    }

    fn check_at(&self, now: u64) -> Result<()> {
        let last = self.last_tick.load(Ordering::Acquire);
        let gap = now.saturating_sub(last);
        // The tick has not run yet since a stall that is only now ending.
        if last > 0 && gap >= STALL.as_millis() as u64 {
            return Err(stalled(gap));
        }
        let resumed = self.resumed.load(Ordering::Acquire);
        if resumed > 0 && now.saturating_sub(resumed) < AFTER_STALL.as_millis() as u64 {
            return Err(stalled(self.stalled_ms.load(Ordering::Acquire)));
        }
        Ok(())
    }
}

fn stalled(ms: u64) -> Error {
    Error::NotReady {
        reason: format!(
            "this node was stopped for {:.1} s; a write read just after may be older than its \
             client's patience, so it is refused: retry",
            ms as f64 / 1000.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_right_after_a_stall_are_refused_and_later_ones_taken() {
        let watch = StallWatch::default();
        let stall = STALL.as_millis() as u64;
        let after = AFTER_STALL.as_millis() as u64;
        for t in (50..=1000).step_by(50) {
            watch.tick_at(t);
            assert!(watch.check_at(t + 10).is_ok(), "no stall at {t}");
        }
        // Stopped after the tick at 1000; the first request read on resuming
        // comes before the next tick.
        let resume = 1000 + stall + 500;
        assert!(watch.check_at(resume).is_err());
        watch.tick_at(resume + 5);
        assert!(watch.check_at(resume + 10).is_err());
        assert!(watch.check_at(resume + 5 + after - 1).is_err());
        for t in (resume + 55..=resume + 5 + after).step_by(50) {
            watch.tick_at(t);
        }
        assert!(watch.check_at(resume + 5 + after).is_ok());
        // A gap just short of a stall is ordinary scheduling.
        let later = resume + 5 + after + 100;
        watch.tick_at(later);
        watch.tick_at(later + stall - 1);
        assert!(watch.check_at(later + stall).is_ok());
    }
}
