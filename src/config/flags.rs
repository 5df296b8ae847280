//! The flags of `ringkv serve` ([`ServeArgs`], parsed by clap; a TOML
//! file names the same flags), and the [`NodeConfig`] they make.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::{DEFAULT_MAX_VALUE_SIZE, DEFAULT_PORT, NodeConfig, parse_duration, parse_size};
use crate::ring::DEFAULT_TOKENS_PER_NODE;

/// Flags of `ringkv serve`.
#[derive(Debug, Clone, Parser)]
pub struct ServeArgs {
    /// Read settings from this TOML file (`ringkv config example` prints
    /// one); flags on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The name peers use to reach this node.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Listen address (default: --host when it is an IP address, else 0.0.0.0).
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// TCP port (HTTP API and node RPC) and UDP port (gossip); 0 picks a free one.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Join the cluster of these nodes (host:port, comma separated).
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Data directory (default: ./ringkv-HOST-PORT).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep everything in memory (tests and demos only: nothing survives a restart).
    #[arg(long, conflicts_with = "data_dir")]
    pub in_memory: bool,
    /// Acknowledge writes only once they are on disk (group-committed fsync).
    #[arg(long)]
    pub fsync: bool,
    /// Replication factor N when founding a cluster.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Zone of this node; replicas spread over zones first.
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Virtual nodes of this node.
    #[arg(long, default_value_t = DEFAULT_TOKENS_PER_NODE)]
    pub tokens: usize,
    /// Largest value accepted (e.g. 5GiB, 100MB).
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MAX_VALUE_SIZE)]
    pub max_value_size: u64,
    /// Free space kept on the data disk: writes that would leave less are
    /// refused with 507, so that the storage engine never runs out of room
    /// (it cannot recover from that without a restart).
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub disk_reserve: u64,
    /// Runs this node's write clock this many milliseconds ahead (negative:
    /// behind): clock-skew fault tests.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, hide = true)]
    pub clock_skew_ms: i64,
    /// Deadline of node-to-node calls (e.g. 5s, 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub rpc_timeout: Duration,
    /// Cluster name; nodes of other clusters are ignored.
    #[arg(long, default_value = "ringkv")]
    pub cluster_id: String,
    /// Time between gossip rounds; 250ms keeps a 10-node ring converging
    /// in well under a second at a few KB/s of traffic.
    #[arg(long, value_parser = parse_duration, default_value = "250ms")]
    pub gossip_interval: Duration,
    /// Most bytes per second streamed into this node when it gains ranges
    /// (e.g. 50MB); unlimited when unset.
    #[arg(long, value_parser = parse_size)]
    pub stream_rate: Option<u64>,
    /// Remove a member that has been down this long (e.g. 10m), re-replicating
    /// its ranges; never when unset.
    #[arg(long, value_parser = parse_duration)]
    pub auto_remove_after: Option<Duration>,
    /// What SIGTERM/SIGINT do: `leave` hands this node's ranges over and
    /// exits (F4); `stop` just stops, keeping its place (a whole-cluster
    /// shutdown, as `ringkv cluster` does on Ctrl-C).
    #[arg(long, value_enum, default_value_t = OnSignal::Leave)]
    pub on_signal: OnSignal,
    /// Keep no hints for replicas that miss a write: they catch up only by
    /// read repair and anti-entropy (tests of those use it).
    #[arg(long)]
    pub no_hints: bool,
    /// One read in this many asks all of a key's replicas instead of R of
    /// them, so that read repair also reaches the replicas a quorum read
    /// leaves out; 1 asks all on every read, 0 never.
    #[arg(long, default_value_t = 10)]
    pub full_read_every: u64,
    /// Turns ring-version fencing off: replicas take client reads and
    /// writes planned on any ring (fault tests, to show what fencing
    /// prevents).
    #[arg(long, hide = true)]
    pub no_ring_fence: bool,
    /// Compare this node's ranges with their other replicas (hash trees)
    /// about this often, jittered; `0` only on demand (`ringkv balance`).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub repair_interval: Duration,
    /// Drop tombstones this old once every replica of their range holds
    /// them (F13); a node away longer re-syncs its ranges when it returns.
    #[arg(long, value_parser = parse_duration, default_value = "10d")]
    pub tombstone_grace: Duration,
    /// Read back and check every value this node stores about this often,
    /// jittered; a corrupt copy is dropped and fetched again from another
    /// replica. `0` turns the scrub off (reads still check what they read).
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub scrub_interval: Duration,
    /// Most bytes per second the scrub reads (e.g. 32MB); `0` unlimited.
    #[arg(long, value_parser = parse_size, default_value = "32MB")]
    pub scrub_rate: u64,
    /// Most bytes per second of records this node's anti-entropy pushes to
    /// or pulls from other replicas (e.g. 10MB), so that a large repair
    /// leaves room for client requests; unlimited when unset or 0.
    #[arg(long, value_parser = parse_size)]
    pub repair_rate: Option<u64>,
    /// Keep keys this node no longer owns after a join or a change of N
    /// until `ringkv purge` (by default they go once every owner holds them).
    #[arg(long)]
    pub no_auto_purge: bool,
    /// API tokens, one per line as `SCOPE TOKEN` (scopes: read, write,
    /// admin, metrics; admin implies all). Once given, every endpoint but
    /// /health and /health/live needs `Authorization: Bearer TOKEN`.
    /// Read again on SIGHUP.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// The cluster secret (at least 32 random bytes, hex or raw; `ringkv
    /// secret` prints one), or RINGKV_CLUSTER_SECRET: it authenticates and
    /// encrypts all node-to-node traffic, gossip included. Needed unless
    /// the node binds a loopback address.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// A second secret accepted (never sent with) during a rotation.
    #[arg(long)]
    pub cluster_secret_file_next: Option<PathBuf>,
    /// Serve the Redis protocol (RESP2/RESP3) on this TCP port; 0 picks a
    /// free one. Off when unset.
    #[arg(long)]
    pub resp_port: Option<u16>,
    /// Redis protocol connections served at once; one more is told
    /// "max number of clients reached" and closed.
    #[arg(long, default_value_t = 10_000)]
    pub resp_max_connections: usize,
    /// Close a Redis protocol connection silent this long (it also bounds
    /// how long one request may take to arrive).
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub resp_idle_timeout: Duration,
    /// Allow FLUSHALL and FLUSHDB over the Redis protocol: a cluster-wide
    /// delete of every key (tombstones, like DEL).
    #[arg(long)]
    pub resp_allow_flush: bool,
    /// Serve the API and the page over HTTPS (HTTP/2 or 1.1 by ALPN) with
    /// this certificate chain (PEM); with --tls-key. Read again on SIGHUP.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Time between the samples of the status page's charts (90 kept: 15
    /// minutes at 10s); tests sample faster.
    #[arg(long, value_parser = parse_duration, default_value = "10s", hide = true)]
    pub chart_interval: Duration,
}

