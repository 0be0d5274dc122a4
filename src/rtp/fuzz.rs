//! Fuzz harness bodies for the RTP path (DESIGN.md §6): stable `cargo test` runs them over a
//! checked-in corpus and proptest inputs; cargo-fuzz targets under nightly can call the same
//! functions. A panic here is a bug on the network path.

use super::event::TelephoneEvent;
use super::packet::RtpView;
use super::scrubber::{Scrubber, ScrubberConfig, Verdict};

/// Parses `data` as one RTP packet and as RFC 4733 payloads.
pub fn fuzz_packet(data: &[u8]) {
    if let Ok(v) = RtpView::parse(data) {
        let _ = (v.payload(), v.header_len(), v.sequence(), v.timestamp());
        if let Ok(blocks) = TelephoneEvent::parse_all(v.payload()) {
            for ev in blocks {
                let _ = ev.digit();
            }
        }
    }
    let _ = TelephoneEvent::parse(data);
}

/// Feeds `data`, cut into packets by its own length bytes, through one `Scrubber`, and checks
/// that every packet is either forwarded within the output buffer or dropped and counted, and
/// that a forwarded packet is wholly written by the scrubber: the relay's output buffer is
/// shared by all the calls on a media thread, so a byte left as it was would carry another
/// call's audio. A twin scrubber fed the same packets writes into a buffer filled with other
/// bytes; the two outputs must be equal.
pub fn fuzz_scrubber(data: &[u8]) {
    let mut s = Scrubber::new(ScrubberConfig::default());
    let mut twin = Scrubber::new(ScrubberConfig::default());
    let mut out = [0u8; 2048];
    let mut other = [0u8; 2048];
    let mut rest = data;
    let mut now = 0u64;
    let mut forwarded = 0u64;
    let mut dropped = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (pkt, tail) = tail.split_at(n);
        rest = tail;
        now += 20;
        out.fill(0x00);
        other.fill(0xA5);
        let verdict = s.process(now, pkt, &mut out, &mut |_| {});
        assert_eq!(verdict, twin.process(now, pkt, &mut other, &mut |_| {}));
        match verdict {
            Verdict::Forward(l) => {
                assert!(l <= out.len());
                assert_eq!(out[..l], other[..l], "a forwarded byte was not written");
                forwarded += 1;
            }
            Verdict::Drop(_) => dropped += 1,
        }
        s.tick(now, &mut |_| {});
        twin.tick(now, &mut |_| {});
    }
    s.finish(&mut |_| {});
    let st = s.stats();
    assert_eq!(
        st.packets_in,
        forwarded + dropped,
        "every packet is accounted for"
    );
}
