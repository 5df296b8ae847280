//! `GET /`: the status page (F22), plain server-rendered HTML with its CSS
//! and a little JavaScript embedded in the binary (no external assets).
//!
//! Every part of the page is rendered here, by one function each, and each
//! is also served alone (`/?part=members|work|ring|charts|keys|key`): the script
//! swaps those fragments in to keep the figures live and to search keys
//! without reloading, so the page has a single renderer and every name
//! shown on it (keys, zones, node ids) goes through [`escape`].

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiResult, AppState};
use crate::error::Error;
use crate::lifecycle::NodeStats;
use crate::lifecycle::machine::Status;
use crate::membership::View;
use crate::proto::RecordMeta;
use crate::ring::{MemberState, NodeId, Ring, Token};

/// The page's style sheet.
pub(super) const STYLE: &str = include_str!("status.css");
/// The page's script: polling, search, buttons, upload.
pub(super) const SCRIPT: &str = include_str!("status.js");
/// Keys shown per page.
const KEYS_PER_PAGE: usize = 50;
/// How long the page waits for a replica's answer about a key.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

/// Query of `GET /`.
#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    /// One part of the page alone (for live updates).
    part: Option<String>,
    /// Keys starting with this.
    prefix: Option<String>,
    /// Keys after this one (the next page).
    after: Option<String>,
    /// Show this key's detail: its replicas and their versions.
    key: Option<String>,
}

/// `GET /` and its parts.
pub async fn status_page(
    State(state): State<AppState>,
    query: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let params: PageParams = super::keys::params(query)?;
    let ring = state.coordinator.ring();
    let view = state.membership.view();
    let prefix = params.prefix.as_deref().unwrap_or("");
    let after = params.after.as_deref();
    let html = match params.part.as_deref() {
        Some("members") => members(&ring, &view, &state.node),
        Some("work") => work(&ring, &view, &state.lifecycle.transitions()),
        Some("ring") => ring_svg(&ring, &state.node),
        Some("charts") => super::chart::charts_part(&state.charts, &view, &ring),
        Some("keys") => keys(&state, prefix, after)?,
        Some("key") => {
            let key = params
                .key
                .as_deref()
                .ok_or_else(|| Error::invalid("part=key needs key="))?;
            key_detail(&state, key).await?
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "unknown part {other:?} (members, work, ring, charts, keys or key)"
            ))
            .into());
        }
        None => page(&state, &ring, &view, &params).await?,
    };
    let mut response = Html(html).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    Ok(response)
}

