//! See `ringkv_fuzz::http_api`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_fuzz::http_api(data));
