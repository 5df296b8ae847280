//! See `ringkv_fuzz::headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_fuzz::headers(data));
