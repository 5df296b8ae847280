//! CLUSTER INFO, MYID, MYSHARDID, NODES, SLOTS, SHARDS, KEYSLOT: the live
//! members described as a Redis Cluster in which each node holds an even,
//! contiguous share of the 16,384 slots, with the other members as its
//! replicas. Any ringkv node coordinates any key, so no node ever answers
//! MOVED or ASK: the map only spreads a cluster-aware client's load, and
//! tells it where to go when a node dies (it refreshes the map from the
//! others, which no longer list the dead one).

use bytes::Bytes;

use super::{Ctx, Frame, upper};

/// Slots of Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// One node of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotOwner {
    /// Its RESP address (host, port).
    pub host: String,
    /// Its RESP port.
    pub port: u16,
    /// 40 hex characters derived from its ringkv id.
    pub id: String,
    /// First and last slot it holds.
    pub slots: (u16, u16),
    /// Whether it is this node.
    pub me: bool,
}

/// The id of a node in the map: the first 20 bytes of blake3 of its ringkv
/// id, in hex (Redis ids are 40 hex characters).
pub fn node_id(ringkv_id: &str) -> String {
    let hash = blake3::hash(ringkv_id.as_bytes());
    hash.as_bytes()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The map: live normal members with a RESP port, in id order, each with
/// an even contiguous share of the slots.
pub fn slot_map(ctx: &Ctx) -> Vec<SlotOwner> {
    let shared = &ctx.shared;
    let me = shared.coordinator.node().clone();
    let ring = shared.coordinator.ring();
    let addresses = shared.membership.view().resp;
    let mut nodes: Vec<(String, String, u16)> = ring
        .members()
        .filter(|m| m.live && m.state == crate::ring::MemberState::Normal)
        .filter_map(|m| {
            let addr = addresses.get(&m.id)?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((m.id.to_string(), host.to_string(), port.parse().ok()?))
        })
        .collect();
    if nodes.is_empty() {
        nodes.push((
            me.to_string(),
            shared.options.host.clone(),
            shared.options.port,
        ));
    }
    nodes.sort();
    let count = nodes.len() as u32;
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, (id, host, port))| {
            let i = i as u32;
            let first = (i * SLOTS as u32 / count) as u16;
            let last = ((i + 1) * SLOTS as u32 / count - 1) as u16;
            SlotOwner {
                me: id == me.as_str(),
                id: node_id(&id),
                host,
                port,
                slots: (first, last),
            }
        })
        .collect()
}

/// CRC16-XMODEM, as Redis Cluster hashes keys.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= (*byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key: CRC16 of it, or of its `{hash tag}`, mod 16,384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn node_frame(owner: &SlotOwner) -> Frame {
    Frame::Array(vec![
        Frame::text(&owner.host),
        Frame::Integer(owner.port as i64),
        Frame::text(&owner.id),
        Frame::Array(Vec::new()),
    ])
}

/// CLUSTER subcommand.
pub fn cluster(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let sub = upper(&args[0]);
    let map = slot_map(ctx);
    let me = map.iter().find(|o| o.me).cloned();
    match sub.as_str() {
        "INFO" => {
            let epoch = ctx.shared.coordinator.ring().digest() % 1_000_000;
            Frame::Verbatim(format!(
                "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:{SLOTS}\r\n\
                 cluster_slots_ok:{SLOTS}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\n\
                 cluster_known_nodes:{n}\r\ncluster_size:{n}\r\ncluster_current_epoch:{epoch}\r\n\
                 cluster_my_epoch:{epoch}\r\ncluster_stats_messages_sent:0\r\n\
                 cluster_stats_messages_received:0\r\n",
                n = map.len()
            ))
        }
        "MYID" | "MYSHARDID" => match me {
            Some(me) => Frame::text(&me.id),
            None => Frame::text(&node_id(ctx.shared.coordinator.node().as_str())),
        },
        "KEYSLOT" if args.len() == 2 => Frame::Integer(key_slot(&args[1]) as i64),
        "SLOTS" => Frame::Array(
            map.iter()
                .map(|owner| {
                    let mut entry = vec![
                        Frame::Integer(owner.slots.0 as i64),
                        Frame::Integer(owner.slots.1 as i64),
                        node_frame(owner),
                    ];
                    entry.extend(map.iter().filter(|o| o.id != owner.id).map(node_frame));
                    Frame::Array(entry)
                })
                .collect(),
        ),
        "SHARDS" => Frame::Array(
            map.iter()
                .map(|owner| {
                    let node = |o: &SlotOwner, role: &str| {
                        Frame::Map(vec![
                            (Frame::text("id"), Frame::text(&o.id)),
                            (Frame::text("port"), Frame::Integer(o.port as i64)),
                            (Frame::text("ip"), Frame::text(&o.host)),
                            (Frame::text("endpoint"), Frame::text(&o.host)),
                            (Frame::text("role"), Frame::text(role)),
                            (Frame::text("replication-offset"), Frame::Integer(0)),
                            (Frame::text("health"), Frame::text("online")),
                        ])
                    };
                    let mut nodes = vec![node(owner, "master")];
                    nodes.extend(
                        map.iter()
                            .filter(|o| o.id != owner.id)
                            .map(|o| node(o, "replica")),
                    );
                    Frame::Map(vec![
                        (
                            Frame::text("slots"),
                            Frame::Array(vec![
                                Frame::Integer(owner.slots.0 as i64),
                                Frame::Integer(owner.slots.1 as i64),
                            ]),
                        ),
                        (Frame::text("nodes"), Frame::Array(nodes)),
                    ])
                })
                .collect(),
        ),
        "NODES" => {
            let lines: Vec<String> = map
                .iter()
                .map(|o| {
                    format!(
                        "{} {}:{}@{} {} - 0 0 1 connected {}-{}",
                        o.id,
                        o.host,
                        o.port,
                        o.port as u32 + 10_000,
                        if o.me { "myself,master" } else { "master" },
                        o.slots.0,
                        o.slots.1
                    )
                })
                .collect();
            Frame::Verbatim(format!("{}\n", lines.join("\n")))
        }
        "COUNTKEYSINSLOT" | "GETKEYSINSLOT" => Frame::error(format!(
            "CLUSTER {sub} is not supported: ringkv places keys on its own ring, not by slot \
             (use SCAN)"
        )),
        _ => Frame::error(format!(
            "CLUSTER {sub} is not supported here (ringkv has INFO, MYID, MYSHARDID, NODES, \
             SLOTS, SHARDS, KEYSLOT; the map is derived from the ring, never set by hand)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_redis_cluster_slots() {
        // Values from the Redis Cluster specification and redis-cli.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn node_ids_are_forty_hex_characters() {
        let id = node_id("127.0.0.1:50140");
        assert_eq!(id.len(), 40);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
