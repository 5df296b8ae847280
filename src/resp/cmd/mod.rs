//! What RESP commands mean: one file per group (connection, server,
//! strings, keys, cluster, refused), all going through the node's
//! [`Coordinator`] with the same quorums (majority) and the same errors as
//! the HTTP API.
//!
//! [`prepare`] turns a request frame into a [`Call`] (or the error reply of
//! an unknown command or a wrong arity); [`Call::run`] runs it. Calls that
//! touch connection state get the [`Session`]; the others run beside each
//! other in a pipeline (see `mod.rs`).

pub mod cluster;
pub mod connection;
pub mod keys;
pub mod refused;
pub mod server;
pub mod string;
pub mod table;

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Shared;
use super::frame::{Frame, Protocol};
use crate::coordinator::{Quorum, ReadResult};
use crate::error::Error;
pub use table::{Access, Spec};

tokio::task_local! {
    /// The outcome of the ringkv error the running command's reply reports,
    /// set by [`error_reply`] and read by [`counted`] (a command's error
    /// reply says nothing of whether the client or the cluster failed).
    static FAILURE: Cell<Option<&'static str>>;
}

/// Runs `reply`, the reply to a command counted under `operation` (one of
/// the charts' operations), and counts it in the node's figures: its
/// outcome (`ok`; the status class of a ringkv error; `client_error` for
/// any other error reply) and its time.
pub async fn counted(
    shared: &Shared,
    operation: &'static str,
    reply: impl Future<Output = Frame>,
) -> Frame {
    let started = Instant::now();
    let (reply, failure) = FAILURE
        .scope(Cell::new(None), async {
            let reply = reply.await;
            (reply, FAILURE.with(Cell::get))
        })
        .await;
    let outcome = match (&reply, failure) {
        (_, Some(outcome)) => outcome,
        (Frame::Error(_), None) => "client_error",
        _ => "ok",
    };
    shared
        .coordinator
        .metrics()
        .resp_command_done(operation, outcome, started.elapsed());
    reply
}

/// What the server remembers of one connection.
#[derive(Debug, Clone)]
pub struct Session {
    /// CLIENT ID.
    pub id: u64,
    /// CLIENT SETNAME.
    pub name: Option<String>,
    /// HELLO 2|3.
    pub protocol: Protocol,
    /// CLIENT SETINFO lib-name / lib-ver.
    pub lib: (Option<String>, Option<String>),
    /// The peer's address.
    pub addr: String,
    /// Set by QUIT: close once the reply is out.
    pub closing: bool,
    /// The token of the last successful AUTH (checked again at each
    /// command: see [`connection::authorize`]).
    pub credential: Option<connection::Credential>,
}

/// A request ready to run.
#[derive(Debug, Clone)]
pub struct Call {
    /// The command.
    pub spec: &'static Spec,
    /// Its arguments (the name left out).
    pub args: Vec<Bytes>,
}

/// The call in `frame`, or the error reply to send instead.
pub fn prepare(frame: Frame) -> Result<Call, Frame> {
    let Frame::Array(items) = frame else {
        return Err(Frame::error(
            "Protocol error: expected an array of bulk strings",
        ));
    };
    let mut words = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Frame::Bulk(b) => words.push(b),
            Frame::Simple(s) => words.push(Bytes::from(s)),
            Frame::Integer(n) => words.push(Bytes::from(n.to_string())),
            _ => return Err(Frame::error("Protocol error: expected bulk strings")),
        }
    }
    let Some(first) = words.first() else {
        return Err(Frame::error("Protocol error: an empty request"));
    };
    let name = String::from_utf8_lossy(first).to_ascii_lowercase();
    let Some(spec) = table::lookup(&name) else {
        if let Some(kind) = table::other_type(&name) {
            return Ok(Call {
                spec: &refused::OTHER_TYPE,
                args: std::iter::once(Bytes::from(kind))
                    .chain(std::iter::once(Bytes::from(name)))
                    .chain(words.into_iter().skip(1))
                    .collect(),
            });
        }
        return Err(unknown_command(&words));
    };
    if !spec.arity_ok(words.len()) {
        return Err(Frame::error(format!(
            "wrong number of arguments for '{name}' command"
        )));
    }
    words.remove(0);
    Ok(Call { spec, args: words })
}

