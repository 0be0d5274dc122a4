//! Per-packet cost of the relay's hot path: one 20 ms G.711 packet through the `Scrubber`
//! (speech, an in-band tone, an RFC 4733 event), and a bare copy for comparison.

use criterion::{Criterion, criterion_group, criterion_main};
use tonewall::digit::Digit;
use tonewall::rtp::packet::RtpViewMut;
use tonewall::rtp::scrubber::{Scrubber, ScrubberConfig, Verdict};
use tonewall::rtp::trunk::{KeySpan, TrunkConfig, packetize};

fn speech() -> Vec<i16> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/speech_en_hello.wav");
    tonewall::wav::read_wav(&path).expect("speech fixture")
}

fn tone(len: usize) -> Vec<i16> {
    let (lo, hi) = Digit::from_char('5').expect("key").freqs();
    (0..len)
        .map(|i| {
            let t = i as f64 / 8000.0;
            (5000.0 * (2.0 * std::f64::consts::PI * f64::from(lo) * t).sin()
                + 5000.0 * (2.0 * std::f64::consts::PI * f64::from(hi) * t).sin())
                as i16
        })
        .collect()
}

/// Cycles through `packets` forever, as a long call would, and measures one packet at a time.
/// Each pass is numbered on from the last (sequence and timestamp), as one long stream: a
/// replayed packet would be a duplicate or a late event, and dropped unmeasured. The copy and
/// renumbering (a few ns) are in the figure.
fn bench_stream(c: &mut Criterion, name: &str, packets: &[Vec<u8>]) {
    let mut s = Scrubber::new(ScrubberConfig::default());
    let mut out = [0u8; 2048];
    let mut pkt = [0u8; 2048];
    let mut i = 0usize;
    let mut now = 0u64;
    // Samples one pass spans: 20 ms per packet.
    let pass_ts = (packets.len() * 160) as u32;
    c.bench_function(name, |b| {
        b.iter(|| {
            let p = &packets[i % packets.len()];
            let pass = (i / packets.len()) as u32;
            let pkt = &mut pkt[..p.len()];
            pkt.copy_from_slice(p);
            if let Ok(mut v) = RtpViewMut::parse(pkt) {
                let (seq, ts) = (v.view().sequence(), v.view().timestamp());
                v.set_sequence(seq.wrapping_add((pass as usize * packets.len()) as u16));
                v.set_timestamp(ts.wrapping_add(pass.wrapping_mul(pass_ts)));
            }
            i += 1;
            now += 20;
            let v = s.process(now, std::hint::black_box(pkt), &mut out, &mut |d| {
                std::hint::black_box(d);
            });
            std::hint::black_box(matches!(v, Verdict::Forward(_)))
        })
    });
}

/// The same as [`bench_stream`] over many calls at once, a packet of each in turn, as a relay
/// carrying that many calls sees them: each call's state has left the cache by the time its
/// next packet comes, which a single-stream loop never shows.
fn bench_calls(c: &mut Criterion, name: &str, packets: &[Vec<u8>], calls: usize) {
    let mut scrubbers: Vec<Scrubber> = (0..calls)
        .map(|_| Scrubber::new(ScrubberConfig::default()))
        .collect();
    let mut out = [0u8; 2048];
    let mut i = 0usize;
    let mut now = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            let call = i % calls;
            // Calls are at different points of the recording, as real calls would be.
            let p = &packets[(i / calls + call * 7) % packets.len()];
            if call == 0 {
                now += 20;
            }
            i += 1;
            let v = scrubbers[call].process(now, std::hint::black_box(p), &mut out, &mut |d| {
                std::hint::black_box(d);
            });
            std::hint::black_box(matches!(v, Verdict::Forward(_)))
        })
    });
}

fn scrubber(c: &mut Criterion) {
    let cfg = TrunkConfig::default();
    let speech = packetize(&speech(), &cfg, None);
    bench_stream(c, "scrubber/speech_packet", &speech);
    bench_calls(c, "scrubber/speech_packet_2000_calls", &speech, 2000);

    let tone_packets = packetize(&tone(8000), &cfg, None);
    bench_stream(c, "scrubber/tone_packet", &tone_packets);

    let spans = [KeySpan {
        digit: Digit::from_char('8').expect("key"),
        start: 0,
        end: 8000,
    }];
    let events = packetize(&vec![0i16; 8000], &cfg, Some(&spans));
    bench_stream(c, "scrubber/event_packet", &events);

    // The floor: copying a packet, which any relay does.
    let mut out = [0u8; 2048];
    let mut i = 0usize;
    c.bench_function("scrubber/bare_copy", |b| {
        b.iter(|| {
            let p = &speech[i % speech.len()];
            i += 1;
            out[..p.len()].copy_from_slice(std::hint::black_box(p));
            std::hint::black_box(&out);
        })
    });
}

criterion_group!(benches, scrubber);
criterion_main!(benches);
