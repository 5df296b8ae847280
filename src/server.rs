//! Wiring only: builds a node from its [`NodeConfig`], serves HTTP and gRPC
//! on one TCP port (routed by content type, F1), runs gossip on the same
//! port number over UDP, and shuts down in order.
//!
//! Start order: store (cleans half-written values) -> TCP listener (so peers
//! can reach us as soon as gossip announces us) -> gossip -> accept loop.
//! Shutdown order: stop accepting -> drain connections (bounded) -> stop
//! gossip -> flush the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

use crate::config::NodeConfig;
use crate::coordinator::{Coordinator, CoordinatorOptions};
use crate::error::{Error, Result};
use crate::http::{self, AppState};
use crate::lifecycle::{Lifecycle, LifecycleOptions, TransitionSummary};
use crate::membership::sealed::SealedTransport;
use crate::membership::{Membership, MembershipOptions};
use crate::metrics::Metrics;
use crate::proto::replica_server::ReplicaServer;
use crate::ring::{NodeId, Token};
use crate::rpc::noise::Acceptor;
use crate::rpc::{LocalReplica, MAX_RPC_MESSAGE_BYTES, Peers, ReplicaService, RpcOptions};
use crate::secret::{Refused, Rejections};
use crate::storage::{StorageOptions, Store};
use crate::version::Clock;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 4096;

/// Streams one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 1024;

/// How long shutdown waits for open requests to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at finding a port free for both TCP and UDP when `--port 0`.
const PORT_PICK_ATTEMPTS: usize = 50;
/// A node that is serving.
pub struct RunningNode {
    /// The node's identity.
    pub id: NodeId,
    /// The TCP address it listens on.
    pub local_addr: SocketAddr,
    /// Its Redis protocol address (`host:port`), when `--resp-port` is on.
    pub resp_addr: Option<String>,
    /// Stops the node when sent to (or dropped).
    shutdown: tokio::sync::oneshot::Sender<()>,
    /// Joins, leaves, removals, hints.
    lifecycle: Lifecycle,
    /// The serving task; ends after shutdown completes.
    task: tokio::task::JoinHandle<Result<()>>,
    /// The node's HTTP and gRPC services, for requests made in-process.
    routes: Routes,
}

/// The two services on the node's port, chosen per request by content type.
#[derive(Clone)]
struct Routes {
    /// Node-to-node gRPC (`application/grpc…`).
    grpc: axum::Router,
    /// The public API and the status page: everything else.
    api: axum::Router,
}

/// Which services a connection reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serves {
    /// Both, by content type (no cluster secret).
    Both,
    /// gRPC only (a peer's Noise session).
    Grpc,
    /// The public API only (a client's connection, with a secret).
    Api,
}

impl Routes {
    /// The hyper service of one connection reaching `serves`; a gRPC call
    /// on a public connection is refused and counted against `refuser`'s peer.
    fn service(
        self,
        serves: Serves,
        refuser: Option<(Acceptor, SocketAddr)>,
    ) -> tower::util::ServiceFn<
        impl FnMut(
            hyper::Request<Incoming>,
        ) -> futures::future::BoxFuture<
            'static,
            std::result::Result<axum::response::Response, std::convert::Infallible>,
        > + Clone
        + Send,
    > {
        tower::service_fn(move |request: hyper::Request<Incoming>| {
            let request = request.map(Body::new);
            let refused = serves == Serves::Api && is_grpc(&request);
            if refused && let Some((acceptor, peer)) = &refuser {
                acceptor.refused(Refused::Unsealed, *peer);
            }
            let response = match serves {
                _ if refused => None,
                Serves::Grpc => Some(self.call_router(self.grpc.clone(), request)),
                Serves::Api => Some(self.call_router(self.api.clone(), request)),
                Serves::Both => Some(self.call_router(self.pick(&request), request)),
            };
            let future: futures::future::BoxFuture<'static, _> = Box::pin(async move {
                Ok(match response {
                    Some(response) => response.await,
                    None => tonic::Status::unauthenticated(
                        "node-to-node calls need the cluster secret's handshake",
                    )
                    .into_http(),
                })
            });
            future
        })
    }

    /// The router a request of a connection serving both goes to.
    fn pick(&self, request: &hyper::Request<Body>) -> axum::Router {
        if is_grpc(request) {
            self.grpc.clone()
        } else {
            self.api.clone()
        }
    }

    fn call_router(
        &self,
        mut router: axum::Router,
        request: hyper::Request<Body>,
    ) -> impl std::future::Future<Output = axum::response::Response> + Send + use<> {
        async move {
            match router.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    }

    /// Answers one request as the accept loop would.
    fn call(
        &self,
        request: hyper::Request<Body>,
    ) -> impl std::future::Future<Output = axum::response::Response> + Send + use<> {
        let router = self.pick(&request);
        self.call_router(router, request)
    }
}

