//! A node's configuration, validated once, then split into each module's
//! options.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

mod flags;

pub use flags::{OnSignal, ServeArgs};

/// Default port of the HTTP/gRPC listener and of gossip (F1).
pub const DEFAULT_PORT: u16 = 50140;
/// Default largest value: 5 GiB.
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// Everything `ringkv serve` needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The name peers use to reach this node.
    pub host: String,
    /// The address to listen on.
    pub bind: IpAddr,
    /// TCP and UDP port; 0 picks a free one (tests).
    pub port: u16,
    /// Seeds to join; empty founds a cluster.
    pub join: Vec<String>,
    /// Where data lives; `None` with `in_memory`, or the default directory.
    pub data_dir: Option<PathBuf>,
    /// Keep data in memory only (tests and demos).
    pub in_memory: bool,
    /// Acknowledge only once data is on disk (group commit).
    pub fsync: bool,
    /// Replication factor when founding a cluster.
    pub replicas: usize,
    /// This node's zone.
    pub zone: String,
    /// Virtual nodes of this node.
    pub tokens: usize,
    /// Largest value accepted, bytes.
    pub max_value_size: u64,
    /// Free bytes kept on the data disk; writes that would leave less get 507.
    pub disk_reserve: u64,
    /// Milliseconds this node's write clock runs ahead (negative: behind);
    /// for fault tests only.
    pub clock_skew_ms: i64,
    /// Deadline of node-to-node unary calls.
    pub rpc_timeout: Duration,
    /// Gossip cluster name; nodes of different clusters ignore each other.
    pub cluster_id: String,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Bytes per second a transfer into this node may use; `None`: no limit.
    pub stream_rate: Option<u64>,
    /// Remove members down this long, automatically.
    pub auto_remove_after: Option<Duration>,
    /// Keep hints for replicas that miss writes (F15).
    pub hints: bool,
    /// One read in this many asks all the key's replicas (0: none).
    pub full_read_every: u64,
    /// Ring-version fencing of client reads and writes (off only in fault
    /// tests, to show what it prevents).
    pub ring_fence: bool,
    /// Periodic anti-entropy; `None`: only on demand.
    pub repair_interval: Option<Duration>,
    /// Periodic scrub of this node's data; `None`: never.
    pub scrub_interval: Option<Duration>,
    /// Bytes per second the scrub reads; `None`: no limit.
    pub scrub_rate: Option<u64>,
    /// Bytes per second of records anti-entropy may move; `None`: no limit.
    pub repair_rate: Option<u64>,
    /// Purge keys no longer owned once the ring settles.
    pub auto_purge: bool,
    /// Age after which tombstones every replica holds are dropped.
    pub tombstone_grace: Duration,
    /// The API token file (`SCOPE TOKEN` lines); `None`: the API is open.
    pub api_token_file: Option<PathBuf>,
    /// The cluster secret's file (`--cluster-secret-file`).
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret itself (`RINGKV_CLUSTER_SECRET`).
    pub cluster_secret_env: Option<crate::secret::SecretText>,
    /// A second secret accepted during a rotation, never sent with.
    pub cluster_secret_file_next: Option<PathBuf>,
    /// The Redis protocol front end: its port (0 picks one), when on.
    pub resp_port: Option<u16>,
    /// RESP connections served at once.
    pub resp_max_connections: usize,
    /// RESP connections silent this long are closed.
    pub resp_idle_timeout: Duration,
    /// FLUSHALL/FLUSHDB over RESP allowed.
    pub resp_allow_flush: bool,
    /// The public port's TLS certificate chain (PEM); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The public port's TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Time between the samples of the status page's charts (they keep
    /// 90: 15 minutes at the default 10 s; tests sample faster).
    pub chart_interval: Duration,
}

impl NodeConfig {
    /// Checks values that flags alone cannot.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() || self.host.contains('/') {
            return Err(Error::invalid(format!(
                "--host {:?} is not a host name",
                self.host
            )));
        }
        if self.replicas == 0 {
            return Err(Error::invalid("--replicas must be at least 1"));
        }
        if self.tokens == 0 || self.tokens > 4096 {
            return Err(Error::invalid("--tokens must be 1..=4096"));
        }
        if self.max_value_size == 0 {
            return Err(Error::invalid("--max-value-size must be positive"));
        }
        if self.cluster_secret_file.is_some() && self.cluster_secret_env.is_some() {
            return Err(Error::invalid(
                "give the cluster secret once: --cluster-secret-file or RINGKV_CLUSTER_SECRET, not both",
            ));
        }
        if self.cluster_secret_file_next.is_some()
            && self.cluster_secret_file.is_none()
            && self.cluster_secret_env.is_none()
        {
            return Err(Error::invalid(
                "--cluster-secret-file-next is the second secret of a rotation: give the current one too (--cluster-secret-file)",
            ));
        }
        if self.resp_max_connections == 0 {
            return Err(Error::invalid("--resp-max-connections must be at least 1"));
        }
        if self.resp_port.is_some_and(|p| p != 0 && p == self.port) {
            return Err(Error::invalid("--resp-port must differ from --port"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::invalid(
                "--tls-cert and --tls-key go together: the certificate chain and its private key",
            ));
        }
        if self.chart_interval < Duration::from_millis(50) {
            return Err(Error::invalid("--chart-interval must be at least 50ms"));
        }
        for seed in &self.join {
            crate::ring::NodeId::parse(seed)
                .map_err(|_| Error::invalid(format!("--join {seed:?} is not host:port")))?;
        }
        Ok(())
    }

    /// The secrets this node holds, read from their file or the
    /// environment; `None` without a secret.
    pub fn secrets(&self) -> Result<Option<crate::secret::Secrets>> {
        use crate::secret::Keys;
        let current = match (&self.cluster_secret_file, &self.cluster_secret_env) {
            (Some(path), _) => Keys::from_file(path)?,
            (None, Some(text)) => Keys::from_text(&text.0).map_err(|e| match e {
                Error::InvalidInput { reason } => {
                    Error::invalid(format!("RINGKV_CLUSTER_SECRET: {reason}"))
                }
                other => other,
            })?,
            (None, None) => return Ok(None),
        };
        let next = self
            .cluster_secret_file_next
            .as_deref()
            .map(Keys::from_file)
            .transpose()?;
        Ok(Some(crate::secret::Secrets { current, next }))
    }

    /// The data directory: explicit, or one named after the node in the
    /// current directory (`ringkv-HOST-PORT`); `None` in memory.
    pub fn data_dir_for(&self, port: u16) -> Option<PathBuf> {
        if self.in_memory {
            return None;
        }
        Some(
            self.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("ringkv-{}-{}", self.host, port))),
        )
    }
}

/// Parses sizes like `5GiB`, `100MB`, `1024`, `64k`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses durations like `500ms`, `5s`, `2m`, `1h`, `10d`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        "d" => Duration::from_secs(number * 86400),
        other => return Err(format!("unknown duration unit {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("5GiB").unwrap(), 5 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("x").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10d").unwrap(), Duration::from_secs(864_000));
        assert!(parse_duration("1y").is_err());
    }
}
