//! Versions and the hybrid logical clock that stamps them (F11).
//!
//! A [`Version`] is `(timestamp, writer)`. The timestamp is a hybrid logical
//! clock reading in nanoseconds since the Unix epoch: the physical clock when
//! it moves forward, otherwise the last reading plus one nanosecond, so the
//! logical counter lives in the lowest bits and the number still reads as a
//! time. The writer is a hash of the coordinating node's id and breaks ties
//! the same way on every node.
//!
//! # The merge rule
//!
//! Replicas keep, for each key, the record with the greatest version
//! ([`Version::newest`]). `newest` is
//! - commutative: `newest(a, b) == newest(b, a)`,
//! - associative: `newest(a, newest(b, c)) == newest(newest(a, b), c)`,
//! - idempotent: `newest(a, a) == a`,
//!
//! so replicas that have seen the same set of writes hold the same record, in
//! whatever order the writes arrived, and an older version never replaces a
//! newer one. Property tests below check these laws.
//!
//! # Expiry changes (F28)
//!
//! A change of a value's expiry alone (EXPIRE, PERSIST, GETEX) keeps the
//! value's `(timestamp, writer)` and sets `touch`, the HLC reading of the
//! change: it orders after the value it changes and before every later
//! write of the key, so an expiry change based on an old value can never
//! replace a newer value, and of two changes of one value the later wins.
//! A write itself has `touch` 0.
//!
//! # Cluster time
//!
//! Expiry is decided against [`Clock::cluster_now_ns`]: this node's physical
//! clock, or the clock of the peer seen furthest ahead in the last
//! [`PEER_AHEAD_KEEP`] (replies to reads and writes carry the replica's
//! time), so that a node whose clock runs behind still sees a key expire
//! when the others do.
//!
//! We keep our own 40-line clock rather than `uhlc` because F11 asks for one
//! integer of nanoseconds on the wire and `uhlc`'s NTP64 fractions do not map
//! to nanoseconds one-to-one.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Largest skew, in nanoseconds, accepted from a remote timestamp before the
/// clock refuses to jump forward to it: 60 s. A peer whose clock runs further
/// ahead cannot drag every node's clock with it.
pub const MAX_CLOCK_SKEW_NS: u64 = 60_000_000_000;

/// How long a peer's clock seen ahead of this node's keeps counting for
/// [`Clock::cluster_now_ns`] without being seen again.
pub const PEER_AHEAD_KEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// A write's version: hybrid timestamp, then writer id as tie-breaker, then
/// the stamp of a later change of the value's expiry alone.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Version {
    /// HLC reading, nanoseconds since the Unix epoch (logical counter in the low bits).
    pub timestamp: u64,
    /// Hash of the coordinating node's id; breaks timestamp ties deterministically.
    pub writer: u64,
    /// HLC reading of the last change of this value's expiry alone
    /// (EXPIRE, PERSIST…), 0 for the write itself (see the module doc).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub touch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Version {
    /// The version that sorts before every real write ("nothing stored").
    pub const ZERO: Version = Version {
        timestamp: 0,
        writer: 0,
        touch: 0,
    };

    /// The version of a value written at `timestamp` by `writer`.
    pub fn new(timestamp: u64, writer: u64) -> Version {
        Version {
            timestamp,
            writer,
            touch: 0,
        }
    }

    /// The write this version belongs to (`touch` 0): versions with the same
    /// base have the same value bytes (and share the value's chunks).
    pub fn base(self) -> Version {
        Version { touch: 0, ..self }
    }

    /// This version's value with its expiry changed at `touch`.
    pub fn touched(self, touch: u64) -> Version {
        Version { touch, ..self }
    }

    /// The merge rule: the newer of two versions (see the module doc).
    pub fn newest(self, other: Version) -> Version {
        self.max(other)
    }

    /// Whole seconds since the epoch, for `Last-Modified`.
    pub fn unix_seconds(&self) -> u64 {
        self.timestamp / 1_000_000_000
    }

    /// The `ETag` of a value written at this version.
    pub fn etag(&self) -> String {
        if self.touch == 0 {
            format!("\"{:x}-{:x}\"", self.timestamp, self.writer)
        } else {
            format!(
                "\"{:x}-{:x}-{:x}\"",
                self.timestamp, self.writer, self.touch
            )
        }
    }

    /// The newest HLC reading in this version (its write or its touch).
    pub fn latest_ns(&self) -> u64 {
        self.timestamp.max(self.touch)
    }
}

