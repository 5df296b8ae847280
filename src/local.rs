//! Local `ringkv serve` processes: the one spawner behind `ringkv cluster`,
//! the lab (`examples/lab`) and the integration tests (`tests/common`).
//!
//! It owns a node's process from spawn to reaping. A [`Launch`] says what
//! to run: the binary, the flags after `serve`, where stderr goes, the
//! environment, and optionally a wrapper that runs the binary (`ip netns
//! exec SPACE`). [`Launch::start`] spawns it and waits for its first
//! stdout line, `listening on URL`, which `serve` prints once its ports are
//! bound and it answers requests: that line is the readiness signal, and
//! its URL gives the port the node took (with `--port 0` the kernel picks
//! it). A [`LocalNode`] signals its process by PID and stops it: SIGTERM, a
//! wait, SIGKILL once the grace period has passed. A node dropped while
//! running is killed and reaped, so no process outlives its owner.
//!
//! Invariant: a [`LocalNode`]'s PID is the PID of a child this process
//! spawned and has not reaped yet (signals never reach a recycled PID).
//!
//! It does not choose ports (callers pass `--port`), wait for ring
//! membership (callers poll `/ring` for the condition they need), nor
//! create or remove data directories. `start` blocks up to its timeout and
//! `stop` up to its grace period: async callers run them on
//! `tokio::task::spawn_blocking` where blocking a worker matters.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a node may take to print its listening line by default (a
/// node opening a large store on a loaded 2-core machine takes seconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node may take to exit after SIGTERM by default before it is
/// killed (`--on-signal stop` flushes the store; a leave hands data over).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a node's first stdout line starts with, before its URL.
const LISTENING: &str = "listening on ";

/// How many later stdout lines are kept for [`LocalNode::next_line`]; more
/// are read and dropped, so that the node never blocks on a full pipe.
const KEPT_LINES: usize = 16;

/// Time between two checks of whether a signalled node has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Where a node's stderr (its log) goes.
#[derive(Debug, Clone)]
pub enum Log {
    /// To this process's stderr.
    Inherit,
    /// Appended to this file (created when missing), so that a restarted
    /// node's log follows its earlier one.
    File(PathBuf),
}

/// How to start one `ringkv serve` process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `ringkv` binary.
    binary: PathBuf,
    /// A program and its arguments that run the binary (e.g. `ip netns
    /// exec SPACE`); empty to run the binary itself.
    wrapper: Vec<OsString>,
    /// Flags after `serve`.
    args: Vec<OsString>,
    /// Where its stderr goes.
    log: Log,
    /// Variables set in its environment, besides this process's.
    env: Vec<(OsString, OsString)>,
    /// How long it may take to print its listening line.
    start_timeout: Duration,
}

impl Launch {
    /// `binary serve`, logging to this process's stderr, with
    /// [`START_TIMEOUT`].
    pub fn new(binary: impl Into<PathBuf>) -> Launch {
        Launch {
            binary: binary.into(),
            wrapper: Vec::new(),
            args: Vec::new(),
            log: Log::Inherit,
            env: Vec::new(),
            start_timeout: START_TIMEOUT,
        }
    }

    /// Adds flags after `serve`.
    pub fn args<I, S>(mut self, args: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the binary through `wrapper` (its program first), e.g. `["ip",
    /// "netns", "exec", SPACE]`; the wrapper must exec the binary, so that
    /// the PID signalled is the node's.
    pub fn wrapper<I, S>(mut self, wrapper: I) -> Launch
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    /// Sends the node's stderr to `log`.
    pub fn log(mut self, log: Log) -> Launch {
        self.log = log;
        self
    }

    /// Sets `name` to `value` in the node's environment.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Launch {
        self.env.push((name.into(), value.into()));
        self
    }

    /// How long the node may take to print its listening line.
    pub fn start_timeout(mut self, timeout: Duration) -> Launch {
        self.start_timeout = timeout;
        self
    }

