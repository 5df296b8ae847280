//! String commands: GET, SET and its options, SETEX, SETNX, GETDEL, GETEX,
//! MGET, MSET, STRLEN, GETRANGE.
//!
//! A last-writer-wins store has no atomic read-modify-write: the options
//! that depend on what is there (NX, XX, GET, KEEPTTL, SETNX, GETSET,
//! GETDEL) are decided on a quorum read just before the write, so two
//! clients racing on one key can both see it absent. The README says so.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;

use super::{Ctx, Frame, error_reply, integer, key_of, upper};
use crate::coordinator::{Expiry, Quorum};

/// An expiry option of SET/GETEX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ttl {
    /// None given.
    Unset,
    /// EX/PX/EXAT/PXAT.
    Set(Expiry),
    /// KEEPTTL.
    Keep,
    /// PERSIST (GETEX).
    Persist,
}

/// The expiry of `number` under option `option` (EX, PX, EXAT, PXAT) for
/// command `command`, with Redis's error for a bad one.
pub fn expiry_of(option: &str, number: &Bytes, command: &str) -> Result<Expiry, Frame> {
    let bad = || Frame::error(format!("invalid expire time in '{command}' command"));
    let n = integer(number)?;
    if n <= 0 {
        return Err(bad());
    }
    let n = n as u64;
    match option {
        "EX" => n
            .checked_mul(1000)
            .map(|ms| Expiry::After(Duration::from_millis(ms)))
            .ok_or_else(bad),
        "PX" => Ok(Expiry::After(Duration::from_millis(n))),
        "EXAT" => n.checked_mul(1000).map(Expiry::AtMs).ok_or_else(bad),
        "PXAT" => Ok(Expiry::AtMs(n)),
        _ => Err(Frame::error("syntax error")),
    }
}

/// GET key.
pub async fn get(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(e) => return e,
    };
    match ctx.read(&key).await {
        Ok(Some((_, value))) => Frame::Bulk(value),
        Ok(None) => Frame::Null,
        Err(e) => e,
    }
}

/// Writes `value` to `key` expiring as `expiry`: `+OK` or the error.
async fn write(ctx: &Ctx, key: &str, value: Bytes, expiry: Expiry) -> Frame {
    if value.len() as u64 > ctx.shared.coordinator.max_value_size() {
        return Frame::error(format!(
            "value too large: {} bytes, the limit is {} bytes",
            value.len(),
            ctx.shared.coordinator.max_value_size()
        ));
    }
    match ctx
        .shared
        .coordinator
        .put_bytes(key, value, expiry, Quorum::Majority)
        .await
    {
        Ok(_) => Frame::ok(),
        Err(err) => error_reply(&err),
    }
}

/// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL].
pub async fn set(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let value = args[1].clone();
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut ttl = Ttl::Unset;
    let mut i = 2;
    while i < args.len() {
        let option = upper(&args[i]);
        match option.as_str() {
            "NX" if !xx => nx = true,
            "XX" if !nx => xx = true,
            "GET" => get = true,
            "KEEPTTL" if ttl == Ttl::Unset => ttl = Ttl::Keep,
            "EX" | "PX" | "EXAT" | "PXAT" if ttl == Ttl::Unset && i + 1 < args.len() => {
                match expiry_of(&option, &args[i + 1], "set") {
                    Ok(e) => ttl = Ttl::Set(e),
                    Err(e) => return e,
                }
                i += 1;
            }
            _ => return Frame::error("syntax error"),
        }
        i += 1;
    }
    // What is there decides NX, XX, GET and KEEPTTL: read it first.
    let old = if nx || xx || get || ttl == Ttl::Keep {
        match ctx.read(&key).await {
            Ok(old) => old,
            Err(e) => return e,
        }
    } else {
        None
    };
    let reply_old = || match &old {
        Some((_, v)) => Frame::Bulk(v.clone()),
        None => Frame::Null,
    };
    if (nx && old.is_some()) || (xx && old.is_none()) {
        return if get { reply_old() } else { Frame::Null };
    }
    let expiry = match ttl {
        Ttl::Set(e) => e,
        Ttl::Keep => match &old {
            Some((found, _)) if found.meta.expires_at != 0 => Expiry::AtMs(found.meta.expires_at),
            _ => Expiry::Never,
        },
        Ttl::Unset | Ttl::Persist => Expiry::Never,
    };
    match write(ctx, &key, value, expiry).await {
        ok @ Frame::Simple(_) if !get => ok,
        Frame::Simple(_) => reply_old(),
        err => err,
    }
}

/// SETEX key seconds value, PSETEX key ms value.
pub async fn setex(ctx: &Ctx, name: &str, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let option = if name == "setex" { "EX" } else { "PX" };
    match expiry_of(option, &args[1], name) {
        Ok(expiry) => write(ctx, &key, args[2].clone(), expiry).await,
        Err(e) => e,
    }
}