/// Whether a request is a gRPC call (by its content type).
fn is_grpc<B>(request: &hyper::Request<B>) -> bool {
    request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl RunningNode {
    /// Asks the node to stop and waits until it has.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        self.task
            .await
            .map_err(|e| Error::internal(format!("node task: {e}")))?
    }

    /// Leaves the cluster gracefully (F4); stop the node afterwards.
    pub async fn leave(&self, until_done: bool) -> Result<TransitionSummary> {
        self.lifecycle.leave(until_done).await
    }

    /// Answers a request without a socket, exactly as one arriving on the
    /// node's port (gRPC when its content type says so): for fuzzing and
    /// in-process checks of the parsers behind the port.
    pub fn call(
        &self,
        request: hyper::Request<Body>,
    ) -> impl std::future::Future<Output = axum::response::Response> + Send + use<> {
        self.routes.call(request)
    }

    /// Waits until the node answers `/health` as ready (asked in-process
    /// every 20 ms), at most `within`.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let health = hyper::Request::get("/health")
                .body(Body::empty())
                .map_err(|e| Error::invalid(e.to_string()))?;
            if self.call(health).await.status().is_success() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} to be ready", self.id),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the node stops on its own: it failed, or it left the
    /// cluster on request (`POST /leave`).
    pub async fn wait(&mut self) -> Result<()> {
        (&mut self.task)
            .await
            .map_err(|e| Error::internal(format!("node task: {e}")))?
    }
}

/// Binds TCP (and checks UDP) on `bind:port`; port 0 picks a port free for both.
/// A port in use is named with its protocol.
async fn bind(config: &NodeConfig) -> Result<TcpListener> {
    if config.port != 0 {
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| port_error("TCP", addr, e))?;
        // Gossip binds the same port over UDP later; say now if it cannot.
        std::net::UdpSocket::bind(addr).map_err(|e| port_error("UDP", addr, e))?;
        return Ok(listener);
    }
    for _ in 0..PORT_PICK_ATTEMPTS {
        let listener = TcpListener::bind((config.bind, 0)).await?;
        let port = listener.local_addr()?.port();
        if std::net::UdpSocket::bind((config.bind, port)).is_ok() {
            return Ok(listener);
        }
    }
    Err(Error::Io {
        source: std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "found no port free for both TCP and UDP",
        ),
    })
}

/// The error of a port that cannot be bound, naming protocol and address.
fn port_error(protocol: &'static str, addr: SocketAddr, err: std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::AddrInUse {
        return Error::PortInUse { protocol, addr };
    }
    Error::Io {
        source: std::io::Error::new(err.kind(), format!("cannot bind {protocol} {addr}: {err}")),
    }
}

