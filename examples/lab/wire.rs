//! The TCP payload between the lab's node processes, from `ss -tinpH`:
//! which sockets are a node's calls to another node, and how many bytes
//! crossed them between two readings. Reads `ss`'s text only; a machine
//! without `ss` gives no figure (`None`), not an error.

use std::collections::BTreeMap;

/// TCP payload bytes (both directions) of every established connection
/// that one of `pids` opened to another node's port in `ports`, keyed by
/// (pid, local port); `None` when `ss` is missing or says nothing usable.
pub fn wire_bytes(pids: &[u32], ports: &[u16]) -> Option<BTreeMap<(u32, u16), u64>> {
    let output = std::process::Command::new("ss")
        .args(["-tinpH", "state", "established"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut out = BTreeMap::new();
    // `ss -i` prints each socket on one line and its counters on the next.
    let mut current: Option<(u32, u16)> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = socket_of(line, pids, ports);
            continue;
        }
        let Some(socket) = current.take() else {
            continue;
        };
        let counter = |name: &str| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(name))
                .and_then(|n| n.parse::<u64>().ok())
        };
        // Counters at zero are left out by `ss`.
        let sent = counter("bytes_sent:")
            .or_else(|| counter("bytes_acked:"))
            .unwrap_or(0);
        let received = counter("bytes_received:").unwrap_or(0);
        out.insert(socket, sent + received);
    }
    Some(out)
}

/// (pid, local port) of an `ss` socket line when it is a connection of one
/// of `pids` to one of `ports` from a port not in `ports` (a node calling
/// another, not a node's accepted connection).
fn socket_of(line: &str, pids: &[u32], ports: &[u16]) -> Option<(u32, u16)> {
    let mut addresses = line
        .split_whitespace()
        .filter_map(|f| f.parse::<std::net::SocketAddr>().ok());
    let (local, peer) = (addresses.next()?, addresses.next()?);
    let pid: u32 = line
        .split("pid=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    (pids.contains(&pid) && ports.contains(&peer.port()) && !ports.contains(&local.port()))
        .then_some((pid, local.port()))
}

/// Bytes that crossed the connections between `before` and `after`.
pub fn wire_delta(
    before: Option<&BTreeMap<(u32, u16), u64>>,
    after: Option<&BTreeMap<(u32, u16), u64>>,
) -> Option<u64> {
    let (before, after) = (before?, after?);
    Some(
        after
            .iter()
            .map(|(socket, bytes)| bytes.saturating_sub(before.get(socket).copied().unwrap_or(0)))
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_lines_pick_connections_between_nodes() {
        let pids = [100, 200];
        let ports = [21000, 21001];
        let out = "0 0 127.0.0.1:40000 127.0.0.1:21001 users:((\"ringkv\",pid=100,fd=9))";
        assert_eq!(socket_of(out, &pids, &ports), Some((100, 40000)));
        let accepted = "0 0 127.0.0.1:21001 127.0.0.1:40000 users:((\"ringkv\",pid=200,fd=9))";
        assert_eq!(socket_of(accepted, &pids, &ports), None);
        let client = "0 0 127.0.0.1:40001 127.0.0.1:21000 users:((\"ringkv\",pid=300,fd=9))";
        assert_eq!(socket_of(client, &pids, &ports), None);
        let before = BTreeMap::from([((100, 40000), 10)]);
        let after = BTreeMap::from([((100, 40000), 15), ((200, 40002), 7)]);
        assert_eq!(wire_delta(Some(&before), Some(&after)), Some(12));
        assert_eq!(wire_delta(None, Some(&after)), None);
    }
}
