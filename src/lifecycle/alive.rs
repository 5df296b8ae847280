//! How long this node was away: a running node rewrites the time in its
//! data dir's `alive` file every so often; at start, a file older than the
//! tombstone grace period means the node may hold values whose deletes
//! were collected meanwhile, so it re-syncs before it serves them (see
//! `gc.rs` and [`super::Lifecycle::catch_up`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name of the file in the data dir.
pub const ALIVE_FILE: &str = "alive";
/// Longest time between two updates of the file.
const MAX_PERIOD: Duration = Duration::from_secs(60);
/// Shortest time between two updates (very short grace periods in tests).
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// How long ago the node in `dir` was last known to run; `None` for a data
/// dir without the file (new, or written by an older ringkv) or with a
/// malformed one.
pub fn away_for(dir: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(dir.join(ALIVE_FILE)).ok()?;
    let millis: u64 = text.trim().parse().ok()?;
    let last = UNIX_EPOCH + Duration::from_millis(millis);
    Some(SystemTime::now().duration_since(last).unwrap_or_default())
}

/// Records that the node runs now (written aside, then renamed).
pub fn touch(dir: &Path) -> std::io::Result<()> {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let path = dir.join(ALIVE_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, millis.to_string())?;
    std::fs::rename(&tmp, &path)
}

/// Rewrites the file often enough that an absence shorter than `grace` is
/// never taken for a longer one.
pub async fn keep_touching(dir: PathBuf, grace: Duration) {
    let period = (grace / 4).clamp(MIN_PERIOD, MAX_PERIOD);
    loop {
        if let Err(err) = touch(&dir) {
            tracing::warn!(%err, dir = %dir.display(), "cannot record that this node is alive");
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_tells_how_long_ago_the_node_ran() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(away_for(dir.path()), None);
        touch(dir.path()).unwrap();
        assert!(away_for(dir.path()).unwrap() < Duration::from_secs(60));
        let old = SystemTime::now() - Duration::from_secs(3600);
        let millis = old.duration_since(UNIX_EPOCH).unwrap().as_millis();
        std::fs::write(dir.path().join(ALIVE_FILE), millis.to_string()).unwrap();
        assert!(away_for(dir.path()).unwrap() >= Duration::from_secs(3600));
        std::fs::write(dir.path().join(ALIVE_FILE), "garbage").unwrap();
        assert_eq!(away_for(dir.path()), None);
    }
}
