#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tonewall::sip::fuzz::fuzz_framer(data));