/// SETNX key value: 1 if written.
pub async fn setnx(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(e) => return e,
    };
    match ctx.meta(&key).await {
        Ok(Some(_)) => Frame::Integer(0),
        Ok(None) => match write(ctx, &key, args[1].clone(), Expiry::Never).await {
            Frame::Simple(_) => Frame::Integer(1),
            err => err,
        },
        Err(e) => e,
    }
}

/// GETSET key value (SET key value GET).
pub async fn getset(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let with_get = [args[0].clone(), args[1].clone(), Bytes::from_static(b"GET")];
    set(ctx, &with_get).await
}

/// GETDEL key.
pub async fn getdel(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(e) => return e,
    };
    match ctx.read(&key).await {
        Ok(Some((_, value))) => match ctx.shared.coordinator.delete(&key, Quorum::Majority).await {
            Ok(_) => Frame::Bulk(value),
            Err(err) => error_reply(&err),
        },
        Ok(None) => Frame::Null,
        Err(e) => e,
    }
}

/// GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST].
pub async fn getex(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(e) => return e,
    };
    let ttl = match &args[1..] {
        [] => Ttl::Unset,
        [one] if upper(one) == "PERSIST" => Ttl::Persist,
        [option, number] => match expiry_of(&upper(option), number, "getex") {
            Ok(e) => Ttl::Set(e),
            Err(e) => return e,
        },
        _ => return Frame::error("syntax error"),
    };
    let (found, value) = match ctx.read(&key).await {
        Ok(Some(pair)) => pair,
        Ok(None) => return Frame::Null,
        Err(e) => return e,
    };
    let expires_at = match ttl {
        Ttl::Unset | Ttl::Keep => return Frame::Bulk(value),
        Ttl::Persist if found.meta.expires_at == 0 => return Frame::Bulk(value),
        Ttl::Persist => 0,
        Ttl::Set(e) => e.at_ms(ctx.now_ms()),
    };
    match ctx
        .shared
        .coordinator
        .touch(&found, expires_at, Quorum::Majority)
        .await
    {
        Ok(_) => Frame::Bulk(value),
        Err(err) => error_reply(&err),
    }
}

/// MGET key...: each read on its own, at once.
pub async fn mget(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let reads = args.iter().map(|arg| async move {
        match key_of(arg) {
            // A key that cannot exist here reads as absent, as in Redis.
            Err(_) => Frame::Null,
            Ok(key) => match ctx.read(&key).await {
                Ok(Some((_, value))) => Frame::Bulk(value),
                Ok(None) => Frame::Null,
                Err(e) => e,
            },
        }
    });
    let values = join_all(reads).await;
    if let Some(err) = values.iter().find(|f| matches!(f, Frame::Error(_))) {
        return err.clone();
    }
    Frame::Array(values)
}

/// MSET key value...: each write on its own, at once (not atomic: a
/// failure may leave some written).
pub async fn mset(ctx: &Ctx, args: &[Bytes]) -> Frame {
    if !args.len().is_multiple_of(2) {
        return Frame::error("wrong number of arguments for 'mset' command");
    }
    let mut pairs = Vec::new();
    for pair in args.chunks(2) {
        match key_of(&pair[0]) {
            Ok(key) => pairs.push((key, pair[1].clone())),
            Err(e) => return e,
        }
    }
    // A key given twice: the last value wins, as in Redis.
    let mut last: std::collections::BTreeMap<String, Bytes> = std::collections::BTreeMap::new();
    for (key, value) in pairs {
        last.insert(key, value);
    }
    let writes = last
        .into_iter()
        .map(|(key, value)| async move { write(ctx, &key, value, Expiry::Never).await });
    let outcomes = join_all(writes).await;
    outcomes
        .into_iter()
        .find(|f| matches!(f, Frame::Error(_)))
        .unwrap_or_else(Frame::ok)
}

/// STRLEN key.
pub async fn strlen(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(_) => return Frame::Integer(0),
    };
    match ctx.meta(&key).await {
        Ok(Some(found)) => Frame::Integer(found.meta.size as i64),
        Ok(None) => Frame::Integer(0),
        Err(e) => e,
    }
}

/// GETRANGE key start end (inclusive, negative from the end).
pub async fn getrange(ctx: &Ctx, args: &[Bytes]) -> Frame {
    let (start, end) = match (integer(&args[1]), integer(&args[2])) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let key = match key_of(&args[0]) {
        Ok(k) => k,
        Err(_) => return Frame::bulk(Bytes::new()),
    };
    let value = match ctx.read(&key).await {
        Ok(Some((_, value))) => value,
        Ok(None) => return Frame::bulk(Bytes::new()),
        Err(e) => return e,
    };
    let len = value.len() as i64;
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (fix(start), fix(end).min(len - 1));
    if len == 0 || start > end {
        return Frame::bulk(Bytes::new());
    }
    Frame::Bulk(value.slice(start as usize..=end as usize))
}
