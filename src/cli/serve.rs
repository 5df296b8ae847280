//! `ringkv serve`: run one node until SIGINT/SIGTERM (which make it leave
//! the cluster, unless `--on-signal stop`) or until it leaves by request.

use std::process::ExitCode;

use ringkv::config::{OnSignal, ServeArgs};

/// Runs the node; prints `listening on http://HOST:PORT` (`https://` with
/// TLS) on stdout once it serves (tests and `ringkv cluster` read that
/// line), or with `json` `{"listening": "http://HOST:PORT"}`.
pub async fn run(args: ServeArgs, json: bool) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut node = ringkv::server::start(args.config()).await?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    if json {
        let mut line = serde_json::json!({ "listening": format!("{scheme}://{}", node.id) });
        if let Some(resp) = &node.resp_addr {
            line["resp"] = serde_json::json!(resp);
        }
        println!("{line}");
    } else {
        println!("listening on {scheme}://{}", node.id);
        if let Some(resp) = &node.resp_addr {
            println!("redis protocol on {resp}");
        }
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        result = node.wait() => {
            result?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut code = ExitCode::SUCCESS;
    if args.on_signal == OnSignal::Leave {
        tracing::info!("signal received: leaving the cluster (a second signal exits at once)");
        tokio::select! {
            // Tries again while the nodes taking this node's ranges cannot
            // fetch them (a partition, a node restarting): it exits only
            // once they have them, or on a second signal.
            result = node.leave(true) => match result {
                Ok(summary) => tracing::info!(
                    keys = summary.keys,
                    bytes = summary.bytes,
                    receivers = ?summary.receivers,
                    "left the cluster"
                ),
                Err(err) => {
                    tracing::error!(%err, "could not leave; stopping with this node's data kept");
                    eprintln!("could not leave the cluster: {err}");
                    code = ExitCode::FAILURE;
                }
            },
            _ = term.recv() => return Ok(ExitCode::from(130)),
            _ = int.recv() => return Ok(ExitCode::from(130)),
        }
    } else {
        tracing::info!("signal received: stopping (a second signal exits at once)");
    }
    tokio::select! {
        result = node.stop() => result?,
        _ = term.recv() => return Ok(ExitCode::from(130)),
        _ = int.recv() => return Ok(ExitCode::from(130)),
    }
    Ok(code)
}