/// Starts a node; it serves until [`RunningNode::stop`].
pub async fn start(config: NodeConfig) -> Result<RunningNode> {
    config.validate()?;
    let tokens = config
        .api_token_file
        .as_deref()
        .map(crate::access::Tokens::load)
        .transpose()?;
    let secrets = config.secrets()?.map(Arc::new);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::ServerTls::load(cert, key)?),
        _ => None,
    };
    match &secrets {
        None if !config.bind.is_loopback() => {
            return Err(Error::invalid(format!(
                "this node would listen on {}, beyond loopback, without a cluster secret: anyone \
                 reaching the port could join, gossip, call the replicas and read the traffic. \
                 Give every node the same --cluster-secret-file (`ringkv secret > FILE` makes \
                 one), or RINGKV_CLUSTER_SECRET; or --bind 127.0.0.1 for a local cluster",
                config.bind
            )));
        }
        None => tracing::warn!(
            "no cluster secret: node-to-node traffic is neither authenticated nor encrypted \
             (tolerated on loopback only; see --cluster-secret-file)"
        ),
        Some(secrets) => tracing::info!(
            secret = %secrets.current.fingerprint,
            next = secrets.next.as_ref().map(|k| k.fingerprint.as_str()),
            "node-to-node traffic sealed with the cluster secret (fingerprints, not the secret)"
        ),
    }
    // One set of figures per node, never global: nodes sharing a process
    // keep their own.
    let metrics = Metrics::new();
    let rejections = Rejections::new(metrics.clone());
    let listener = bind(&config).await?;
    let local_addr = listener.local_addr()?;
    let resp_listener = match config.resp_port {
        Some(port) => {
            let addr = SocketAddr::new(config.bind, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| port_error("TCP", addr, e))?;
            Some(listener)
        }
        None => None,
    };
    let id = NodeId::parse(&format!("{}:{}", config.host, local_addr.port()))?;
    let data_dir = config.data_dir_for(local_addr.port());
    let identity = crate::identity::load(data_dir.as_deref(), &id)?;
    let (had_tokens, bootstrapped) = (identity.tokens.is_some(), identity.bootstrapped);
    let keep: crate::membership::IdentitySink = {
        let (dir, id) = (data_dir.clone(), id.clone());
        Arc::new(move |tokens: Option<&[Token]>, bootstrapped| {
            crate::identity::save(dir.as_deref(), &id, tokens, bootstrapped)
        })
    };
    let store = Store::open(&StorageOptions {
        data_dir: data_dir.clone(),
        fsync: config.fsync,
        disk_reserve: config.disk_reserve,
    })?;
    let advertise_addr = tokio::net::lookup_host((config.host.as_str(), local_addr.port()))
        .await?
        .next()
        .ok_or_else(|| Error::invalid(format!("--host {} does not resolve", config.host)))?;
    let membership = Arc::new(
        Membership::start(MembershipOptions {
            node: id.clone(),
            listen_addr: SocketAddr::new(config.bind, local_addr.port()),
            advertise_addr,
            // A node is not its own seed: every node of a set may be given
            // the same --join list (a Kubernetes StatefulSet's first pod),
            // and the one it names founds the cluster.
            seeds: config
                .join
                .iter()
                .filter(|seed| seed.as_str() != id.as_str())
                .cloned()
                .collect(),
            zone: config.zone.clone(),
            tokens: identity.tokens,
            bootstrapped: identity.bootstrapped,
            token_count: config.tokens,
            keep,
            replicas: config.replicas,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            sealed: secrets.clone().map(|secrets| SealedTransport {
                secrets,
                rejections: rejections.clone(),
            }),
        })
        .await?,
    );
    let membership_for_serve = membership.clone();
    let clock =
        Arc::new(Clock::new(id.hash64()).skewed(config.clock_skew_ms.saturating_mul(1_000_000)));
    // Back after longer than the tombstone grace period: re-sync before
    // serving reads (lifecycle/gc.rs).
    let away = data_dir
        .as_deref()
        .and_then(crate::lifecycle::alive::away_for);
    let catching_up = Arc::new(AtomicBool::new(
        had_tokens && bootstrapped && away.is_some_and(|a| a > config.tombstone_grace),
    ));
    if let Some(away) = away.filter(|_| catching_up.load(Ordering::Relaxed)) {
        tracing::warn!(
            away_seconds = away.as_secs(),
            "this node was away longer than the tombstone grace period"
        );
    }
    let local = LocalReplica {
        store: store.clone(),
        clock,
        catching_up: catching_up.clone(),
    };
    let peers = Peers::new(
        RpcOptions {
            timeout: config.rpc_timeout,
            secrets: secrets.clone(),
            ..RpcOptions::default()
        },
        metrics.clone(),
    );
    let coordinator = Coordinator::new(
        id.clone(),
        membership.clone(),
        local.clone(),
        peers,
        CoordinatorOptions {
            max_value_size: config.max_value_size,
            hints: config.hints,
            ring_fence: config.ring_fence,
            full_read_every: config.full_read_every,
        },
        metrics.clone(),
    );
    let lifecycle = Lifecycle::new(
        membership.clone(),
        coordinator.clone(),
        store.clone(),
        LifecycleOptions {
            stream_rate: config.stream_rate,
            auto_remove_after: config.auto_remove_after,
            repair_interval: config.repair_interval,
            scrub_interval: config.scrub_interval,
            scrub_rate: config.scrub_rate,
            repair_rate: config.repair_rate,
            auto_purge: config.auto_purge,
            tombstone_grace: config.tombstone_grace,
            data_dir: data_dir.clone(),
            catching_up,
        },
    );
    let grpc = tonic::service::Routes::new(
        ReplicaServer::new(ReplicaService {
            local,
            node: id.clone(),
            sync: Arc::new(lifecycle.clone()),
            stall: coordinator.stall_watch(),
            metrics: metrics.clone(),
            fence: config.ring_fence.then(|| membership.clone()),
        })
        .max_decoding_message_size(MAX_RPC_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RPC_MESSAGE_BYTES),
    )
    .into_axum_router()
    .layer(axum::middleware::from_fn(crate::rpc::deadline::keep));
    let left = Arc::new(tokio::sync::Notify::new());
    let stall_watch = coordinator.stall_watch();
    stall_watch.start()?;
    // The Redis protocol front end stops accepting when the node stops.
    let (resp_stop, mut resp_stopped) = tokio::sync::watch::channel(false);
    let mut resp_addr = None;
    if let Some(listener) = resp_listener {
        let port = listener.local_addr()?.port();
        let addr = format!("{}:{port}", config.host);
        membership.set_resp(addr.clone()).await;
        let shared = Arc::new(crate::resp::Shared::new(
            coordinator.clone(),
            membership.clone(),
            crate::resp::RespOptions {
                host: config.host.clone(),
                port,
                max_connections: config.resp_max_connections,
                idle_timeout: config.resp_idle_timeout,
                allow_flush: config.resp_allow_flush,
                max_bulk: config.max_value_size.min(crate::resp::MAX_BULK_BYTES),
            },
            tokens.clone(),
        ));
        tokio::spawn(crate::resp::serve(listener, shared, async move {
            let _ = resp_stopped.wait_for(|stopped| *stopped).await;
        }));
        tracing::info!(node = %id, resp = %addr, "serving the Redis protocol");
        resp_addr = Some(addr);
    }
    let charts: http::chart::SharedCharts = Arc::new(std::sync::Mutex::new(
        crate::metrics::history::Charts::new(id.clone(), config.chart_interval.as_millis() as u64),
    ));
    let sampler = tokio::spawn(http::chart::sample_forever(
        metrics.clone(),
        membership.clone(),
        charts.clone(),
    ));
    let api = http::router(AppState::new(http::Shared {
        node: id.clone(),
        coordinator,
        store: store.clone(),
        membership: membership.clone(),
        lifecycle: lifecycle.clone(),
        left: left.clone(),
        metrics,
        charts,
        tokens: tokens.clone(),
    }));
    lifecycle.spawn_tasks();
    let reloader = spawn_reloader(Reloadable {
        tokens,
        tls: tls.clone(),
    })?;
    tracing::info!(node = %id, addr = %local_addr, data_dir = ?data_dir, "node started");
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        let fatal = membership.fatal();
        let why = tokio::select! {
            _ = shutdown_rx => Ok(()),
            _ = left.notified() => {
                tracing::info!("left the cluster on request; stopping");
                Ok(())
            }
            reason = fatal => Err(Error::invalid(reason)),
        };
        stall_watch.stop();
        sampler.abort();
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        let _ = resp_stop.send(true);
        why
    };
    let routes = Routes { grpc, api };
    let acceptor = secrets.map(|secrets| Acceptor::new(secrets, rejections));
    let task = tokio::spawn(serve(
        listener,
        routes.clone(),
        acceptor,
        tls,
        stop,
        membership_for_serve,
        store,
    ));
    Ok(RunningNode {
        id,
        local_addr,
        resp_addr,
        shutdown: shutdown_tx,
        lifecycle,
        task,
        routes,
    })
}

