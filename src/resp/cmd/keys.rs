//! Key commands: DEL, EXISTS, TYPE, the EXPIRE family, TTL, PERSIST, and
//! SCAN/KEYS over the whole cluster.
//!
//! SCAN's cursor is a position on the ring (a token): each call reads the
//! keys after it from a majority of the replicas of the range it falls in
//! (any live ones: a member's death does not break the cursor), up to the
//! first position every one of them has listed up to, newest record per
//! key, tombstones and expired values left out. A key present for the
//! whole iteration is returned (as Redis promises); keys written during it
//! may or may not be. Two keys of the very same token (a 64-bit hash
//! collision) could be split by a page boundary and one missed.

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;

use super::{Ctx, Frame, error_reply, integer, key_of, upper};
use crate::coordinator::{Expiry, Quorum};
use crate::error::Error;
use crate::ring::{Token, TokenRange};

/// DEL/UNLINK key...: how many existed (each read, then deleted).
pub async fn del(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let mut keys: Vec<String> = args.iter().filter_map(|a| key_of(a).ok()).collect();
    keys.sort();
    keys.dedup();
    let deletes = keys.iter().map(|key| async move {
        match ctx.meta(key).await {
            Ok(Some(_)) => match ctx.shared.coordinator.delete(key, Quorum::Majority).await {
                Ok(_) => Ok(1),
                Err(err) => Err(error_reply(&err)),
            },
            Ok(None) => Ok(0),
            Err(e) => Err(e),
        }
    });
    let mut count = 0;
    for outcome in join_all(deletes).await {
        match outcome {
            Ok(n) => count += n,
            Err(e) => return e,
        }
    }
    Frame::Integer(count)
}

/// EXISTS key...: how many exist, a key given twice counting twice.
pub async fn exists(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let checks = args.iter().map(|arg| async move {
        match key_of(arg) {
            Err(_) => Ok(0),
            Ok(key) => ctx.meta(&key).await.map(|m| i64::from(m.is_some())),
        }
    });
    let mut count = 0;
    for outcome in join_all(checks).await {
        match outcome {
            Ok(n) => count += n,
            Err(e) => return e,
        }
    }
    Frame::Integer(count)
}

/// TYPE key: `string` or `none`.
pub async fn key_type(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let Ok(key) = key_of(&args[0]) else {
        return Frame::Simple("none".into());
    };
    match ctx.meta(&key).await {
        Ok(Some(_)) => Frame::Simple("string".into()),
        Ok(None) => Frame::Simple("none".into()),
        Err(e) => e,
    }
}

/// EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key n [NX|XX|GT|LT].
pub async fn expire(ctx: &Ctx, name: &str, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(_) => return Frame::Integer(0),
    };
    let n = match integer(&args[1]) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in &args[2..] {
        match upper(option).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            other => return Frame::error(format!("Unsupported option {other}")),
        }
    }
    if nx && (xx || gt || lt) {
        return Frame::error("NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Frame::error("GT and LT options at the same time are not compatible");
    }
    let now = ctx.now_ms();
    let bad = || Frame::error(format!("invalid expire time in '{name}' command"));
    let at: i64 = match name {
        "expire" => match n
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(now as i64))
        {
            Some(at) => at,
            None => return bad(),
        },
        "pexpire" => match n.checked_add(now as i64) {
            Some(at) => at,
            None => return bad(),
        },
        "expireat" => match n.checked_mul(1000) {
            Some(at) => at,
            None => return bad(),
        },
        _ => n,
    };
    let found = match ctx.meta(&key).await {
        Ok(Some(found)) => found,
        Ok(None) => return Frame::Integer(0),
        Err(e) => return e,
    };
    let current = found.meta.expires_at;
    // No expiry counts as an infinite one for GT and LT.
    let applies = if nx {
        current == 0
    } else if xx {
        current != 0 && (!gt || at > current as i64) && (!lt || at < current as i64)
    } else if gt {
        current != 0 && at > current as i64
    } else if lt {
        current == 0 || at < current as i64
    } else {
        true
    };
    if !applies {
        return Frame::Integer(0);
    }
    // A time in the past: the key expires now (it reads as absent).
    let expires_at = (at.max(1)) as u64;
    match ctx
        .shared
        .coordinator
        .touch(&found, expires_at, Quorum::Majority)
        .await
    {
        Ok(_) => Frame::Integer(1),
        Err(err) => error_reply(&err),
    }
}

