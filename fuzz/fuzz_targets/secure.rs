//! See `ringkv_fuzz::secure`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_fuzz::secure(data));
