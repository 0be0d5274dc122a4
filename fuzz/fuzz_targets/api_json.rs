#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tonewall::net::fuzz::fuzz_api_json(data));