/// Redis's answer to a command it does not know.
fn unknown_command(words: &[Bytes]) -> Frame {
    let name = String::from_utf8_lossy(&words[0]);
    let args: Vec<String> = words[1..]
        .iter()
        .take(10)
        .map(|w| format!("'{}'", String::from_utf8_lossy(w)))
        .collect();
    Frame::error(format!(
        "unknown command '{name}', with args beginning with: {}",
        args.join(" ")
    ))
}

impl Call {
    /// The charts' operation it counts under: `get` for a command that
    /// reads keys, `put` for one that writes them, `delete` for DEL and
    /// UNLINK, `other` for the rest.
    pub fn operation(&self) -> &'static str {
        match (self.spec.name, self.spec.access) {
            ("del" | "unlink", _) => "delete",
            (_, Access::Read) => "get",
            (_, Access::Write) => "put",
            _ => "other",
        }
    }

    /// The keys it reads or writes, for the pipeline's ordering.
    pub fn keys(&self) -> Vec<Bytes> {
        self.spec
            .key_indexes(self.args.len())
            .into_iter()
            .filter_map(|i| self.args.get(i).cloned())
            .collect()
    }

    /// Runs a call that needs the connection's state.
    pub async fn run_with_session(self, shared: Arc<Shared>, session: &mut Session) -> Frame {
        match self.spec.name {
            "quit" => {
                session.closing = true;
                Frame::ok()
            }
            "select" => connection::select(&self.args),
            "hello" => connection::hello(&shared, session, &self.args),
            "auth" => connection::auth(&shared, session, &self.args),
            "client" => connection::client(&shared, session, &self.args),
            "reset" => {
                session.protocol = Protocol::Resp2;
                session.name = None;
                session.credential = None;
                Frame::Simple("RESET".into())
            }
            _ => self.run(shared, session.clone()).await,
        }
    }

    /// Runs a call that leaves the connection's state alone (`session` is a
    /// copy, for the figures some replies show).
    pub async fn run(self, shared: Arc<Shared>, session: Session) -> Frame {
        shared.count_command();
        if !self.spec.served {
            return refused::reply(&shared, &self).await;
        }
        let ctx = Ctx { shared, session };
        let args = &self.args;
        match self.spec.name {
            "ping" => connection::ping(args, ctx.session.protocol),
            "echo" => Frame::Bulk(args[0].clone()),
            "readonly" | "readwrite" => Frame::ok(),
            "command" => server::command(args),
            "info" => server::info(&ctx, args),
            "dbsize" => server::dbsize(&ctx),
            "flushall" | "flushdb" => server::flush(&ctx, self.spec.name).await,
            "config" => server::config(&ctx, args),
            "time" => server::time(),
            "get" => string::get(&ctx, args).await,
            "set" => string::set(&ctx, args).await,
            "setex" | "psetex" => string::setex(&ctx, self.spec.name, args).await,
            "setnx" => string::setnx(&ctx, args).await,
            "getset" => string::getset(&ctx, args).await,
            "getdel" => string::getdel(&ctx, args).await,
            "getex" => string::getex(&ctx, args).await,
            "mget" => string::mget(&ctx, args).await,
            "mset" => string::mset(&ctx, args).await,
            "strlen" => string::strlen(&ctx, args).await,
            "getrange" | "substr" => string::getrange(&ctx, args).await,
            "del" | "unlink" => keys::del(&ctx, args).await,
            "exists" => keys::exists(&ctx, args).await,
            "type" => keys::key_type(&ctx, args).await,
            "expire" | "pexpire" | "expireat" | "pexpireat" => {
                keys::expire(&ctx, self.spec.name, args).await
            }
            "expiretime" | "pexpiretime" => keys::expiretime(&ctx, self.spec.name, args).await,
            "ttl" | "pttl" => keys::ttl(&ctx, self.spec.name, args).await,
            "persist" => keys::persist(&ctx, args).await,
            "scan" => keys::scan(&ctx, args).await,
            "keys" => keys::keys(&ctx, args).await,
            "cluster" => cluster::cluster(&ctx, args),
            other => Frame::error(format!("'{other}' is known but not wired")),
        }
    }
}