/// A hybrid logical clock. Cheap to share; `now()` is monotonic per clock.
#[derive(Debug)]
pub struct Clock {
    /// Writer id stamped into every version this clock makes.
    writer: u64,
    /// Last timestamp handed out or observed; never goes backwards.
    last: Mutex<u64>,
    /// Physical time source; replaceable so tests can skew or freeze it.
    physical: fn() -> u64,
    /// Added to every physical reading (fault tests: a node whose clock
    /// runs ahead or behind, `--clock-skew-ms`).
    skew_ns: i64,
    /// How far ahead of this clock the furthest peer clock seen recently
    /// ran (ns, never negative), and when it was seen: see
    /// [`Clock::cluster_now_ns`].
    peer_ahead: Mutex<(u64, std::time::Instant)>,
}

/// Nanoseconds since the Unix epoch from the system clock.
pub fn system_time_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// A clock for the node whose writer id is `writer`.
    pub fn new(writer: u64) -> Self {
        Self::with_source(writer, system_time_ns)
    }

    /// A clock reading physical time from `physical` (tests).
    pub fn with_source(writer: u64, physical: fn() -> u64) -> Self {
        Clock {
            writer,
            last: Mutex::new(0),
            physical,
            skew_ns: 0,
            peer_ahead: Mutex::new((0, std::time::Instant::now())),
        }
    }

    /// This clock, running `skew_ns` ahead (negative: behind) of its source.
    pub fn skewed(mut self, skew_ns: i64) -> Self {
        self.skew_ns = skew_ns;
        self
    }

    /// The physical reading, skewed.
    fn physical_now(&self) -> u64 {
        (self.physical)().saturating_add_signed(self.skew_ns)
    }

    /// A fresh version, greater than every version this clock made or observed.
    pub fn now(&self) -> Version {
        let physical = self.physical_now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let timestamp = physical.max(*last + 1);
        *last = timestamp;
        Version::new(timestamp, self.writer)
    }

    /// The time expiry is decided against, in nanoseconds since the epoch:
    /// the physical clock, or the furthest peer clock seen ahead of it in
    /// the last [`PEER_AHEAD_KEEP`].
    pub fn cluster_now_ns(&self) -> u64 {
        let physical = self.physical_now();
        let ahead = self.peer_ahead.lock().unwrap_or_else(|p| p.into_inner());
        if ahead.1.elapsed() > PEER_AHEAD_KEEP {
            return physical;
        }
        physical.saturating_add(ahead.0)
    }

    /// [`Clock::cluster_now_ns`] in milliseconds.
    pub fn cluster_now_ms(&self) -> u64 {
        self.cluster_now_ns() / 1_000_000
    }

    /// This node's physical reading, the time a replica reports in its
    /// replies.
    pub fn physical_ns(&self) -> u64 {
        self.physical_now()
    }

    /// Notes a peer's clock reading (`remote_ns`, just received): if it runs
    /// ahead of this clock by at most [`MAX_CLOCK_SKEW_NS`], cluster time
    /// follows it for a while.
    pub fn observe_time(&self, remote_ns: u64) {
        let physical = self.physical_now();
        if remote_ns <= physical || remote_ns > physical.saturating_add(MAX_CLOCK_SKEW_NS) {
            return;
        }
        let sample = remote_ns - physical;
        let mut ahead = self.peer_ahead.lock().unwrap_or_else(|p| p.into_inner());
        if sample >= ahead.0 || ahead.1.elapsed() > PEER_AHEAD_KEEP {
            *ahead = (sample, std::time::Instant::now());
        }
    }

    /// Moves the clock past a version seen from another node, so that later
    /// local writes order after it. Readings more than [`MAX_CLOCK_SKEW_NS`]
    /// ahead of local physical time are ignored (and reported) instead.
    pub fn observe(&self, seen: Version) -> bool {
        let physical = self.physical_now();
        let latest = seen.latest_ns();
        if latest > physical.saturating_add(MAX_CLOCK_SKEW_NS) {
            return false;
        }
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(latest);
        }
        self.observe_time(latest);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frozen() -> u64 {
        1_700_000_000_000_000_000
    }

    #[test]
    fn clock_is_monotonic_when_physical_time_stands_still() {
        let clock = Clock::with_source(7, frozen);
        let a = clock.now();
        let b = clock.now();
        assert!(b > a);
        assert_eq!(b.timestamp, a.timestamp + 1);
        assert_eq!(a.timestamp, frozen());
    }

    #[test]
    fn observing_a_later_version_moves_the_clock_past_it() {
        let clock = Clock::with_source(1, frozen);
        let remote = Version::new(frozen() + 5_000, 9);
        assert!(clock.observe(remote));
        let next = clock.now();
        assert!(next > remote);
    }

    #[test]
    fn far_future_versions_are_not_observed() {
        let clock = Clock::with_source(1, frozen);
        let remote = Version::new(frozen() + MAX_CLOCK_SKEW_NS + 1, 9);
        assert!(!clock.observe(remote));
        assert_eq!(clock.now().timestamp, frozen());
    }

    #[test]
    fn ties_are_broken_by_writer() {
        let a = Version::new(10, 1);
        let b = Version::new(10, 2);
        assert_eq!(a.newest(b), b);
        assert_eq!(b.newest(a), b);
    }

    fn version() -> impl Strategy<Value = Version> {
        (0u64..50, 0u64..4, 0u64..3).prop_map(|(timestamp, writer, touch)| Version {
            timestamp,
            writer,
            touch,
        })
    }

    #[test]
    fn an_expiry_change_orders_between_its_value_and_the_next_write() {
        let value = Version::new(10, 5);
        let touched = value.touched(20);
        let later = Version::new(11, 0);
        assert!(value < touched && touched < later);
        assert!(touched < value.touched(21));
        assert_eq!(touched.base(), value);
    }

    fn ahead() -> u64 {
        frozen() + 3_000_000_000
    }

    #[test]
    fn cluster_time_follows_a_peer_clock_that_runs_ahead() {
        let clock = Clock::with_source(1, frozen);
        assert_eq!(clock.cluster_now_ns(), frozen());
        clock.observe_time(ahead());
        assert_eq!(clock.cluster_now_ns(), ahead());
        // A clock behind, or absurdly far ahead, changes nothing.
        clock.observe_time(frozen() - 1);
        clock.observe_time(frozen() + MAX_CLOCK_SKEW_NS + 1);
        assert_eq!(clock.cluster_now_ns(), ahead());
        // A skewed node's own reading is skewed too.
        let behind = Clock::with_source(2, frozen).skewed(-5_000_000_000);
        assert_eq!(behind.cluster_now_ns(), frozen() - 5_000_000_000);
        behind.observe(Version::new(frozen(), 9));
        assert_eq!(behind.cluster_now_ns(), frozen());
    }

    proptest! {
        #[test]
        fn newest_is_commutative(a in version(), b in version()) {
            prop_assert_eq!(a.newest(b), b.newest(a));
        }

        #[test]
        fn newest_is_associative(a in version(), b in version(), c in version()) {
            prop_assert_eq!(a.newest(b.newest(c)), a.newest(b).newest(c));
        }

        #[test]
        fn newest_is_idempotent(a in version()) {
            prop_assert_eq!(a.newest(a), a);
        }

        #[test]
        fn merge_order_does_not_matter(mut writes in proptest::collection::vec(version(), 1..20)) {
            let forward = writes.iter().fold(Version::ZERO, |acc, v| acc.newest(*v));
            writes.reverse();
            let backward = writes.iter().fold(Version::ZERO, |acc, v| acc.newest(*v));
            prop_assert_eq!(forward, backward);
            prop_assert!(writes.iter().all(|v| *v <= forward));
        }

        #[test]
        fn clock_never_goes_backwards(observed in proptest::collection::vec(0u64..3_000_000_000_000_000_000, 0..20)) {
            let clock = Clock::with_source(3, frozen);
            let mut last = Version::ZERO;
            for t in observed {
                clock.observe(Version::new(t, 1));
                let v = clock.now();
                prop_assert!(v > last);
                last = v;
            }
        }
    }
}
