//! ringkv: a distributed hash table of equal nodes.
//!
//! Comments name features by id (F1 … F29): `docs/features.md` says what
//! each one is.
//!
//! Layers, bottom-up (see ARCHITECTURE.md for the flows through them); a
//! module uses only the layers below its own:
//!
//! - [`error`], [`version`], [`ring`], [`key`], [`proto`], [`merkle`] (hash
//!   trees of token ranges), [`storage`]: pure data, placement and the
//!   local store; no networking. [`throttle`] paces background byte
//!   transfers (`--stream-rate`, `--repair-rate`); [`stall`] notices that
//!   this process was stopped. [`metrics`] holds a node's Prometheus
//!   figures (no networking; the layers above record into it).
//!   [`access`]: API tokens and scopes; [`secret`]: the cluster secret;
//!   [`tls`]: TLS on the public port; [`config`]: the `serve` settings
//!   and their file.
//! - [`membership`] (gossip) and [`rpc`] (the node-to-node gRPC service).
//! - [`coordinator`]: quorum reads and writes, read repair, streaming;
//!   [`lifecycle`]: joins, leaves, removals, transfers, hints, repair,
//!   scrub and purge.
//! - [`http`]: the public API; [`resp`]: the Redis protocol front end;
//!   [`server`] wires a node together.
//! - [`client`] (used by the `ringkv` binary's subcommands, which live in
//!   the binary crate, and by the tests); [`config`]: the flags of `serve`
//!   and the node configuration they make.
//! - [`load`]: the put/get mix over [`client`] (`ringkv bench` and the
//!   lab); [`local`]: the one spawner of local `ringkv serve` processes
//!   (`ringkv cluster`, the lab in `examples/lab`, the integration tests).

pub mod access;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod http;
pub mod identity;
pub mod key;
pub mod lifecycle;
pub mod load;
pub mod local;
pub mod membership;
pub mod merkle;
pub mod metrics;
pub mod node_id;
pub mod proto;
pub mod resp;
pub mod ring;
pub mod rpc;
pub mod secret;
pub mod server;
pub mod stall;
pub mod storage;
pub mod throttle;
pub mod tls;
pub mod version;