/// What a command runs with.
pub struct Ctx {
    /// The node's front-end state.
    pub shared: Arc<Shared>,
    /// A copy of the connection's state.
    pub session: Session,
}

impl Ctx {
    /// The newest value of `key` (`None`: absent or expired), its bytes
    /// fetched whole (RESP has no streamed replies; the size is bounded by
    /// the bulk limit checked when it was written or here).
    pub async fn read(&self, key: &str) -> Result<Option<(ReadResult, Bytes)>, Frame> {
        let coordinator = &self.shared.coordinator;
        let found = match coordinator.get(key, Quorum::Majority).await {
            Ok(found) => found,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(error_reply(&err)),
        };
        if let Some(value) = &found.value {
            let value = value.clone();
            return Ok(Some((found, value)));
        }
        if found.meta.size > self.shared.options.max_bulk {
            return Err(Frame::error(format!(
                "the value of this key is {} bytes, more than a RESP reply may carry here \
                 ({} bytes): read it over HTTP",
                found.meta.size, self.shared.options.max_bulk
            )));
        }
        let mut stream = coordinator
            .open_value(&found.meta, &found.sources, 0, 0)
            .await
            .map_err(|e| error_reply(&e))?;
        let mut value = bytes::BytesMut::with_capacity(found.meta.size as usize);
        use futures::StreamExt;
        while let Some(piece) = stream.next().await {
            value.extend_from_slice(&piece.map_err(|e| error_reply(&e))?);
        }
        Ok(Some((found, value.freeze())))
    }

    /// The metadata of `key`'s newest value, without its bytes when large.
    pub async fn meta(&self, key: &str) -> Result<Option<ReadResult>, Frame> {
        match self.shared.coordinator.get(key, Quorum::Majority).await {
            Ok(found) => Ok(Some(found)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(error_reply(&err)),
        }
    }

    /// Cluster time, ms.
    pub fn now_ms(&self) -> u64 {
        self.shared.coordinator.cluster_now_ms()
    }
}

/// A key argument as a ringkv key (UTF-8, 1–1024 bytes).
pub fn key_of(arg: &Bytes) -> Result<String, Frame> {
    let key = std::str::from_utf8(arg).map_err(|_| {
        Frame::error("ringkv keys are UTF-8 text: this key is not (its bytes are not UTF-8)")
    })?;
    crate::key::validate(key).map_err(|e| Frame::error(e.to_string()))?;
    Ok(key.to_string())
}

/// An integer argument, or Redis's error for one that is not.
pub fn integer(arg: &Bytes) -> Result<i64, Frame> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Frame::error("value is not an integer or out of range"))
}

/// An argument in upper case, for options.
pub fn upper(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

/// A ringkv error as the reply a Redis client understands: the same
/// message as the HTTP API's `error`, under `TRYAGAIN` when another
/// attempt may succeed (cluster clients retry those), else `ERR`.
pub fn error_reply(err: &Error) -> Frame {
    // Outside a counted command (never in the server), nothing to tell.
    let _ =
        FAILURE.try_with(|failure| failure.set(Some(crate::metrics::outcome(err.http_status()))));
    let message = match err {
        Error::Unavailable {
            answered, failed, ..
        } => {
            let failed: Vec<String> = failed
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect();
            format!(
                "{err} (answered: {}; failed: {})",
                if answered.is_empty() {
                    "none".to_string()
                } else {
                    answered
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                if failed.is_empty() {
                    "none".to_string()
                } else {
                    failed.join("; ")
                }
            )
        }
        other => other.to_string(),
    };
    if err.is_retryable() {
        Frame::coded("TRYAGAIN", message)
    } else {
        Frame::error(message)
    }
}