/// One connection of a node with a cluster secret or TLS, told apart by
/// its first bytes: the Noise preamble is a peer's session (gRPC only); a
/// TLS handshake record a client's HTTPS connection; `PRI ` (HTTP/2 in
/// clear) a peer's h2c connection when there is no secret; anything else a
/// client's plain HTTP: the public API without TLS, a 400 saying to use
/// HTTPS with it.
async fn serve_classified(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    routes: Routes,
    builder: &auto::Builder<TokioExecutor>,
    acceptor: Option<Acceptor>,
    tls: Option<crate::tls::ServerTls>,
    watcher: hyper_util::server::graceful::Watcher,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let preamble = crate::rpc::noise::PREAMBLE;
    let mut first = [0u8; 4];
    let mut got = 0;
    let read = async {
        while got < first.len() {
            match stream.read(&mut first[got..]).await? {
                0 => break,
                n => got += n,
            }
            let noise = first[..got] == preamble[..got];
            let h2c = first[..got] == b"PRI "[..got];
            if !noise && !h2c {
                break;
            }
        }
        std::io::Result::Ok(())
    };
    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, read).await {
        Ok(Ok(())) if got > 0 => {}
        // Idle, closed at once, or broken: nothing to serve.
        _ => return Ok(()),
    }
    let first = &first[..got];
    let rewound = Rewind {
        prefix: first.to_vec(),
        inner: stream,
    };
    if first == preamble
        && let Some(acceptor) = &acceptor
    {
        let Some(session) = acceptor.accept(rewound.inner, peer).await else {
            return Ok(());
        };
        let service = routes.service(Serves::Grpc, None);
        let connection = builder.serve_connection_with_upgrades(
            TokioIo::new(session),
            TowerToHyperService::new(service),
        );
        return watcher.watch(connection.into_owned()).await;
    }
    // With a secret, clients reach the API only; without, a connection may
    // also carry a peer's gRPC (loopback clusters).
    let public = match &acceptor {
        Some(_) => Serves::Api,
        None => Serves::Both,
    };
    let refuser = acceptor.clone().map(|a| (a, peer));
    if let Some(tls) = &tls {
        if first[0] == crate::tls::HANDSHAKE_RECORD {
            let stream = match tls.acceptor().accept(rewound).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return Ok(());
                }
            };
            let service = routes.service(public, refuser);
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            return watcher.watch(connection.into_owned()).await;
        }
        if first != b"PRI " || acceptor.is_some() {
            let mut stream = rewound.inner;
            let _ = stream.write_all(&crate::tls::plain_http_refusal()).await;
            let _ = stream.shutdown().await;
            return Ok(());
        }
        // A peer's h2c without a secret (loopback): its gRPC only.
        let service = routes.service(Serves::Grpc, None);
        let connection = builder.serve_connection_with_upgrades(
            TokioIo::new(rewound),
            TowerToHyperService::new(service),
        );
        return watcher.watch(connection.into_owned()).await;
    }
    let service = routes.service(public, refuser);
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(rewound), TowerToHyperService::new(service));
    watcher.watch(connection.into_owned()).await
}

