//! Connection commands: PING, SELECT, HELLO, AUTH, CLIENT.

use bytes::Bytes;

use super::{Access, Frame, Session, Spec, integer, upper};
use crate::access::{Scope, Scopes};
use crate::resp::Shared;
use crate::resp::frame::Protocol;

/// PING [message].
pub fn ping(args: &[Bytes], protocol: Protocol) -> Frame {
    match args {
        [] => Frame::Simple("PONG".into()),
        [message] => Frame::Bulk(message.clone()),
        _ => {
            let _ = protocol;
            Frame::error("wrong number of arguments for 'ping' command")
        }
    }
}

/// SELECT 0: ringkv has one keyspace.
pub fn select(args: &[Bytes]) -> Frame {
    match integer(&args[0]) {
        Ok(0) => Frame::ok(),
        Ok(_) => Frame::error("DB index is out of range (ringkv has one database, 0)"),
        Err(e) => e,
    }
}

/// The token a connection authenticated with. Never printed: its
/// `Debug` says only that there is one.
#[derive(Clone)]
pub struct Credential(Bytes);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(…)")
    }
}

/// What a command needs of the connection's token, once the node has
/// API tokens (`--api-token-file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: the commands that authenticate or end a connection.
    Nothing,
    /// Any known token: commands that touch no key (PING, INFO, CLUSTER…).
    AnyToken,
    /// A token with this scope.
    Scope(Scope),
}

/// What `spec` needs: its keys' access decides (a read needs `read`, a
/// write `write`), SCAN and KEYS read, FLUSHALL/FLUSHDB are `admin`.
pub fn need(spec: &Spec) -> Need {
    match spec.name {
        "auth" | "hello" | "quit" | "reset" => Need::Nothing,
        "flushall" | "flushdb" => Need::Scope(Scope::Admin),
        "scan" | "keys" => Need::Scope(Scope::Read),
        _ => match spec.access {
            Access::Read => Need::Scope(Scope::Read),
            Access::Write => Need::Scope(Scope::Write),
            Access::Free | Access::Barrier => Need::AnyToken,
        },
    }
}

