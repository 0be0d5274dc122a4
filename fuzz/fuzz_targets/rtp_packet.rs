#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tonewall::rtp::fuzz::fuzz_packet(data));
