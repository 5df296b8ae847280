//! Client load against a running cluster: the put/get mix and its
//! latency samples, shared by `ringkv bench` and the lab
//! (`examples/lab`).
//!
//! It owns the mix's key scheme (`bench/K`, keys drawn by a per-worker
//! xorshift, so runs are repeatable), how latencies are recorded
//! ([`Samples`], microseconds, failures counted apart) and read
//! ([`Samples::percentile`]), the clients spread over the nodes
//! ([`rotated_clients`]) and pseudo-random bodies made on the fly
//! ([`generated`]). It talks to nodes only through [`Client`]; it does not
//! start nodes (see [`crate::local`]) nor print anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::client::{Client, ClientOptions, Upload};
use crate::error::{Error, Result};

/// Latencies of one operation kind, in microseconds.
#[derive(Debug, Default)]
pub struct Samples {
    /// Successful operations' latencies (sorted once [`mix`] returns).
    pub micros: Vec<u32>,
    /// Failed operations.
    pub errors: u64,
}

impl Samples {
    /// Adds `other`'s latencies and failures to these (unsorted).
    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    /// The `p`th percentile of `sorted` latencies, in milliseconds (0 when
    /// there are none).
    pub fn percentile(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
    }
}

/// Runs `concurrency` keep-alive clients (spread over `clients`), each
/// putting `value` or getting one of `keys` keys (`bench/K`, a get with
/// probability `get_ratio`), until `stop` is set; the put and get
/// latencies, each sorted. A failed request is counted, not returned.
pub async fn mix(
    clients: &[Client],
    concurrency: usize,
    keys: usize,
    value: Bytes,
    get_ratio: f64,
    stop: Arc<AtomicBool>,
) -> Result<(Samples, Samples)> {
    if clients.is_empty() || keys == 0 {
        return Err(Error::InvalidInput {
            reason: "the mix needs at least one client and one key".into(),
        });
    }
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            let value = value.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut puts, mut gets) = (Samples::default(), Samples::default());
                let mut seed = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                while !stop.load(Ordering::Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let key = format!("bench/{}", seed % keys as u64);
                    let is_get = ((seed >> 32) as f64 / u32::MAX as f64) < get_ratio;
                    let begin = Instant::now();
                    let ok = if is_get {
                        client.get_bytes(&key).await.is_ok()
                    } else {
                        client
                            .put(&key, Upload::Bytes(value.clone()), None, None)
                            .await
                            .is_ok()
                    };
                    let samples = if is_get { &mut gets } else { &mut puts };
                    if ok {
                        samples
                            .micros
                            .push(begin.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        samples.errors += 1;
                    }
                }
                (puts, gets)
            })
        })
        .collect();
    let (mut puts, mut gets) = (Samples::default(), Samples::default());
    for worker in workers {
        let (p, g) = worker.await.map_err(|e| Error::Internal {
            what: format!("a client task of the mix failed: {e}"),
        })?;
        puts.merge(p);
        gets.merge(g);
    }
    puts.micros.sort_unstable();
    gets.micros.sort_unstable();
    Ok((puts, gets))
}

/// One client per node, each starting at its own node and failing over to
/// the others (with the caller's token and TLS settings, no discovery).
pub fn rotated_clients(nodes: &[String], options: &ClientOptions) -> Result<Vec<Client>> {
    (0..nodes.len())
        .map(|i| {
            let mut order = nodes.to_vec();
            order.rotate_left(i);
            Client::with_options(order, options.clone())
        })
        .collect()
}

/// `size` pseudo-random bytes, generated on the fly, 1 MiB at a time (the
/// same bytes on every call, so a reader can check them).
pub fn generated(size: u64) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    const PIECE: u64 = 1 << 20;
    futures::stream::unfold(
        (0u64, 0x2545_F491_4F6C_DD1Du64),
        move |(sent, mut state)| async move {
            if sent >= size {
                return None;
            }
            let len = PIECE.min(size - sent) as usize;
            let mut piece = Vec::with_capacity(len + 8);
            while piece.len() < len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                piece.extend_from_slice(&state.to_le_bytes());
            }
            piece.truncate(len);
            Some((Ok(Bytes::from(piece)), (sent + len as u64, state)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn percentiles_pick_the_rank_and_read_in_milliseconds() {
        let sorted: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(Samples::percentile(&sorted, 50.0), 50.0);
        assert_eq!(Samples::percentile(&sorted, 99.0), 99.0);
        assert_eq!(Samples::percentile(&sorted, 99.9), 100.0);
        assert_eq!(Samples::percentile(&sorted, 0.0), 1.0);
        assert_eq!(Samples::percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn rotated_clients_start_each_at_its_own_node() {
        let nodes: Vec<String> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .map(String::from)
            .to_vec();
        let clients = rotated_clients(&nodes, &ClientOptions::default()).expect("clients");
        let firsts: Vec<&str> = clients.iter().map(|c| c.nodes()[0].as_str()).collect();
        assert_eq!(firsts, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    }

    #[tokio::test]
    async fn generated_bytes_have_the_size_and_repeat() {
        let collect = |size| async move {
            let mut out = Vec::new();
            let mut pieces = Box::pin(generated(size));
            while let Some(piece) = pieces.next().await {
                out.extend_from_slice(&piece.expect("piece"));
            }
            out
        };
        let size = (1 << 20) + 5;
        let (a, b) = (collect(size).await, collect(size).await);
        assert_eq!(a.len() as u64, size);
        assert_eq!(a, b);
    }
}