/// TTL/PTTL key: -2 absent, -1 no expiry.
pub async fn ttl(ctx: &Ctx, name: &str, args: &[Bytes]) -> Frame {
    let Ok(key) = key_of(&args[0]) else {
        return Frame::Integer(-2);
    };
    match ctx.meta(&key).await {
        Ok(Some(found)) if found.meta.expires_at == 0 => Frame::Integer(-1),
        Ok(Some(found)) => {
            let left = found.meta.expires_at.saturating_sub(ctx.now_ms()) as i64;
            Frame::Integer(if name == "ttl" {
                (left + 500) / 1000
            } else {
                left
            })
        }
        Ok(None) => Frame::Integer(-2),
        Err(e) => e,
    }
}

/// EXPIRETIME/PEXPIRETIME key: -2 absent, -1 no expiry.
pub async fn expiretime(ctx: &Ctx, name: &str, args: &[Bytes]) -> Frame {
    let Ok(key) = key_of(&args[0]) else {
        return Frame::Integer(-2);
    };
    match ctx.meta(&key).await {
        Ok(Some(found)) if found.meta.expires_at == 0 => Frame::Integer(-1),
        Ok(Some(found)) => {
            let at = found.meta.expires_at as i64;
            Frame::Integer(if name == "expiretime" { at / 1000 } else { at })
        }
        Ok(None) => Frame::Integer(-2),
        Err(e) => e,
    }
}

/// PERSIST key: 1 if it had an expiry, now gone.
pub async fn persist(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let Ok(key) = key_of(&args[0]) else {
        return Frame::Integer(0);
    };
    match ctx.meta(&key).await {
        Ok(Some(found)) if found.meta.expires_at != 0 => match ctx
            .shared
            .coordinator
            .touch(&found, Expiry::Never.at_ms(0), Quorum::Majority)
            .await
        {
            Ok(_) => Frame::Integer(1),
            Err(err) => error_reply(&err),
        },
        Ok(_) => Frame::Integer(0),
        Err(e) => e,
    }
}

/// Default COUNT of SCAN.
const SCAN_COUNT: u64 = 10;
/// Largest COUNT honoured per call (each replica lists this many).
const SCAN_COUNT_MAX: u64 = 10_000;
/// Most ring ranges one SCAN call reads while it has found fewer keys than
/// COUNT.
const SCAN_RANGES_PER_CALL: usize = 64;

/// One page of the cluster's keys after ring position `cursor`: the keys
/// and the next cursor (0: done).
pub async fn scan_page(ctx: &Ctx, cursor: u64, count: u64) -> Result<(Vec<String>, u64), Frame> {
    if cursor == u64::MAX {
        return Ok((Vec::new(), 0));
    }
    let coordinator = &ctx.shared.coordinator;
    let ring = coordinator.ring();
    let Some(range) = ring.range_of_token(Token(cursor + 1)) else {
        return Err(error_reply(&Error::NotReady {
            reason: "the ring has no members yet".into(),
        }));
    };
    // A range wrapping past the top of the ring is read to the top first.
    let end = if range.end.0 <= cursor {
        u64::MAX
    } else {
        range.end.0
    };
    let span = TokenRange {
        start: Token(cursor),
        end: Token(end),
    };
    let replicas = ring.nodes_of_token(Token(cursor + 1));
    let needed = Quorum::Majority
        .count(ring.replicas())
        .unwrap_or(1)
        .min(replicas.len().max(1));
    let reads = replicas.iter().filter(|n| ring.is_live(n)).map(|node| {
        let handle = coordinator.replica(node);
        async move {
            let mut items = handle.scan_limited(&[span], 0, count).await?;
            let mut metas = Vec::new();
            while let Some(item) = items.next().await {
                if let Some(meta) = item?.meta {
                    metas.push(meta);
                }
            }
            Ok::<_, Error>(metas)
        }
    });
    let mut lists = Vec::new();
    let mut failures = Vec::new();
    for outcome in join_all(reads).await {
        match outcome {
            Ok(list) => lists.push(list),
            Err(err) => failures.push(err),
        }
    }
    if lists.len() < needed {
        let err = failures.into_iter().next().unwrap_or(Error::Unavailable {
            needed,
            got: lists.len(),
            answered: Vec::new(),
            failed: Vec::new(),
        });
        return Err(error_reply(&err));
    }
    // The page ends where every replica has listed up to.
    let mut boundary = end;
    for list in &lists {
        if list.len() as u64 >= count
            && let Some(last) = list.last()
        {
            boundary = boundary.min(Token::of_key(last.key.as_bytes()).0);
        }
    }
    let now = ctx.now_ms();
    let mut newest: std::collections::BTreeMap<String, crate::proto::RecordMeta> =
        std::collections::BTreeMap::new();
    for meta in lists.into_iter().flatten() {
        if Token::of_key(meta.key.as_bytes()).0 > boundary {
            continue;
        }
        match newest.get(&meta.key) {
            Some(held) if held.version() >= meta.version() => {}
            _ => {
                newest.insert(meta.key.clone(), meta);
            }
        }
    }
    let keys = newest
        .into_values()
        .filter(|m| !m.is_dead_at(now))
        .map(|m| m.key)
        .collect();
    let next = if boundary == u64::MAX { 0 } else { boundary };
    Ok((keys, next))
}

