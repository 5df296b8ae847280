//! ringkv: a distributed hash table of equal nodes.
//!
//! Layers, bottom-up (see ARCHITECTURE.md for the flows through them):
//!
//! - [`error`], [`version`], [`ring`], [`key`], [`proto`], [`storage`]: pure
//!   data, placement and the local store; no networking. [`throttle`]
//!   paces background byte transfers (`--stream-rate`, `--repair-rate`).
//! - [`membership`] (gossip) and [`rpc`] (the node-to-node gRPC service).
//! - [`coordinator`]: quorum reads and writes, read repair, streaming.
//! - [`http`]: the public API; [`server`] wires a node together.
//! - [`client`] (used by the CLI, the bench and the tests) and [`cli`].

pub mod cli;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod http;
pub mod key;
pub mod lifecycle;
pub mod membership;
pub mod merkle;
pub mod proto;
pub mod ring;
pub mod rpc;
pub mod server;
pub mod storage;
pub mod throttle;
pub mod version;
