//! Malformed RTP never panics and is dropped and counted (issue 2, check 6): the checked-in
//! corpus and random bytes through the same harness bodies a cargo-fuzz target would call.

use proptest::prelude::*;
use tonewall::rtp::fuzz::{fuzz_event, fuzz_latch, fuzz_packet, fuzz_scrubber};
use tonewall::rtp::scrubber::{Scrubber, ScrubberConfig, Verdict};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rtp");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn corpus_packets_are_forwarded_only_when_well_formed() {
    let files = corpus();
    assert!(files.len() >= 10);
    for (name, bytes) in files {
        fuzz_packet(&bytes);
        fuzz_event(bytes.get(12..).unwrap_or_default());
        let mut s = Scrubber::new(ScrubberConfig::default());
        let mut out = [0u8; 2048];
        let v = s.process(0, &bytes, &mut out, &mut |_| {});
        let good = name.starts_with("good_");
        assert_eq!(matches!(v, Verdict::Forward(_)), good, "{name}: {v:?}");
        let st = s.stats();
        assert_eq!(st.packets_in, 1, "{name}");
        if !good {
            let dropped = st.dropped_malformed
                + st.dropped_bad_event
                + st.dropped_unsupported
                + st.dropped_oversize;
            assert_eq!(dropped, 1, "{name}: the drop is counted by reason");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzz_packet(&data);
        fuzz_scrubber(&data);
        fuzz_event(&data);
        fuzz_latch(&data);
    }

    #[test]
    fn rtp_shaped_noise_never_panics(
        pt in prop_oneof![Just(0u8), Just(8), Just(101), Just(13), any::<u8>()],
        flags in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut p = vec![0x80 | (flags & 0x3F), pt & 0x7F | (flags & 0x80), 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
        p.extend_from_slice(&body);
        fuzz_packet(&p);
        let mut stream = Vec::new();
        for _ in 0..4 {
            stream.push(p.len().min(255) as u8);
            stream.extend_from_slice(&p[..p.len().min(255)]);
        }
        fuzz_scrubber(&stream);
    }
}