/// SCAN cursor [MATCH pattern] [COUNT n] [TYPE t].
pub async fn scan(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let cursor = match std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(c) => c,
        None => return Frame::error("invalid cursor"),
    };
    let mut pattern: Option<Bytes> = None;
    let mut count = SCAN_COUNT;
    let mut strings = true;
    let mut i = 1;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else {
            return Frame::error("syntax error");
        };
        match upper(&args[i]).as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => match integer(value) {
                Ok(n) if n >= 1 => count = (n as u64).min(SCAN_COUNT_MAX),
                Ok(_) => return Frame::error("syntax error"),
                Err(e) => return e,
            },
            "TYPE" => strings = upper(value) == "STRING",
            _ => return Frame::error("syntax error"),
        }
        i += 2;
    }
    // Ranges holding nothing are skipped in the same call, up to a few.
    let (mut keys, mut next) = (Vec::new(), cursor);
    for _ in 0..SCAN_RANGES_PER_CALL {
        match scan_page(ctx, next, count).await {
            Ok((page, after)) => {
                keys.extend(page);
                next = after;
            }
            Err(e) => return e,
        }
        if next == 0 || keys.len() as u64 >= count {
            break;
        }
    }
    let keys = keys
        .into_iter()
        .filter(|k| strings && pattern.as_ref().is_none_or(|p| glob(p, k.as_bytes())))
        .map(|k| Frame::bulk(Bytes::from(k)))
        .collect();
    Frame::Array(vec![Frame::text(&next.to_string()), Frame::Array(keys)])
}

/// KEYS pattern: every key of the cluster that matches (a whole SCAN).
pub async fn keys(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let mut cursor = 0;
    let mut out = Vec::new();
    loop {
        let (keys, next) = match scan_page(ctx, cursor, 1000).await {
            Ok(page) => page,
            Err(e) => return e,
        };
        out.extend(
            keys.into_iter()
                .filter(|k| glob(&args[0], k.as_bytes()))
                .map(|k| Frame::bulk(Bytes::from(k))),
        );
        if next == 0 {
            return Frame::Array(out);
        }
        cursor = next;
    }
}

/// Redis's glob: `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: pattern and text positions.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, text[t])
                        && matched
                    {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Whether `c` is in the class starting at `pattern[at]` (`[`), and where
/// the pattern goes on after it.
fn class(pattern: &[u8], at: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let &here = pattern.get(i)?;
        match here {
            b']' => return Some((matched != negate, i + 1)),
            b'\\' => {
                if pattern.get(i + 1) == Some(&c) {
                    matched = true;
                }
                i += 2;
            }
            _ if pattern.get(i + 1) == Some(&b'-')
                && pattern.get(i + 2).is_some_and(|e| *e != b']') =>
            {
                let (lo, hi) = (here.min(pattern[i + 2]), here.max(pattern[i + 2]));
                if (lo..=hi).contains(&c) {
                    matched = true;
                }
                i += 3;
            }
            _ => {
                if here == c {
                    matched = true;
                }
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"user:*", b"user:42"));
        assert!(!glob(b"user:*", b"users"));
        assert!(glob(b"h?llo", b"hello"));
        assert!(glob(b"h[ae]llo", b"hallo"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-b]llo", b"hbllo"));
        assert!(glob(b"a\\*b", b"a*b"));
        assert!(!glob(b"a\\*b", b"axb"));
        assert!(glob(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob(b"*a*b", b"xxbxxa"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"x"));
    }
}