    /// Spawns the node and waits (up to the start timeout) for its
    /// listening line. On failure the process is killed and reaped, and the
    /// error names the log file when there is one.
    pub fn start(&self) -> Result<LocalNode> {
        let stderr = match &self.log {
            Log::Inherit => Stdio::inherit(),
            Log::File(path) => Stdio::from(open_log(path)?),
        };
        let mut command = match self.wrapper.split_first() {
            Some((program, words)) => {
                let mut command = Command::new(program);
                command.args(words).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("serve")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().map_err(|e| Error::Internal {
            what: format!("cannot start {}: {e}", self.binary.display()),
        })?;
        let lines = match child.stdout.take() {
            Some(stdout) => read_lines(stdout),
            None => {
                reap(&mut child);
                return Err(Error::Internal {
                    what: "the node's stdout was not captured".into(),
                });
            }
        };
        // From here a failure is reported by a `LocalNode`'s drop: killed.
        let mut node = LocalNode {
            child: Some(child),
            url: String::new(),
            port: 0,
            lines,
        };
        let line = match node.lines.recv_timeout(self.start_timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::Timeout {
                    what: format!(
                        "the node's listening line ({:?} after start){}",
                        self.start_timeout,
                        self.see_log()
                    ),
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Reaped here, so that the drop signals no recycled PID.
                let status = node
                    .child
                    .take()
                    .and_then(|mut c| c.wait().ok())
                    .map_or_else(|| "unknown".to_string(), |s| s.to_string());
                return Err(Error::Internal {
                    what: format!("the node exited at start ({status}){}", self.see_log()),
                });
            }
        };
        let url = line
            .strip_prefix(LISTENING)
            .ok_or_else(|| Error::Internal {
                what: format!(
                    "the node printed {line:?} instead of its listening line{}",
                    self.see_log()
                ),
            })?;
        node.port = port_of(url).ok_or_else(|| Error::Internal {
            what: format!("no port in the node's listening line {line:?}"),
        })?;
        node.url = url.to_string();
        Ok(node)
    }

    /// `; see LOG` when the log goes to a file.
    fn see_log(&self) -> String {
        match &self.log {
            Log::File(path) => format!("; see {}", path.display()),
            Log::Inherit => String::new(),
        }
    }
}

/// A running (or exited, not yet reaped) `ringkv serve` process.
#[derive(Debug)]
pub struct LocalNode {
    /// The process, until it is reaped.
    child: Option<Child>,
    /// What its listening line names: `http://HOST:PORT` or `https://…`.
    url: String,
    /// The port it listens on (TCP and UDP).
    port: u16,
    /// Its stdout lines after the first (at most [`KEPT_LINES`]).
    lines: Receiver<String>,
}

impl LocalNode {
    /// Its URL, as its listening line gave it (`http://HOST:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its address, `HOST:PORT` (the URL without its scheme).
    pub fn addr(&self) -> &str {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id, until it is reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether its process has not been reaped yet.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its next stdout line after the listening line (`serve` prints
    /// `redis protocol on ADDR` there), waiting up to `timeout`; `None`
    /// when none came.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the process, while it is
    /// not reaped.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a child we spawned and have not reaped, so
            // the PID cannot belong to another process.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().map_err(|e| Error::Internal {
            what: format!("checking node {}: {e}", self.url),
        })?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits for the process to exit on its own; its status (`None` when
    /// it was reaped already).
    pub fn wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        child.wait().map(Some).map_err(|e| Error::Internal {
            what: format!("waiting for node {}: {e}", self.url),
        })
    }

    /// Waits up to `limit` for the process to exit on its own; its status,
    /// or `None` while it still runs.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if self.child.is_none() {
                return Ok(None);
            }
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// SIGKILL (after SIGCONT, in case it is stopped) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            reap(&mut child);
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL if it still runs after
    /// `grace`. Its status, and whether it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Result<Stopped> {
        self.signal(libc::SIGTERM);
        self.finish(grace)
    }

    /// After SIGTERM: waits up to `grace`, then kills.
    fn finish(&mut self, grace: Duration) -> Result<Stopped> {
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(Stopped {
                status: Some(status),
                killed: false,
            });
        }
        let killed = self.child.is_some();
        self.kill();
        Ok(Stopped {
            status: None,
            killed,
        })
    }
}

impl Drop for LocalNode {
    /// A node still running when its owner goes away is killed and reaped.
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a node ended under [`LocalNode::stop`].
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// Its exit status when it exited by itself (`None`: killed, or reaped
    /// before).
    pub status: Option<ExitStatus>,
    /// It was still running after the grace period and got SIGKILL.
    pub killed: bool,
}

/// Stops every node in `nodes` at once: SIGTERM to all, then each gets up
/// to `grace` (counted from the signal) before SIGKILL. One result per
/// node, in order.
pub fn stop_all<'a>(
    nodes: impl IntoIterator<Item = &'a mut LocalNode>,
    grace: Duration,
) -> Vec<Result<Stopped>> {
    let nodes: Vec<&mut LocalNode> = nodes.into_iter().collect();
    for node in &nodes {
        node.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    nodes
        .into_iter()
        .map(|node| node.finish(deadline.saturating_duration_since(Instant::now())))
        .collect()
}

/// The port at the end of `url` (`http://127.0.0.1:PORT`).
fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim().parse().ok()
}

/// Opens `path` for appending, creating it.
fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Internal {
            what: format!("cannot open the log {}: {e}", path.display()),
        })
}

/// SIGCONT, then SIGKILL, then waits: a stopped process takes SIGKILL too,
/// but one resumed first also runs its exit without a pending stop.
fn reap(child: &mut Child) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads `stdout` on a thread of its own: the first line is sent at once,
/// later ones are kept while fewer than [`KEPT_LINES`] wait, and dropped
/// after that. The sender goes away at end of file (the node exited).
fn read_lines(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (sender, receiver): (SyncSender<String>, _) = std::sync::mpsc::sync_channel(KEPT_LINES);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else {
                break;
            };
            match sender.try_send(line) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                // Nobody reads any more; keep draining the pipe.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_the_listening_url() {
        assert_eq!(port_of("http://127.0.0.1:50140"), Some(50140));
        assert_eq!(port_of("https://[::1]:7000"), Some(7000));
        assert_eq!(port_of("http://127.0.0.1"), None);
    }

    #[test]
    fn a_program_that_exits_at_once_is_an_error_not_a_hang() {
        let err = Launch::new("/bin/true")
            .start_timeout(Duration::from_secs(10))
            .start()
            .expect_err("true prints no listening line");
        assert!(err.to_string().contains("exited at start"), "{err}");
    }

    #[test]
    fn a_wrong_first_line_is_an_error() {
        // `echo serve` prints "serve": not a listening line.
        let err = Launch::new("/bin/echo")
            .start()
            .expect_err("echo prints another line");
        assert!(
            err.to_string().contains("instead of its listening line"),
            "{err}"
        );
    }
}
