//! See `ringkv_fuzz::resp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringkv_fuzz::resp(data));
