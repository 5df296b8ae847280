//! The Redis protocol front end (F24): `--resp-port`, RESP2 and (after
//! `HELLO 3`) RESP3, laid out like mini-redis: `frame.rs` knows the bytes,
//! `connection.rs` buffers them, `cmd/` gives them meaning, one file per
//! group of commands. Every command goes through the node's coordinator,
//! with the quorums and errors of the HTTP API.
//!
//! # Connections
//! The accept loop ([`serve`]) bounds connections with a semaphore
//! (`--resp-max-connections`: one more is told so and closed) and each
//! connection times out when idle (`--resp-idle-timeout`, which also bounds
//! how long one request may take to arrive). A request the decoder cannot
//! read (malformed, over a limit) is answered with a Redis-style error and
//! the connection is closed, since the stream cannot be resynchronised; an
//! error in a well-formed command leaves it open.
//!
//! # Pipelining
//! A client may send many requests before reading a reply. The handler
//! takes every whole request already buffered (up to [`PIPELINE_MAX`]) and
//! runs them in *waves*: the calls of a wave run at once, a call that
//! touches a key an earlier call of the wave writes (or writes a key one
//! reads) starts the next wave, and calls that change the connection or
//! walk the whole keyspace run alone. Replies go back in request order, in
//! one write. So a pipeline keeps its order where order is visible, and
//! the quorum round trips of its independent calls overlap.
//!
//! # What it does not do
//! No MOVED or ASK (every node serves every slot, see `cmd/cluster.rs`),
//! no atomic read-modify-write, transactions, scripts or pub/sub (see
//! `cmd/refused.rs`), one database.

pub mod cmd;
pub mod connection;
pub mod frame;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use self::cmd::{Access, Call, Session};
use self::connection::{Connection, ReadEnd};
use self::frame::{Frame, Protocol};
use crate::coordinator::Coordinator;
use crate::membership::Membership;

/// Most requests taken from one pipeline at a time.
pub const PIPELINE_MAX: usize = 1024;
/// Largest bulk string a request may carry (Redis's proto-max-bulk-len),
/// unless `--max-value-size` is smaller: values are held whole in memory
/// on their way through this front end.
pub const MAX_BULK_BYTES: u64 = 512 * 1024 * 1024;

/// Settings of the front end.
#[derive(Debug, Clone)]
pub struct RespOptions {
    /// The host clients reach this node by (CLUSTER SLOTS).
    pub host: String,
    /// The port it listens on.
    pub port: u16,
    /// Connections served at once.
    pub max_connections: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// FLUSHALL/FLUSHDB allowed.
    pub allow_flush: bool,
    /// Longest bulk string accepted.
    pub max_bulk: u64,
}

/// What every connection of this node shares.
pub struct Shared {
    /// Runs every command's reads and writes.
    pub coordinator: Coordinator,
    /// The members, their RESP addresses and figures.
    pub membership: Arc<Membership>,
    /// Settings.
    pub options: RespOptions,
    /// The node's API tokens, when it has any: then every command but
    /// AUTH, HELLO, QUIT and RESET needs a token with its scope.
    pub tokens: Option<crate::access::Tokens>,
    /// When the front end started (INFO uptime).
    pub started: Instant,
    /// Next CLIENT ID.
    next_id: AtomicU64,
    /// Connections accepted, ever.
    connections: AtomicU64,
    /// Connections refused at the limit, ever.
    rejected: AtomicU64,
    /// Commands run, ever.
    commands: AtomicU64,
    /// The open connections (CLIENT LIST); a std mutex, never held across
    /// an await.
    clients: Mutex<BTreeMap<u64, Session>>,
}

impl Shared {
    /// The front end's state for this node.
    pub fn new(
        coordinator: Coordinator,
        membership: Arc<Membership>,
        options: RespOptions,
        tokens: Option<crate::access::Tokens>,
    ) -> Shared {
        Shared {
            coordinator,
            membership,
            options,
            tokens,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts a command run.
    pub fn count_command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections accepted, commands run, connections refused.
    pub fn figures(&self) -> (u64, u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.commands.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }

    /// The open connections.
    pub fn clients(&self) -> Vec<Session> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Records a change of a connection's name or library.
    pub fn update_client(&self, session: &Session) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id, session.clone());
    }

    fn forget_client(&self, id: u64) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let permits = Arc::new(Semaphore::new(shared.options.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%err, "RESP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    handle(stream, peer.to_string(), shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut connection =
                        Connection::new(stream, 0, shared.coordinator.metrics().clone());
                    let _ = connection
                        .send_now(
                            &Frame::error("max number of clients reached"),
                            Protocol::Resp2,
                        )
                        .await;
                });
            }
        }
    }
    tracing::info!("RESP front end stopped accepting");
}

