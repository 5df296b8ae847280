//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`) and
//! every past finding (`fuzz/regressions/<target>/`) through the fuzz
//! harnesses, so the README's test command checks them on every change
//! without a fuzzer. Fuzzing itself: `fuzz/README.md`.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

/// Runs `harness` on every file of the target's corpus and regressions and
/// fails naming each input that broke an invariant.
fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            inputs.push(entry.expect("a corpus entry").path());
        }
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus for {target}");
    let mut failed = Vec::new();
    for input in &inputs {
        let data = std::fs::read(input).expect("a corpus file");
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            failed.push(input.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs failed: {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

#[test]
fn http_api_corpus() {
    replay("http_api", harness::http_api);
}

#[test]
fn headers_corpus() {
    replay("headers", harness::headers);
}

#[test]
fn rpc_corpus() {
    replay("rpc", harness::rpc);
}

#[test]
fn secure_corpus() {
    replay("secure", harness::secure);
}

#[test]
fn resp_corpus() {
    replay("resp", harness::resp);
}

#[test]
fn gossip_corpus() {
    replay("gossip", harness::gossip);
}

#[test]
fn record_corpus() {
    replay("record", harness::record);
}