/// The whole page.
async fn page(
    state: &AppState,
    ring: &Ring,
    view: &View,
    params: &PageParams,
) -> ApiResult<String> {
    let node = escape(state.node.as_str());
    let prefix = params.prefix.as_deref().unwrap_or("");
    let detail = match params.key.as_deref() {
        Some(key) => key_detail(state, key).await?,
        None => String::new(),
    };
    // The favicon is the `favicon.ico` key's value when it exists; an empty
    // icon otherwise, so that browsers do not ask for a missing one.
    let icon = if key_exists(state, "favicon.ico").await {
        "/favicon.ico"
    } else {
        "data:,"
    };
    Ok(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ringkv · {node}</title>
<link rel="icon" href="{icon}">
<style>{STYLE}</style>
</head>
<body data-node="{node}">
<header><h1><span class="logo">◍</span> ringkv <small>{node}</small></h1>
<span id="live" class="live">live</span></header>
<main>
<section id="cluster-section" class="wide"><h2>Cluster</h2><div id="members">{members}</div></section>
<section id="charts-section" class="wide"><h2>Last {window}</h2><div id="charts">{charts}</div></section>
<section id="ring-section"><h2>Ring</h2><div id="ring">{ring_svg}</div></section>
<section id="work-section"><h2>Background work</h2><div id="work">{work}</div>
<div class="actions">
<button id="balance" data-action="/balance" data-confirm="Compare every range's replicas across the cluster and exchange what differs?">Balance</button>
<button id="purge" data-action="/purge" data-confirm="Drop the keys this node no longer owns (once every owner holds them)?">Purge</button>
</div>
<pre id="action-result" class="result" hidden></pre></section>
<section id="upload-section"><h2>Upload a file</h2>
<form id="upload">
<label>File <input type="file" id="upload-file" required></label>
<label>Key <input type="text" id="upload-key" placeholder="the file's name"></label>
<button type="submit">Upload</button>
</form><pre id="upload-result" class="result" hidden></pre></section>
{detail}
<section id="keys-section" class="wide"><h2>Keys on this node</h2>
<form id="search" method="get" action="/"><input type="search" id="prefix" name="prefix" value="{prefix_value}" placeholder="search by prefix" autocomplete="off"> <button type="submit">Search</button></form>
<div id="keys">{keys}</div></section>
</main>
<script>{SCRIPT}</script>
</body></html>
"#,
        members = members(ring, view, &state.node),
        ring_svg = ring_svg(ring, &state.node),
        charts = super::chart::charts_part(&state.charts, view, ring),
        window = super::chart::window(&state.charts),
        work = work(ring, view, &state.lifecycle.transitions()),
        keys = keys(state, prefix, params.after.as_deref())?,
        prefix_value = escape(prefix),
    ))
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a URL's query string.
fn query_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `1.5 MiB` and the like.
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A version timestamp (ns since the epoch) as an HTTP date, UTC.
fn human_time(nanos: u64) -> String {
    if nanos == 0 {
        return "—".into();
    }
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// The content type a GET answers with: as stored, else from the name.
fn content_type(meta: &RecordMeta) -> String {
    if meta.content_type.is_empty() {
        mime_guess::from_path(&meta.key)
            .first_or_octet_stream()
            .to_string()
    } else {
        meta.content_type.clone()
    }
}

/// A member's colour: hues spread by the golden angle, in ring order.
pub(super) fn colour(index: usize) -> String {
    format!("hsl({:.0}, 65%, 48%)", (index as f64 * 137.508) % 360.0)
}

/// Members in a fixed order, each with its colour index.
pub(super) fn shown_members(ring: &Ring) -> Vec<&crate::ring::Member> {
    let mut members: Vec<_> = ring.members().collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    members
}

/// A gossip JSON value of `map` for `node`.
fn gossiped(map: &std::collections::BTreeMap<NodeId, String>, node: &NodeId) -> Option<Value> {
    map.get(node).and_then(|s| serde_json::from_str(s).ok())
}

/// What `node` last published it holds.
fn stats_of(view: &View, node: &NodeId) -> Option<NodeStats> {
    view.stats
        .get(node)
        .and_then(|s| serde_json::from_str(s).ok())
}

/// How a member is doing, in a word, and the CSS class for it.
fn health(
    member: &crate::ring::Member,
    stats: Option<&NodeStats>,
    agreed: bool,
) -> (&'static str, &'static str) {
    match member.shown_state() {
        MemberState::Removed => ("removed", "off"),
        MemberState::Down => ("down", "bad"),
        _ if stats.is_some_and(|s| s.catching_up) => ("catching up", "warn"),
        _ if !agreed => ("ring differs", "warn"),
        _ => ("ok", "ok"),
    }
}

/// The members table.
fn members(ring: &Ring, view: &View, me: &NodeId) -> String {
    let loads = ring.load_shares();
    let digest = format!("{:016x}", ring.digest());
    let mut rows = String::new();
    for (index, m) in shown_members(ring).into_iter().enumerate() {
        let stats = stats_of(view, &m.id);
        let agreed = view.digests.get(&m.id) == Some(&digest);
        let (word, class) = health(m, stats.as_ref(), agreed);
        let state = m.shown_state().as_str();
        let figure =
            |f: fn(&NodeStats) -> String| stats.as_ref().map(f).unwrap_or_else(|| "—".into());
        let _ = write!(
            rows,
            r#"<tr data-node="{id}"{mine}><td><span class="swatch" style="background:{colour}"></span><a href="http://{id}/">{id}</a>{you}</td><td><span class="badge {state}">{state}</span></td><td class="opt">{zone}</td><td class="num">{load:.1}%</td><td class="num opt">{tokens}</td><td class="num keys">{keys}</td><td class="num">{bytes}</td><td class="num opt">{hints}</td><td><span class="health {class}">{word}</span></td></tr>"#,
            id = escape(m.id.as_str()),
            mine = if m.id == *me { r#" class="me""# } else { "" },
            you = if m.id == *me {
                r#" <small>(this node)</small>"#
            } else {
                ""
            },
            colour = colour(index),
            zone = if m.zone.is_empty() {
                "—".into()
            } else {
                escape(&m.zone)
            },
            load = loads.get(&m.id).copied().unwrap_or(0.0) * 100.0,
            tokens = m.tokens.len(),
            keys = figure(|s| s.keys.to_string()),
            bytes = figure(|s| human_bytes(s.bytes)),
            hints = figure(|s| s.hints.to_string()),
        );
    }
    format!(
        r#"<p class="summary" data-digest="{digest}">{count} members ({owners} owning ranges{joining}) · N = {n}{target} · ring digest <code>{digest}</code>{transition}</p>
<div class="scroll"><table class="members"><thead><tr><th>node</th><th>state</th><th class="opt">zone</th><th>load</th><th class="opt">tokens</th><th>keys</th><th>bytes</th><th class="opt">hints</th><th>health</th></tr></thead><tbody>{rows}</tbody></table></div>"#,
        count = ring.members().count(),
        owners = ring.members().filter(|m| m.state.owns_ranges()).count(),
        joining = match ring
            .members()
            .filter(|m| m.state == MemberState::Joining)
            .count()
        {
            0 => String::new(),
            j => format!(", {j} joining"),
        },
        n = ring.replicas(),
        target = if ring.target_replicas() != ring.replicas() {
            format!(" (→ {})", ring.target_replicas())
        } else {
            String::new()
        },
        transition = if ring.in_transition() {
            r#" · <span class="badge joining">ranges moving</span>"#
        } else {
            ""
        },
    )
}

/// The ring as an SVG: each member's token ranges as arcs around a circle,
/// one `<g class="arc-group">` per member, this node's drawn out further.
pub fn ring_svg(ring: &Ring, me: &NodeId) -> String {
    const SIZE: f64 = 320.0;
    const CENTRE: f64 = SIZE / 2.0;
    let members = shown_members(ring);
    // Every token with its owner, in ring order; a token owns the range from
    // the token before it (exclusive) to itself.
    let mut owned: Vec<(Token, usize)> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.state != MemberState::Removed)
        .flat_map(|(i, m)| m.tokens.iter().map(move |t| (*t, i)))
        .collect();
    owned.sort();
    let mut groups: Vec<String> = vec![String::new(); members.len()];
    for (k, (token, owner)) in owned.iter().enumerate() {
        let start = if k == 0 {
            owned[owned.len() - 1].0
        } else {
            owned[k - 1].0
        };
        let mine = members[*owner].id == *me;
        let (inner, outer) = if mine { (96.0, 150.0) } else { (100.0, 140.0) };
        let _ = write!(
            groups[*owner],
            r#"<path d="{d}"><title>({start:016x}, {end:016x}] → {owner_id}</title></path>"#,
            d = arc_path(CENTRE, inner, outer, start.0, token.0),
            start = start.0,
            end = token.0,
            owner_id = escape(members[*owner].id.as_str()),
        );
    }
    let mut svg = format!(
        r#"<svg class="ring" viewBox="0 0 {SIZE} {SIZE}" role="img" aria-label="token ranges per node"><circle cx="{CENTRE}" cy="{CENTRE}" r="120" class="track"/>"#
    );
    for (index, (m, paths)) in members.iter().zip(groups).enumerate() {
        let _ = write!(
            svg,
            r#"<g class="arc-group{mine}" data-node="{id}" fill="{colour}">{paths}</g>"#,
            mine = if m.id == *me { " me" } else { "" },
            id = escape(m.id.as_str()),
            colour = colour(index),
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{CENTRE}" y="{CENTRE}" class="centre">{count} nodes</text><text x="{CENTRE}" y="{y}" class="centre small">{tokens} tokens</text></svg>"#,
        count = members.len(),
        y = CENTRE + 18.0,
        tokens = owned.len(),
    );
    svg
}

/// The SVG path of the ring sector `(start, end]` between two radii; the
/// whole ring when `start == end`. Token 0 is at the top, clockwise.
fn arc_path(centre: f64, inner: f64, outer: f64, start: u64, end: u64) -> String {
    let turn = |t: u64| t as f64 / 2f64.powi(64) * std::f64::consts::TAU;
    let span = if start == end {
        std::f64::consts::TAU - 1e-6
    } else {
        turn(end.wrapping_sub(start))
    };
    let from = turn(start);
    let to = from + span;
    let point = |r: f64, a: f64| (centre + r * a.sin(), centre - r * a.cos());
    let large = if span > std::f64::consts::PI { 1 } else { 0 };
    let (x1, y1) = point(outer, from);
    let (x2, y2) = point(outer, to);
    let (x3, y3) = point(inner, to);
    let (x4, y4) = point(inner, from);
    format!(
        "M{x1:.2} {y1:.2}A{outer} {outer} 0 {large} 1 {x2:.2} {y2:.2}L{x3:.2} {y3:.2}A{inner} {inner} 0 {large} 0 {x4:.2} {y4:.2}Z"
    )
}

/// Transfers, anti-entropy, scrubs and hints in progress, per member.
fn work(ring: &Ring, view: &View, transitions: &[Status]) -> String {
    let mut items = String::new();
    // This node's membership changes, with what each waits for.
    for t in transitions.iter().filter(|t| !t.done) {
        let _ = write!(
            items,
            r#"<li class="transition"><b>{action} {target}</b> (run by this node) waiting for {waiting}{error}</li>"#,
            action = escape(&t.action),
            target = escape(&t.target),
            waiting = escape(&t.waiting_for),
            error = t
                .last_error
                .as_deref()
                .map(|e| format!(" · last failure: {}", escape(e)))
                .unwrap_or_default(),
        );
    }
    let field = |v: &Value, name: &str| v.get(name).and_then(Value::as_u64).unwrap_or(0);
    let active = |v: &Option<Value>| {
        v.as_ref()
            .filter(|v| v.get("active").and_then(Value::as_bool) == Some(true))
            .cloned()
    };
    // A member that is down reports nothing new: its last report would show
    // work that is not going on.
    for m in shown_members(ring).into_iter().filter(|m| m.live) {
        let id = escape(m.id.as_str());
        if let Some(t) = active(&gossiped(&view.transfers, &m.id)) {
            let _ = write!(
                items,
                r#"<li class="transfer"><b>{id}</b> streaming ranges in: {keys} keys, {bytes}, {done} of {sources} sources</li>"#,
                keys = field(&t, "keys"),
                bytes = human_bytes(field(&t, "bytes")),
                done = field(&t, "sources_done"),
                sources = field(&t, "sources"),
            );
        }
        if let Some(r) = active(&gossiped(&view.repairs, &m.id)) {
            let (done, total) = (field(&r, "ranges_done"), field(&r, "ranges").max(1));
            let _ = write!(
                items,
                r#"<li class="repair"><b>{id}</b> anti-entropy: {done} of {total} ranges <progress max="{total}" value="{done}"></progress> {pulled} pulled, {pushed} pushed</li>"#,
                pulled = field(&r, "pulled"),
                pushed = field(&r, "pushed"),
            );
        }
        if let Some(s) = active(&gossiped(&view.scrubs, &m.id)) {
            let _ = write!(
                items,
                r#"<li class="scrub"><b>{id}</b> scrub: {keys} keys, {bytes} checked, {corrupt} corrupt</li>"#,
                keys = field(&s, "keys"),
                bytes = human_bytes(field(&s, "bytes")),
                corrupt = field(&s, "corrupt"),
            );
        }
        let stats = stats_of(view, &m.id);
        let (uploads, downloads) = stats.as_ref().map(|s| s.streams).unwrap_or_default();
        if uploads + downloads > 0 {
            let _ = write!(
                items,
                r#"<li class="streams"><b>{id}</b> streaming {uploads} value{s1} in, {downloads} out</li>"#,
                s1 = if uploads == 1 { "" } else { "s" },
            );
        }
        let hints = stats.map(|s| s.hints).unwrap_or(0);
        if hints > 0 {
            let _ = write!(
                items,
                r#"<li class="hints"><b>{id}</b> holds {hints} hint{s} for replicas that missed writes</li>"#,
                s = if hints == 1 { "" } else { "s" },
            );
        }
    }
    if items.is_empty() {
        items.push_str(r#"<li class="idle">nothing running: every member is idle</li>"#);
    }
    format!(r#"<ul class="work">{items}</ul>"#)
}

/// This node's keys starting with `prefix`, after `after`: one page.
fn keys(state: &AppState, prefix: &str, after: Option<&str>) -> ApiResult<String> {
    let page = state.store.list(prefix, after, KEYS_PER_PAGE)?;
    let next = (page.len() == KEYS_PER_PAGE)
        .then(|| page.last().map(|m| m.key.clone()))
        .flatten();
    let mut rows = String::new();
    for m in page.iter().filter(|m| !m.deleted) {
        let href = crate::key::to_url_path(&m.key);
        let _ = write!(
            rows,
            r#"<tr><td class="key"><a href="/?key={q}#key-detail">{key}</a></td><td class="num">{size}</td><td class="opt">{ctype}</td><td>{time}</td><td><a class="download" href="/keys/{href}" download="{file}">download</a></td></tr>"#,
            q = query_escape(&m.key),
            key = escape(&m.key),
            size = human_bytes(m.size),
            ctype = escape(&content_type(m)),
            time = human_time(m.version().timestamp),
            file = escape(m.key.rsplit('/').next().unwrap_or(&m.key)),
        );
    }
    if rows.is_empty() {
        rows = format!(
            r#"<tr><td colspan="5" class="empty">no keys{}</td></tr>"#,
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" starting with “{}”", escape(prefix))
            }
        );
    }
    let more = match next {
        Some(last) => format!(
            r#"<p class="more"><a href="/?prefix={p}&amp;after={a}#keys-section">next page →</a></p>"#,
            p = query_escape(prefix),
            a = query_escape(&last),
        ),
        None => String::new(),
    };
    Ok(format!(
        r#"<div class="scroll"><table class="keys"><thead><tr><th>key</th><th>size</th><th class="opt">content type</th><th>timestamp</th><th></th></tr></thead><tbody>{rows}</tbody></table></div>{more}"#
    ))
}

/// What each replica of `key` holds, asked in parallel.
async fn replica_metas(
    state: &AppState,
    key: &str,
) -> Vec<(NodeId, Result<Option<RecordMeta>, String>)> {
    let ring = state.coordinator.ring();
    let asks = ring.nodes_of(key.as_bytes()).into_iter().map(|node| {
        let replica = state.coordinator.replica(&node);
        async move {
            let answer = match tokio::time::timeout(REPLICA_TIMEOUT, replica.read(key, 0)).await {
                Ok(Ok(reply)) => Ok(reply.meta),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("no answer in time".to_string()),
            };
            (node, answer)
        }
    });
    futures::future::join_all(asks).await
}

/// Whether any replica holds a live value of `key`.
async fn key_exists(state: &AppState, key: &str) -> bool {
    let metas = replica_metas(state, key).await;
    let newest = metas
        .iter()
        .filter_map(|(_, m)| m.as_ref().ok().and_then(Option::as_ref))
        .max_by_key(|m| m.version());
    newest.is_some_and(|m| !m.deleted)
}

/// One key: what each of its replicas holds.
async fn key_detail(state: &AppState, key: &str) -> ApiResult<String> {
    crate::key::validate(key)?;
    let metas = replica_metas(state, key).await;
    let newest = metas
        .iter()
        .filter_map(|(_, m)| m.as_ref().ok().and_then(Option::as_ref))
        .max_by_key(|m| m.version())
        .cloned();
    let mut rows = String::new();
    for (i, (node, answer)) in metas.iter().enumerate() {
        let id = escape(node.as_str());
        let held = match answer {
            Ok(Some(m)) => {
                let what = if m.deleted { "deleted" } else { "value" };
                let fresh = newest.as_ref().is_some_and(|n| n.version() == m.version());
                format!(
                    r#"<td>{time}</td><td class="num opt">{ts}</td><td>{what}</td><td><span class="health {class}">{word}</span></td>"#,
                    time = human_time(m.version().timestamp),
                    ts = m.version().timestamp,
                    class = if fresh { "ok" } else { "warn" },
                    word = if fresh { "newest" } else { "behind" },
                )
            }
            Ok(None) => r#"<td>—</td><td class="num opt">0</td><td>nothing</td><td><span class="health warn">missing</span></td>"#.into(),
            Err(err) => format!(
                r#"<td colspan="3">{}</td><td><span class="health bad">no answer</span></td>"#,
                escape(err)
            ),
        };
        let _ = write!(
            rows,
            r#"<tr><td>{i}</td><td><a href="http://{id}/?key={q}#key-detail">{id}</a></td>{held}</tr>"#,
            q = query_escape(key),
        );
    }
    let summary = match &newest {
        Some(m) if !m.deleted => format!(
            r#"<p>{size} · {ctype} · {time} · blake3 <code>{sum}</code> · <a class="download" href="/keys/{href}" download>download</a></p>"#,
            size = human_bytes(m.size),
            ctype = escape(&content_type(m)),
            time = human_time(m.version().timestamp),
            sum = m.checksum.iter().take(8).fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            }),
            href = crate::key::to_url_path(key),
        ),
        Some(m) => format!("<p>deleted at {}</p>", human_time(m.version().timestamp)),
        None => "<p>no replica holds this key</p>".into(),
    };
    Ok(format!(
        r#"<section id="key-detail" class="wide"><h2>Key <code>{key}</code></h2>{summary}
<div class="scroll"><table class="replicas"><thead><tr><th>#</th><th>replica</th><th>timestamp</th><th class="opt">ns</th><th>holds</th><th></th></tr></thead><tbody>{rows}</tbody></table></div></section>"#,
        key = escape(key),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Member;

    fn member(id: &str, tokens: &[u64]) -> Member {
        Member {
            id: NodeId::parse(id).unwrap(),
            zone: String::new(),
            state: MemberState::Normal,
            live: true,
            tokens: tokens.iter().map(|t| Token(*t)).collect(),
        }
    }

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(query_escape("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn ring_svg_has_one_group_per_member_and_one_arc_per_token() {
        let ring = Ring::new(
            vec![
                member("127.0.0.1:1", &[10, u64::MAX / 2]),
                member("127.0.0.1:2", &[u64::MAX / 4, u64::MAX - 5]),
                member("127.0.0.1:3", &[u64::MAX / 3]),
            ],
            2,
        );
        let me = NodeId::parse("127.0.0.1:2").unwrap();
        let svg = ring_svg(&ring, &me);
        assert_eq!(svg.matches(r#"<g class="arc-group"#).count(), 3);
        assert_eq!(svg.matches(r#"<g class="arc-group me""#).count(), 1);
        assert_eq!(svg.matches("<path ").count(), 5);
        // The first token's range wraps from the last token.
        assert!(svg.contains(&format!("({:016x}, {:016x}]", u64::MAX - 5, 10)));
    }

    #[test]
    fn a_lone_token_owns_the_whole_circle() {
        let path = arc_path(100.0, 50.0, 80.0, 7, 7);
        assert!(path.contains("A80 80 0 1 1"), "{path}");
        let quarter = arc_path(100.0, 50.0, 80.0, 0, u64::MAX / 4);
        assert!(
            quarter.starts_with("M100.00 20.00A80 80 0 0 1 180.00 100.00"),
            "{quarter}"
        );
    }

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(human_time(0), "—");
        assert_eq!(human_time(1_000_000_000), "Thu, 01 Jan 1970 00:00:01 GMT");
    }
}
