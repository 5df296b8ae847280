//! See `ringkv_fuzz::gossip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_fuzz::gossip(data));