/// Whether the connection may run `spec`: `Err` is the reply instead
/// (`NOAUTH` without a token the node knows now, `NOPERM` without the
/// scope). The token is checked against the tokens in force at each
/// command, so that a token removed by a reload (SIGHUP) stops working on
/// open connections too.
pub fn authorize(shared: &Shared, session: &Session, spec: &Spec) -> Result<(), Frame> {
    let Some(tokens) = &shared.tokens else {
        return Ok(());
    };
    let needed = match need(spec) {
        Need::Nothing => return Ok(()),
        Need::AnyToken => None,
        Need::Scope(scope) => Some(scope),
    };
    let scopes = match &session.credential {
        Some(Credential(token)) => tokens.current().scopes_of(token),
        None => Scopes::default(),
    };
    if scopes.is_empty() {
        return Err(Frame::coded(
            "NOAUTH",
            "Authentication required: send AUTH with an API token first",
        ));
    }
    match needed {
        Some(scope) if !scopes.allows(scope) => Err(Frame::coded(
            "NOPERM",
            format!(
                "this token has no permissions to run the '{}' command (it needs the {} scope)",
                spec.name,
                scope.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

/// AUTH [username] token: the username is ignored (ringkv's tokens have
/// no user); a token the node knows authenticates the connection.
pub fn auth(shared: &Shared, session: &mut Session, args: &[Bytes]) -> Frame {
    let Some(tokens) = &shared.tokens else {
        return Frame::error(
            "AUTH <password> called without any password configured for the default user. \
             (this ringkv node has no API tokens: start it with --api-token-file to use AUTH)",
        );
    };
    let Some(token) = args.last() else {
        return Frame::error("wrong number of arguments for 'auth' command");
    };
    if args.len() > 2 {
        return Frame::error("wrong number of arguments for 'auth' command");
    }
    if tokens.current().scopes_of(token).is_empty() {
        return Frame::coded(
            "WRONGPASS",
            "invalid username-password pair or user is disabled.",
        );
    }
    session.credential = Some(Credential(token.clone()));
    Frame::ok()
}

/// HELLO [protover [AUTH user pass] [SETNAME name]].
pub fn hello(shared: &Shared, session: &mut Session, args: &[Bytes]) -> Frame {
    let mut protocol = session.protocol;
    let mut name = None;
    let mut rest = args;
    if let Some(version) = rest.first() {
        protocol = match integer(version) {
            Ok(2) => Protocol::Resp2,
            Ok(3) => Protocol::Resp3,
            Ok(_) => return Frame::coded("NOPROTO", "unsupported protocol version"),
            Err(_) => return Frame::error("Protocol version is not an integer or out of range"),
        };
        rest = &rest[1..];
    }
    while let Some(option) = rest.first() {
        match (upper(option).as_str(), rest.len()) {
            ("AUTH", n) if n >= 3 => {
                let reply = auth(shared, session, &rest[1..3]);
                if matches!(reply, Frame::Error(_)) {
                    return reply;
                }
                rest = &rest[3..];
            }
            ("SETNAME", n) if n >= 2 => {
                match client_name(&rest[1]) {
                    Ok(n) => name = Some(n),
                    Err(e) => return e,
                }
                rest = &rest[2..];
            }
            _ => {
                return Frame::error(format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(option)
                ));
            }
        }
    }
    session.protocol = protocol;
    if name.is_some() {
        session.name = name;
    }
    Frame::Map(vec![
        (Frame::text("server"), Frame::text("redis")),
        (
            Frame::text("version"),
            Frame::text(super::server::REDIS_VERSION),
        ),
        (
            Frame::text("proto"),
            Frame::Integer(if protocol == Protocol::Resp3 { 3 } else { 2 }),
        ),
        (Frame::text("id"), Frame::Integer(session.id as i64)),
        (Frame::text("mode"), Frame::text("cluster")),
        (Frame::text("role"), Frame::text("master")),
        (Frame::text("modules"), Frame::Array(Vec::new())),
        (
            Frame::text("ringkv"),
            Frame::text(&shared.coordinator.node().to_string()),
        ),
    ])
}

/// A client name, which Redis keeps free of spaces and control bytes.
fn client_name(arg: &Bytes) -> Result<String, Frame> {
    if arg.iter().any(|b| *b <= b' ' || *b >= 127) {
        return Err(Frame::error(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(String::from_utf8_lossy(arg).into_owned())
}

/// CLIENT SETNAME/GETNAME/ID/SETINFO/INFO/LIST/NO-EVICT/NO-TOUCH.
pub fn client(shared: &Shared, session: &mut Session, args: &[Bytes]) -> Frame {
    let sub = upper(&args[0]);
    match (sub.as_str(), args.len()) {
        ("SETNAME", 2) => match client_name(&args[1]) {
            Ok(name) => {
                session.name = (!name.is_empty()).then_some(name);
                shared.update_client(session);
                Frame::ok()
            }
            Err(e) => e,
        },
        ("GETNAME", 1) => match &session.name {
            Some(name) => Frame::text(name),
            None => Frame::Null,
        },
        ("ID", 1) => Frame::Integer(session.id as i64),
        ("SETINFO", 3) => {
            let value = String::from_utf8_lossy(&args[2]).into_owned();
            if value.contains(' ') || value.contains('\n') {
                return Frame::error(format!(
                    "{} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(&args[1])
                ));
            }
            match upper(&args[1]).as_str() {
                "LIB-NAME" => session.lib.0 = Some(value),
                "LIB-VER" => session.lib.1 = Some(value),
                other => {
                    return Frame::error(format!("Unrecognized option '{other}'"));
                }
            }
            shared.update_client(session);
            Frame::ok()
        }
        ("INFO", 1) => Frame::Verbatim(format!("{}\n", client_line(session))),
        ("LIST", _) => {
            let lines: Vec<String> = shared.clients().iter().map(client_line).collect();
            Frame::Verbatim(format!("{}\n", lines.join("\n")))
        }
        ("NO-EVICT" | "NO-TOUCH", 2) => Frame::ok(),
        ("REPLY", 2) if upper(&args[1]) == "ON" => Frame::ok(),
        _ => Frame::error(format!(
            "unknown subcommand or wrong number of arguments for 'CLIENT|{sub}' (ringkv \
             has SETNAME, GETNAME, ID, SETINFO, INFO, LIST, NO-EVICT, NO-TOUCH)"
        )),
    }
}

/// One line of CLIENT INFO / CLIENT LIST.
fn client_line(session: &Session) -> String {
    format!(
        "id={} addr={} name={} db=0 resp={} lib-name={} lib-ver={}",
        session.id,
        session.addr,
        session.name.as_deref().unwrap_or(""),
        if session.protocol == Protocol::Resp3 {
            3
        } else {
            2
        },
        session.lib.0.as_deref().unwrap_or(""),
        session.lib.1.as_deref().unwrap_or(""),
    )
}
