//! See `ringkv_fuzz::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_fuzz::record(data));
