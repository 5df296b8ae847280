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
//! [`StallWatch::start`] ticks every [`TICK`] on a thread of its own; a
//! gap between ticks longer than [`STALL`], less the time the thread spent
//! runnable but waiting for a CPU, means the process did not run. Writes
//! read while the gap is still open, or within [`AFTER_STALL`] of its end,
//! are refused.
//!
//! A loaded machine is not a stop. The tick runs on its own thread, so a
//! runtime whose workers are all busy (or blocked in the storage engine)
//! does not delay it, and the kernel's count of the thread's time on the
//! run queue (`/proc/thread-self/schedstat`, `run_delay`) is taken off the
//! gap, so a thread starved of CPU (or throttled by its cgroup) does not
//! count as stopped either. A stopped process (SIGSTOP, a frozen VM) is
//! not on any run queue: its whole gap counts. Without schedstat (another
//! kernel) the gap counts whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Milliseconds the tick thread had waited on a run queue by its last
    /// tick.
    waited_ms: AtomicU64,
    /// Set by [`StallWatch::stop`]: the tick thread ends.
    stopped: AtomicBool,
}

impl Default for StallWatch {
    fn default() -> Self {
        StallWatch {
            origin: Instant::now(),
            last_tick: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            stalled_ms: AtomicU64::new(0),
            waited_ms: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }
}

impl StallWatch {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Starts the tick thread, which runs until [`StallWatch::stop`] or
    /// until the watch is dropped, noting every stall.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let watch = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("stall-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let Some(watch) = watch.upgrade() else { break };
                    if watch.stopped.load(Ordering::Acquire) {
                        break;
                    }
                    watch.tick_at(watch.now_ms(), run_queue_wait_ms());
                }
            })
            .map(drop)
    }

    /// Ends the tick thread (at its next tick).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// One tick at `now` (ms since the origin), the tick thread having
    /// waited `waited` ms on a run queue in all so far.
    fn tick_at(&self, now: u64, waited: u64) {
        let last = self.last_tick.swap(now, Ordering::AcqRel);
        let waited_before = self.waited_ms.swap(waited, Ordering::AcqRel);
        // Time spent runnable, waiting for a CPU, is not a stop.
        let gap = now
            .saturating_sub(last)
            .saturating_sub(waited.saturating_sub(waited_before));
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

/// Milliseconds this thread has spent on a run queue waiting for a CPU; 0
/// where the kernel does not say.
fn run_queue_wait_ms() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| run_delay_ms(&s))
        .unwrap_or(0)
}

/// The run queue wait in a `schedstat` line (time on the CPU, time waiting
/// for it, time slices; in nanoseconds), in milliseconds.
fn run_delay_ms(schedstat: &str) -> Option<u64> {
    let ns: u64 = schedstat.split_whitespace().nth(1)?.parse().ok()?;
    Some(ns / 1_000_000)
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
            watch.tick_at(t, 0);
            assert!(watch.check_at(t + 10).is_ok(), "no stall at {t}");
        }
        // Stopped after the tick at 1000; the first request read on resuming
        // comes before the next tick.
        let resume = 1000 + stall + 500;
        assert!(watch.check_at(resume).is_err());
        watch.tick_at(resume + 5, 0);
        assert!(watch.check_at(resume + 10).is_err());
        assert!(watch.check_at(resume + 5 + after - 1).is_err());
        for t in (resume + 55..=resume + 5 + after).step_by(50) {
            watch.tick_at(t, 0);
        }
        assert!(watch.check_at(resume + 5 + after).is_ok());
        // A gap just short of a stall is ordinary scheduling.
        let later = resume + 5 + after + 100;
        watch.tick_at(later, 0);
        watch.tick_at(later + stall - 1, 0);
        assert!(watch.check_at(later + stall).is_ok());
    }

    #[test]
    fn a_tick_late_for_want_of_a_cpu_is_no_stall() {
        let watch = StallWatch::default();
        let stall = STALL.as_millis() as u64;
        watch.tick_at(1000, 40);
        // 3 s late, of which the thread spent all but 100 ms runnable.
        let late = 1000 + stall + 1000;
        watch.tick_at(late, 40 + stall + 900);
        assert!(watch.check_at(late + 10).is_ok());
        // The same gap with the thread off every run queue: stopped.
        let stopped = late + stall + 1000;
        watch.tick_at(stopped, 40 + stall + 900);
        assert!(watch.check_at(stopped + 10).is_err());
    }

    #[test]
    fn the_run_queue_wait_is_read_from_schedstat() {
        assert_eq!(run_delay_ms("1200000 3123556789 17\n"), Some(3123));
        assert_eq!(run_delay_ms("1200000"), None);
        assert_eq!(run_delay_ms("a b c"), None);
        if cfg!(target_os = "linux") {
            let line = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            assert!(run_delay_ms(&line).is_some(), "{line:?}");
        }
    }
}
