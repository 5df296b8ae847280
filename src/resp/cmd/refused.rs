//! Redis commands ringkv does not serve, each refused with the reason:
//! a last-writer-wins store cannot do an atomic read-modify-write (INCR,
//! APPEND, SETRANGE…) or a multi-key transaction (MULTI, WATCH, RENAME,
//! MSETNX…), and doing them as a read then a write would silently lose
//! updates under concurrency. Commands of the other data types answer
//! `WRONGTYPE` on an existing key (every value here is a string).

use bytes::Bytes;

use super::table::{Access, Spec};
use super::{Call, Frame, error_reply};
use crate::coordinator::Quorum;
use crate::error::Error;
use crate::resp::Shared;

/// The spec that carries a command of another data type: its arguments
/// are the type, the command's name, then its own arguments.
pub static OTHER_TYPE: Spec = Spec {
    name: "other-type",
    arity: -1,
    access: Access::Barrier,
    keys: (3, 3, 1),
    group: "generic",
    summary: "a command of a data type ringkv does not store",
    args: &[],
    served: false,
};

/// Why `name` is refused.
fn reason(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    match name {
        "incr" | "incrby" | "incrbyfloat" | "decr" | "decrby" | "append" | "setrange" => format!(
            "{upper} needs an atomic read-modify-write, which ringkv (last writer wins, no \
             locks) cannot give: done as a read then a write, concurrent clients would \
             silently lose updates. Read the value, compute, and SET it (with your own \
             versioning if writers race)"
        ),
        "msetnx" | "rename" | "renamenx" | "copy" | "move" | "lcs" => format!(
            "{upper} needs several keys changed (or compared) atomically; ringkv keeps keys \
             apart, on different nodes, with no multi-key atomicity"
        ),
        "multi" | "exec" | "discard" | "watch" | "unwatch" => format!(
            "{upper}: ringkv has no transactions (no multi-key atomicity, no optimistic \
             locking): each command stands alone"
        ),
        "eval" | "evalsha" | "eval_ro" | "script" | "function" | "fcall" => format!(
            "{upper}: ringkv runs no scripts (a script is a transaction, which it cannot give)"
        ),
        "subscribe" | "psubscribe" | "ssubscribe" | "publish" | "spublish" | "pubsub" => {
            format!("{upper}: ringkv has no pub/sub")
        }
        "wait" => "WAIT: every write is acknowledged by a majority of its replicas already; \
             there is no asynchronous replication to wait for"
            .to_string(),
        "randomkey" | "touch" | "object" | "dump" | "restore" | "sort" | "swapdb" => {
            format!("{upper} is not supported by ringkv")
        }
        "save" | "bgsave" | "bgrewriteaof" | "shutdown" | "monitor" | "debug" | "replicaof"
        | "slaveof" | "sync" | "psync" | "acl" | "asking" => format!(
            "{upper} is not supported: ringkv's nodes are run with their flags and HTTP API \
             (ringkv --help), not through the Redis protocol"
        ),
        other => format!("{} is not supported by ringkv", other.to_ascii_uppercase()),
    }
}

/// The reply to a refused call.
pub async fn reply(shared: &Shared, call: &Call) -> Frame {
    if call.spec.name != OTHER_TYPE.name {
        return Frame::error(reason(call.spec.name));
    }
    let kind = String::from_utf8_lossy(&call.args[0]).into_owned();
    let name = String::from_utf8_lossy(&call.args[1]).to_ascii_uppercase();
    let key: Option<&Bytes> = call.args.get(2);
    let exists = match key.map(|k| std::str::from_utf8(k).map(str::to_string)) {
        Some(Ok(key)) if crate::key::validate(&key).is_ok() => {
            match shared.coordinator.get(&key, Quorum::Majority).await {
                Ok(_) => true,
                Err(Error::NotFound { .. }) => false,
                Err(err) => return error_reply(&err),
            }
        }
        _ => false,
    };
    if exists {
        return Frame::coded(
            "WRONGTYPE",
            "Operation against a key holding the wrong kind of value",
        );
    }
    Frame::error(format!(
        "{name}: ringkv stores strings only, not the {kind} type (GET, SET, DEL, EXPIRE, \
         SCAN… work)"
    ))
}