/// A stream whose first bytes were read already: they are read again first.
struct Rewind<S> {
    /// Bytes read to classify the connection, handed out before `inner`'s.
    prefix: Vec<u8>,
    /// The connection.
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What SIGHUP reads again.
struct Reloadable {
    /// The API token file, when given.
    tokens: Option<crate::access::Tokens>,
    /// The TLS certificate and key, when given.
    tls: Option<crate::tls::ServerTls>,
}

/// Reads the files of `what` again on every SIGHUP (a failed reload keeps
/// what was in force, with an error in the log); `None` when there is
/// nothing to reload, so that SIGHUP keeps its default action then.
fn spawn_reloader(what: Reloadable) -> Result<Option<tokio::task::JoinHandle<()>>> {
    use tokio::signal::unix::{SignalKind, signal};
    if what.tokens.is_none() && what.tls.is_none() {
        return Ok(None);
    }
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(Some(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some(tokens) = &what.tokens {
                match tokens.reload() {
                    Ok(count) => tracing::info!(tokens = count, "API tokens reloaded"),
                    Err(err) => {
                        tracing::error!(%err, "API tokens not reloaded; the previous ones stay in force")
                    }
                }
            }
            if let Some(tls) = &what.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(err) => tracing::error!(
                        %err,
                        "TLS certificate not reloaded; the previous one stays in force"
                    ),
                }
            }
        }
    })))
}

