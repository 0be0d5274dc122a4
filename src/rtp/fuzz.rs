//! Fuzz harness bodies for the RTP path (ARCHITECTURE.md, "Rules of the code"): stable `cargo test` runs them over a
//! checked-in corpus and proptest inputs; cargo-fuzz targets under nightly can call the same
//! functions. A panic here is a bug on the network path.

use std::net::{Ipv4Addr, SocketAddr};

use super::event::{EVENT_BLOCK_LEN, TelephoneEvent};
use super::latch::{Admit, Latch};
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

/// Feeds `data` as RFC 4733 payloads: every 4-byte block decodes and encodes back to itself
/// (less the reserved R bit, RFC 4733 §2.3.3), and the same blocks sent as a telephone-event
/// stream through a scrubber never reach its output as a DTMF key (ARCHITECTURE.md, invariant 1).
pub fn fuzz_event(data: &[u8]) {
    let _ = TelephoneEvent::parse(data);
    if let Ok(blocks) = TelephoneEvent::parse_all(data) {
        for ev in blocks {
            let _ = ev.digit();
        }
    }
    for block in data.chunks_exact(EVENT_BLOCK_LEN) {
        if let Some(b) = block.first_chunk::<EVENT_BLOCK_LEN>() {
            let mut want = *b;
            want[1] &= !0x40;
            assert_eq!(TelephoneEvent::from_block(b).to_bytes(), want);
        }
    }
    let mut s = Scrubber::new(ScrubberConfig::default());
    let mut out = [0u8; 2048];
    let mut pkt = [0u8; 12 + 64];
    let mut rest = data;
    let mut seq = 0u16;
    let mut now = 0u64;
    // One byte of each packet says how many blocks follow (1-16) and whether the timestamp
    // moves on (a new event) or stays (the same event, RFC 4733 §2.5.1.3).
    while let Some((&ctl, tail)) = rest.split_first() {
        let n = (usize::from(ctl & 0x0f) + 1) * EVENT_BLOCK_LEN;
        let (body, tail) = tail.split_at(n.min(tail.len()));
        rest = tail;
        if body.is_empty() {
            break;
        }
        seq = seq.wrapping_add(1);
        now += 20;
        let ts = if ctl & 0x80 != 0 {
            u32::from(seq) * 800
        } else {
            0
        };
        pkt[0] = 0x80;
        pkt[1] = 101 | if ctl & 0x40 != 0 { 0x80 } else { 0 };
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&ts.to_be_bytes());
        pkt[8..12].copy_from_slice(&7u32.to_be_bytes());
        let len = 12 + body.len();
        if let Some(dst) = pkt.get_mut(12..len) {
            dst.copy_from_slice(body);
        }
        let input = pkt.get(..len).unwrap_or_default();
        if let Verdict::Forward(l) = s.process(now, input, &mut out, &mut |_| {}) {
            let fwd = out.get(..l).unwrap_or_default();
            if let Ok(v) = RtpView::parse(fwd)
                && v.payload_type() == 101
                && let Ok(blocks) = TelephoneEvent::parse_all(v.payload())
            {
                for ev in blocks {
                    assert!(ev.digit().is_none(), "a DTMF event went through");
                }
            }
        }
        s.tick(now, &mut |_| {});
    }
    s.finish(&mut |_| {});
}

/// Feeds `data` to one leg's [`Latch`] as a stream of datagrams, each from one of a few sources
/// (the SDP address, other ports on its host, another host), and checks the rules that keep a
/// stranger off the leg: a packet from the SDP address is always the peer's and makes it the
/// destination; a stranger's packet never changes where the leg sends; the latch moves to
/// another host only for a packet that carries on the latched stream.
pub fn fuzz_latch(data: &[u8]) {
    let host = Ipv4Addr::new(192, 0, 2, 10);
    let sdp = SocketAddr::from((host, 4000));
    let sources = [
        sdp,
        SocketAddr::from((host, 61000)),
        SocketAddr::from((host, 61002)),
        SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 4000)),
    ];
    let mut l = Latch::new(Some(sdp));
    let mut now = 0u64;
    let mut pkt = [0u8; 12];
    let mut last_stream: Option<(u32, u16)> = None;
    // Each datagram: one control byte (source, time step, RTP or RTCP, SSRC choice) and two
    // bytes of sequence number.
    for chunk in data.chunks_exact(3) {
        let (ctl, seq) = match chunk {
            [c, a, b] => (*c, u16::from_be_bytes([*a, *b])),
            _ => break,
        };
        let src = sources.get(usize::from(ctl & 3)).copied().unwrap_or(sdp);
        now += u64::from((ctl >> 2) & 7) * 40;
        let ssrc: u32 = if ctl & 0x20 != 0 { 0xABCD } else { 0x1234 };
        let before = (l.dest(), l.rtcp_dest());
        if ctl & 0x40 != 0 {
            let v = l.accept_rtcp(src);
            if v == Admit::Stranger {
                assert_eq!(l.rtcp_dest(), before.1, "a stranger moved RTCP");
            }
            continue;
        }
        pkt[0] = if ctl & 0x80 != 0 { 0x40 } else { 0x80 };
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
        let v = l.accept_rtp(src, &pkt, now);
        if src == sdp {
            assert!(v.is_peer(), "the SDP address was refused");
            assert_eq!(l.dest(), Some(sdp));
        }
        match v {
            Admit::Stranger => assert_eq!(l.dest(), before.0, "a stranger moved the latch"),
            Admit::Moved if src.ip() != sdp.ip() => {
                assert_eq!(
                    last_stream.map(|s| s.0),
                    Some(ssrc),
                    "moved to another stream"
                );
            }
            _ => {}
        }
        if v.is_peer() && ctl & 0x80 == 0 {
            last_stream = Some((ssrc, seq));
        }
    }
}
