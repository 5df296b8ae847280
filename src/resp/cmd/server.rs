//! Server commands: COMMAND, INFO, DBSIZE, FLUSHALL/FLUSHDB, CONFIG, TIME.

use bytes::Bytes;
use futures::future::join_all;

use super::table::{COMMANDS, Spec};
use super::{Ctx, Frame, error_reply, upper};
use crate::coordinator::Quorum;

/// The Redis version announced (HELLO, INFO): the command set follows
/// Redis 7.
pub const REDIS_VERSION: &str = "7.2.0";

/// `COMMAND` entry of one command.
fn command_info(spec: &Spec) -> Frame {
    let (first, last, step) = spec.keys;
    Frame::Array(vec![
        Frame::text(spec.name),
        Frame::Integer(spec.arity),
        Frame::Set(
            spec.flags()
                .into_iter()
                .map(|f| Frame::Simple(f.into()))
                .collect(),
        ),
        Frame::Integer(first),
        Frame::Integer(last),
        Frame::Integer(step),
        Frame::Set(vec![Frame::Simple(format!("@{}", spec.group))]),
        Frame::Set(Vec::new()),
        Frame::Array(Vec::new()),
        Frame::Array(Vec::new()),
    ])
}

/// `COMMAND DOCS` entry of one command: summary, since, group, arguments.
fn command_docs(spec: &Spec) -> Frame {
    let arguments: Vec<Frame> = spec
        .args
        .iter()
        .map(|arg| {
            let optional = arg.starts_with('[');
            let multiple = arg.ends_with("...]") || arg.ends_with("...");
            let name = arg.trim_matches(|c| c == '[' || c == ']');
            let kind = if name == "key" || name.starts_with("key ") {
                "key"
            } else {
                "string"
            };
            let mut fields = vec![
                (Frame::text("name"), Frame::text(name)),
                (Frame::text("type"), Frame::text(kind)),
                (Frame::text("display_text"), Frame::text(name)),
            ];
            let mut flags = Vec::new();
            if optional {
                flags.push(Frame::Simple("optional".into()));
            }
            if multiple {
                flags.push(Frame::Simple("multiple".into()));
            }
            if !flags.is_empty() {
                fields.push((Frame::text("flags"), Frame::Set(flags)));
            }
            Frame::Map(fields)
        })
        .collect();
    Frame::Map(vec![
        (Frame::text("summary"), Frame::text(spec.summary)),
        (Frame::text("since"), Frame::text("1.0.0")),
        (Frame::text("group"), Frame::text(spec.group)),
        (Frame::text("arguments"), Frame::Array(arguments)),
    ])
}

/// COMMAND [COUNT|LIST|INFO names|DOCS names|GETKEYS cmd…].
pub fn command(args: &[Bytes]) -> Frame {
    let named = |names: &[Bytes]| -> Vec<&'static Spec> {
        if names.is_empty() {
            return COMMANDS.iter().collect();
        }
        names
            .iter()
            .filter_map(|n| super::table::lookup(&String::from_utf8_lossy(n).to_ascii_lowercase()))
            .collect()
    };
    let Some(sub) = args.first() else {
        return Frame::Array(COMMANDS.iter().map(command_info).collect());
    };
    match upper(sub).as_str() {
        "COUNT" => Frame::Integer(COMMANDS.len() as i64),
        "LIST" => Frame::Array(COMMANDS.iter().map(|s| Frame::text(s.name)).collect()),
        "INFO" => {
            if args.len() == 1 {
                return Frame::Array(COMMANDS.iter().map(command_info).collect());
            }
            Frame::Array(
                args[1..]
                    .iter()
                    .map(|n| {
                        super::table::lookup(&String::from_utf8_lossy(n).to_ascii_lowercase())
                            .map(command_info)
                            .unwrap_or(Frame::NullArray)
                    })
                    .collect(),
            )
        }
        "DOCS" => Frame::Map(
            named(&args[1..])
                .into_iter()
                .map(|s| (Frame::text(s.name), command_docs(s)))
                .collect(),
        ),
        "GETKEYS" if args.len() >= 2 => {
            match super::prepare(Frame::Array(
                args[1..].iter().cloned().map(Frame::Bulk).collect(),
            )) {
                Ok(call) => Frame::Array(call.keys().into_iter().map(Frame::Bulk).collect()),
                Err(e) => e,
            }
        }
        other => Frame::error(format!("unknown subcommand '{other}'. Try COMMAND HELP.")),
    }
}

/// Resident memory of this process, bytes (0 when unknown).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The members' published key counts, summed.
fn keys_published(ctx: &Ctx) -> u64 {
    ctx.shared
        .membership
        .view()
        .stats
        .values()
        .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .filter_map(|v| v["keys"].as_u64())
        .sum()
}

