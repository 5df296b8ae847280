//! See `ringkv_fuzz::rpc`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_fuzz::rpc(data));
