//! Connection commands: PING, SELECT, HELLO, AUTH, CLIENT.

use bytes::Bytes;

use super::{Frame, Session, integer, upper};
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

/// AUTH: there is nothing to authenticate against yet.
pub fn auth() -> Frame {
    Frame::error(
        "AUTH is not available: this ringkv has no access control yet (API tokens come \
         with the access-control issue); connect without a password",
    )
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
            ("AUTH", n) if n >= 3 => return auth(),
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
