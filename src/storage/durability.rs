//! Durability and room: group commit (one fsync answers every write waiting
//! when it starts), persist and flush at shutdown, backpressure of streamed
//! writes on the engine's flushes, and the disk reserve that refuses a
//! write before the engine meets a full disk.
//!
//! Invariants: an fsync failure reaches every write that waited on it with
//! its cause kept (a full disk stays [`Error::DiskFull`], 507); the reserve
//! is checked before a write touches the engine. Does not apply batches
//! (`engine.rs`) nor commit records (`Store::commit`).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Engine, Store};
use crate::error::{Error, Result};

/// File in the data dir that [`Store::takes_writes`] writes and removes.
const WRITE_PROBE_FILE: &str = ".health-probe";
/// Bytes the probe writes: one filesystem block, so that a full disk fails.
const WRITE_PROBE_BYTES: usize = 4096;

/// Longest [`Store::flush`] waits for the engine to write its memtables.
const FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest a streamed write waits for flushes before going ahead anyway.
const BACKLOG_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a waiting streamed write checks the flush backlog.
const BACKLOG_POLL: std::time::Duration = std::time::Duration::from_millis(1);

impl Store {
    /// Waits until everything applied so far is on disk, when `fsync` is on.
    /// Concurrent callers share one fsync.
    pub async fn sync(&self) -> Result<()> {
        let Some(syncer) = &self.inner.syncer else {
            return Ok(());
        };
        let (tx, rx) = oneshot::channel();
        syncer.send(tx).map_err(|_| Error::NotReady {
            reason: "store is closed".into(),
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(for_waiter(&failure)),
            Err(_) => Err(Error::NotReady {
                reason: "store is closed".into(),
            }),
        }
    }

    /// Flushes everything to disk (shutdown).
    pub fn persist(&self) -> Result<()> {
        self.inner.engine.persist()
    }

    /// Writes the engine's memtables to its tables, so that the next start
    /// replays no journal (shutdown). Blocks for up to 30 s.
    pub fn flush(&self) -> Result<()> {
        self.inner.engine.flush(FLUSH_DEADLINE)
    }

    /// Waits (at most [`BACKLOG_MAX_WAIT`]) while the engine's flushes are
    /// behind streamed writes: backpressure that bounds memory per node.
    pub async fn wait_for_flush_room(&self) {
        let started = tokio::time::Instant::now();
        while self.inner.engine.chunk_backlog() && started.elapsed() < BACKLOG_MAX_WAIT {
            tokio::time::sleep(BACKLOG_POLL).await;
        }
    }

    /// Whether a file of one block can be written in the data dir (and is
    /// removed again): catches a full disk and a file system remounted
    /// read-only, which the engine would meet only at its next write. The
    /// reason names the dir. Always `Ok` in memory.
    pub async fn takes_writes(&self) -> std::result::Result<(), String> {
        let Some(dir) = self.inner.data_dir.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            let path = dir.join(WRITE_PROBE_FILE);
            let written = std::fs::write(&path, [0u8; WRITE_PROBE_BYTES]);
            let _ = std::fs::remove_file(&path);
            written.map_err(|e| format!("cannot write in {}: {e}", dir.display()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the disk check did not finish: {e}")))
    }

    /// Whether writes are taken: the data disk has more than the reserve
    /// free (always, in memory).
    pub fn has_room(&self) -> bool {
        self.ensure_room(0).is_ok()
    }

    /// Refuses a write of `incoming` bytes that would leave less than the
    /// reserve free on the data disk.
    pub(super) fn ensure_room(&self, incoming: u64) -> Result<()> {
        let Some((dir, reserve)) = &self.inner.reserve else {
            return Ok(());
        };
        match free_bytes(dir) {
            Some(free) if free < reserve.saturating_add(incoming) => Err(Error::DiskFull),
            _ => Ok(()),
        }
    }

    /// Bytes used on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.engine.disk_bytes()
    }

    /// Bytes free for this process on the data disk; `None` in memory.
    pub fn disk_free(&self) -> Option<u64> {
        let (dir, _) = self.inner.reserve.as_ref()?;
        free_bytes(dir)
    }
}

/// Bytes available to this process on the file system holding `dir`.
pub(super) fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) reads a NUL-terminated path and fills the struct
    // it is given; it is zeroed first and read only on success.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut stat) == 0)
            .then(|| stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

/// One fsync's outcome, shared by every write that waited on it (an
/// [`Error`] is not `Clone`).
pub(super) type SyncOutcome = Result<(), Arc<Error>>;

/// Group commit: whoever waits when an fsync starts is answered by it.
pub(super) fn spawn_group_commit(
    engine: Arc<dyn Engine>,
) -> mpsc::UnboundedSender<oneshot::Sender<SyncOutcome>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<SyncOutcome>>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut waiters = vec![first];
            while let Ok(more) = rx.try_recv() {
                waiters.push(more);
            }
            let engine = engine.clone();
            let result: SyncOutcome =
                match tokio::task::spawn_blocking(move || engine.persist()).await {
                    Ok(persisted) => persisted.map_err(Arc::new),
                    Err(join) => Err(Arc::new(Error::internal(format!(
                        "fsync task failed: {join}"
                    )))),
                };
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    });
    tx
}

/// The error one failed fsync gives each write that waited on it, its
/// cause kept: a full disk stays [`Error::DiskFull`], an I/O error keeps
/// its errno (so ENOSPC or EDQUOT answers 507, as `Error::http_status`
/// says), anything else is told as an I/O error with the engine's words.
fn for_waiter(failure: &Error) -> Error {
    match failure {
        Error::DiskFull => Error::DiskFull,
        Error::Io { source } => Error::Io {
            source: match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        other => Error::internal(format!("fsync failed: {other}")),
    }
}