/// DBSIZE: the members' key counts over N, approximate (copies in transit,
/// surplus copies not yet purged, and expired values not yet collected
/// count).
pub fn dbsize(ctx: &Ctx) -> Frame {
    let n = ctx.shared.coordinator.ring().replicas().max(1) as u64;
    Frame::Integer((keys_published(ctx) / n) as i64)
}

/// INFO [section ...].
pub fn info(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let wanted: Vec<String> = args.iter().map(|a| upper(a).to_ascii_lowercase()).collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let show = |section: &str| all || wanted.iter().any(|w| w == section);
    let shared = &ctx.shared;
    let ring = shared.coordinator.ring();
    let mut out = String::new();
    if show("server") {
        out.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:cluster\r\nringkv_version:{}\r\n\
             os:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
             uptime_in_days:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            shared.options.port,
            shared.started.elapsed().as_secs(),
            shared.started.elapsed().as_secs() / 86_400,
        ));
    }
    if show("clients") {
        out.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            shared.clients().len(),
            shared.options.max_connections
        ));
    }
    if show("memory") {
        let rss = rss_bytes();
        out.push_str(&format!(
            "# Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\n\
             maxmemory_policy:noeviction\r\n\r\n"
        ));
    }
    if show("stats") {
        let (connections, commands, rejected) = shared.figures();
        out.push_str(&format!(
            "# Stats\r\ntotal_connections_received:{connections}\r\n\
             total_commands_processed:{commands}\r\nrejected_connections:{rejected}\r\n\r\n"
        ));
    }
    if show("cluster") {
        out.push_str("# Cluster\r\ncluster_enabled:1\r\n\r\n");
    }
    if show("keyspace") {
        let n = ring.replicas().max(1) as u64;
        out.push_str(&format!(
            "# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0\r\n\r\n",
            keys_published(ctx) / n
        ));
    }
    if show("ringkv") {
        let members: Vec<String> = ring
            .members()
            .map(|m| format!("{}={}", m.id, m.shown_state().as_str()))
            .collect();
        out.push_str(&format!(
            "# Ringkv\r\nnode:{}\r\nmembers:{}\r\nmember_states:{}\r\nreplicas:{}\r\n\
             ring_digest:{:016x}\r\nagreed:{}\r\nkeys_approximate:1\r\n\r\n",
            shared.coordinator.node(),
            ring.members().count(),
            members.join(","),
            ring.replicas(),
            ring.digest(),
            u8::from(shared.membership.agreed()),
        ));
    }
    Frame::Verbatim(out)
}

/// FLUSHALL/FLUSHDB: refused unless `--resp-allow-flush`; then every key
/// of the cluster gets a tombstone, as DEL would.
pub async fn flush(ctx: &Ctx, name: &str) -> Frame {
    if !ctx.shared.options.allow_flush {
        return Frame::error(format!(
            "{} is refused on this node: it deletes every key of the whole cluster; start the \
             node with --resp-allow-flush to allow it",
            name.to_ascii_uppercase()
        ));
    }
    let mut cursor = 0;
    loop {
        let (keys, next) = match super::keys::scan_page(ctx, cursor, 1000).await {
            Ok(page) => page,
            Err(e) => return e,
        };
        let deletes = keys
            .iter()
            .map(|k| ctx.shared.coordinator.delete(k, Quorum::Majority));
        for outcome in join_all(deletes).await {
            if let Err(err) = outcome {
                return error_reply(&err);
            }
        }
        if next == 0 {
            return Frame::ok();
        }
        cursor = next;
    }
}

/// CONFIG GET pattern...: a few read-only settings; SET is refused.
pub fn config(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let sub = upper(&args[0]);
    match sub.as_str() {
        "GET" if args.len() >= 2 => {
            let settings = [
                ("save", String::new()),
                ("appendonly", "no".to_string()),
                ("databases", "1".to_string()),
                ("maxclients", ctx.shared.options.max_connections.to_string()),
                (
                    "timeout",
                    ctx.shared.options.idle_timeout.as_secs().to_string(),
                ),
                (
                    "proto-max-bulk-len",
                    ctx.shared.options.max_bulk.to_string(),
                ),
                ("cluster-enabled", "yes".to_string()),
            ];
            let pairs = settings
                .iter()
                .filter(|(name, _)| {
                    args[1..]
                        .iter()
                        .any(|p| super::keys::glob(&p.to_ascii_lowercase(), name.as_bytes()))
                })
                .map(|(name, value)| (Frame::text(name), Frame::text(value)))
                .collect();
            Frame::Map(pairs)
        }
        "RESETSTAT" => Frame::ok(),
        _ => Frame::error(format!(
            "CONFIG {sub} is not supported: ringkv is configured by its command-line flags"
        )),
    }
}

/// TIME: seconds and microseconds of this node's clock.
pub fn time() -> Frame {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Frame::Array(vec![
        Frame::text(&now.as_secs().to_string()),
        Frame::text(&now.subsec_micros().to_string()),
    ])
}