/// How long a new connection may take to send its first 4 bytes, which
/// tell a peer's Noise session from a client's request (browsers open
/// connections ahead of use and may keep them idle a while).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept loop: one hyper connection (HTTP/1 or h2c) per TCP connection.
/// Without a secret each request is routed to gRPC or the public API by
/// its content type. With one (`acceptor`), a connection whose first bytes
/// are the Noise preamble is a peer's: after the handshake it carries
/// gRPC only; any other connection is a client's and carries the public
/// API only (a gRPC call there is refused as unauthenticated).
async fn serve(
    listener: TcpListener,
    routes: Routes,
    acceptor: Option<Acceptor>,
    tls: Option<crate::tls::ServerTls>,
    shutdown: impl std::future::Future<Output = Result<()>> + Send,
    membership: Arc<Membership>,
    store: Store,
) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut outcome = Ok(());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS)
        // A peer cancels the calls it no longer waits for (a deadline
        // passed); under load many are reset before this node accepts them.
        // h2's default (20) then answers GOAWAY and every call in flight on
        // the connection fails. As many as it may open is still bounded.
        .max_pending_accept_reset_streams(MAX_STREAMS as usize)
        .initial_stream_window_size(crate::rpc::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::rpc::CONNECTION_WINDOW_BYTES);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            result = &mut shutdown => { outcome = result; break }
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            result = &mut shutdown => { outcome = result; break }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let (routes, builder, acceptor) = (routes.clone(), builder.clone(), acceptor.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match (acceptor, tls) {
                (None, None) => {
                    let service = routes.service(Serves::Both, None);
                    let connection = builder.serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service),
                    );
                    watcher.watch(connection.into_owned()).await
                }
                (acceptor, tls) => {
                    serve_classified(stream, peer, routes, &builder, acceptor, tls, watcher).await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down: draining connections");
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in time");
    }
    membership.shutdown();
    // Tables instead of a journal to replay: a faster next start.
    let flushing = store.clone();
    match tokio::task::spawn_blocking(move || flushing.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(%err, "could not flush the store; the next start replays its journal")
        }
        Err(err) => tracing::warn!(%err, "the store flush did not finish"),
    }
    store.persist()?;
    tracing::info!("stopped");
    outcome
}