/// Serves one connection until it closes.
async fn handle(stream: tokio::net::TcpStream, addr: String, shared: Arc<Shared>) {
    let mut session = Session {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        name: None,
        protocol: Protocol::Resp2,
        lib: (None, None),
        addr: addr.clone(),
        closing: false,
        credential: None,
    };
    shared.update_client(&session);
    let mut connection = Connection::new(
        stream,
        shared.options.max_bulk,
        shared.coordinator.metrics().clone(),
    );
    let outcome = serve_connection(&mut connection, &shared, &mut session).await;
    if let Err(reason) = outcome {
        tracing::debug!(client = %addr, %reason, "RESP connection ended");
    }
    shared.forget_client(session.id);
}

async fn serve_connection(
    connection: &mut Connection,
    shared: &Arc<Shared>,
    session: &mut Session,
) -> Result<(), String> {
    loop {
        let requests = match connection
            .read_requests(PIPELINE_MAX, shared.options.idle_timeout)
            .await
        {
            Ok(requests) => requests,
            Err(ReadEnd::Closed) => return Ok(()),
            Err(ReadEnd::Broken(reason)) => return Err(reason),
            Err(ReadEnd::Bad(err)) => {
                // The stream cannot be resynchronised: say why, then close.
                let _ = connection
                    .send_now(&Frame::error(&err), session.protocol)
                    .await;
                return Err(err.to_string());
            }
        };
        run_pipeline(requests, connection, shared, session)
            .await
            .map_err(|e| e.to_string())?;
        connection.flush().await.map_err(|e| e.to_string())?;
        if session.closing {
            return Ok(());
        }
    }
}

/// A request, prepared: a call to run, or the reply already known.
enum Step {
    Call(Call),
    Reply(Frame),
}

/// Runs the requests of a pipeline in waves (see the module doc) and
/// queues their replies in order.
async fn run_pipeline(
    requests: Vec<Frame>,
    connection: &mut Connection,
    shared: &Arc<Shared>,
    session: &mut Session,
) -> std::io::Result<()> {
    let steps: Vec<Step> = requests
        .into_iter()
        // A blank inline line (telnet's Enter) has no reply.
        .filter(|frame| !matches!(frame, Frame::Array(items) if items.is_empty()))
        .map(|frame| match cmd::prepare(frame) {
            Ok(call) => Step::Call(call),
            Err(reply) => Step::Reply(reply),
        })
        .collect();
    let mut wave: Vec<Step> = Vec::new();
    let mut reads: HashSet<Bytes> = HashSet::new();
    let mut writes: HashSet<Bytes> = HashSet::new();
    for step in steps {
        if session.closing {
            break;
        }
        let call = match step {
            Step::Reply(reply) => {
                wave.push(Step::Reply(reply));
                continue;
            }
            Step::Call(call) => call,
        };
        // After the barriers before it ran: an AUTH earlier in the same
        // pipeline counts.
        if let Err(reply) = cmd::connection::authorize(shared, session, call.spec) {
            wave.push(Step::Reply(reply));
            continue;
        }
        let keys = call.keys();
        let access = call.spec.access;
        let conflicts = match access {
            Access::Barrier => true,
            Access::Free => false,
            Access::Read => keys.iter().any(|k| writes.contains(k)),
            Access::Write => keys.iter().any(|k| writes.contains(k) || reads.contains(k)),
        };
        if conflicts {
            run_wave(std::mem::take(&mut wave), connection, shared, session).await?;
            reads.clear();
            writes.clear();
        }
        if access == Access::Barrier {
            let operation = call.operation();
            let reply = cmd::counted(
                shared,
                operation,
                call.run_with_session(shared.clone(), session),
            )
            .await;
            connection.push(&reply, session.protocol).await?;
            continue;
        }
        match access {
            Access::Read => reads.extend(keys),
            Access::Write => writes.extend(keys),
            _ => {}
        }
        wave.push(Step::Call(call));
    }
    run_wave(wave, connection, shared, session).await
}

/// Runs the calls of one wave at once; queues the replies in order.
async fn run_wave(
    wave: Vec<Step>,
    connection: &mut Connection,
    shared: &Arc<Shared>,
    session: &Session,
) -> std::io::Result<()> {
    if wave.is_empty() {
        return Ok(());
    }
    let replies = futures::future::join_all(wave.into_iter().map(|step| {
        let (shared, session) = (shared.clone(), session.clone());
        async move {
            match step {
                Step::Reply(reply) => {
                    // Unknown, malformed or not allowed: the client's error.
                    let metrics = shared.coordinator.metrics();
                    metrics.resp_command_done("other", "client_error", Duration::ZERO);
                    reply
                }
                Step::Call(call) => {
                    let operation = call.operation();
                    cmd::counted(&shared, operation, call.run(shared.clone(), session)).await
                }
            }
        }
    }))
    .await;
    for reply in replies {
        connection.push(&reply, session.protocol).await?;
    }
    Ok(())
}