/// What the first SIGTERM/SIGINT does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnSignal {
    /// Leave the cluster gracefully, then exit.
    Leave,
    /// Stop serving and exit; the node stays a member (shown down).
    Stop,
}

impl ServeArgs {
    /// The validated node configuration.
    pub fn config(&self) -> NodeConfig {
        let bind = self.bind.unwrap_or_else(|| {
            self.host
                .parse::<IpAddr>()
                .unwrap_or(IpAddr::from([0, 0, 0, 0]))
        });
        NodeConfig {
            host: self.host.clone(),
            bind,
            port: self.port,
            join: self.join.clone(),
            data_dir: self.data_dir.clone(),
            in_memory: self.in_memory,
            fsync: self.fsync,
            replicas: self.replicas,
            zone: self.zone.clone(),
            tokens: self.tokens,
            max_value_size: self.max_value_size,
            disk_reserve: self.disk_reserve,
            clock_skew_ms: self.clock_skew_ms,
            rpc_timeout: self.rpc_timeout,
            cluster_id: self.cluster_id.clone(),
            gossip_interval: self.gossip_interval,
            stream_rate: self.stream_rate,
            auto_remove_after: self.auto_remove_after,
            hints: !self.no_hints,
            full_read_every: self.full_read_every,
            ring_fence: !self.no_ring_fence,
            repair_interval: (!self.repair_interval.is_zero()).then_some(self.repair_interval),
            scrub_interval: (!self.scrub_interval.is_zero()).then_some(self.scrub_interval),
            scrub_rate: (self.scrub_rate > 0).then_some(self.scrub_rate),
            repair_rate: self.repair_rate.filter(|r| *r > 0),
            auto_purge: !self.no_auto_purge,
            tombstone_grace: self.tombstone_grace,
            api_token_file: self.api_token_file.clone(),
            cluster_secret_file: self.cluster_secret_file.clone(),
            cluster_secret_env: std::env::var_os("RINGKV_CLUSTER_SECRET")
                .filter(|v| !v.is_empty())
                .map(|v| {
                    crate::secret::SecretText(
                        std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
                    )
                }),
            cluster_secret_file_next: self.cluster_secret_file_next.clone(),
            resp_port: self.resp_port,
            resp_max_connections: self.resp_max_connections,
            resp_idle_timeout: self.resp_idle_timeout,
            resp_allow_flush: self.resp_allow_flush,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            chart_interval: self.chart_interval,
        }
    }
}
