//! Ports for tests that must name theirs before a process binds them
//! (`ringkv cluster --base-port`, printed commands, config files); every
//! other test lets the kernel pick (`--port 0`).
//!
//! Ports come from [`FIRST`]..[`FIRST`] + [`SPAN`], below the kernel's
//! ephemeral range (32768–60999 on Linux), so that no outgoing connection
//! of any program holds one. A counter in a file under the temporary
//! directory, locked while it moves, hands them out in turn to every test
//! process of a run (nextest runs each test in a process of its own), so no
//! two tests get the same port while fewer than [`SPAN`] are handed out.
//! Nothing is probed by binding it.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};

/// The first port handed out.
pub const FIRST: u16 = 20_000;
/// How many ports are handed out before the counter wraps.
pub const SPAN: u16 = 12_000;

/// `count` consecutive ports no other test of this run holds: returns the
/// first.
pub fn reserve(count: u16) -> u16 {
    let path = std::env::temp_dir().join("ringkv-test-ports");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    let mut text = String::new();
    file.read_to_string(&mut text).expect("the port counter");
    let next: u32 = text.trim().parse().unwrap_or(0);
    // A run of `count` never straddles the wrap.
    let offset = if next % u32::from(SPAN) + u32::from(count) > u32::from(SPAN) {
        0
    } else {
        next % u32::from(SPAN)
    };
    let after = offset + u32::from(count);
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.set_len(0).expect("truncate");
    write!(file, "{after}").expect("the port counter");
    // Unlocked when the file closes.
    FIRST + offset as u16
}
