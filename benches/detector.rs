//! Detector throughput: the strict Q.24 detector, the presence (masking) detector, the two
//! sharing one Goertzel bank as the scrubber runs them, and the masker over one second of audio
//! (speech, and a keyed card), reported per 20 ms frame.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tonewall::digit::Digit;
use tonewall::dsp::dtmf::{
    DetectorConfig, DtmfDetector, PresenceConfig, PresenceDetector, process_both,
};
use tonewall::dsp::mask::{MaskKind, Masker};

fn speech() -> Vec<i16> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/speech_en_hello.wav");
    let mut s = tonewall::wav::read_wav(&path).expect("speech fixture");
    s.truncate(8000);
    s
}

fn keys() -> Vec<i16> {
    let mut v = Vec::new();
    for c in "4111111111111111".chars().cycle().take(12) {
        let (lo, hi) = Digit::from_char(c).expect("key").freqs();
        for i in 0..400 {
            let t = i as f64 / 8000.0;
            v.push(
                (4000.0 * (2.0 * std::f64::consts::PI * f64::from(lo) * t).sin()
                    + 4000.0 * (2.0 * std::f64::consts::PI * f64::from(hi) * t).sin())
                    as i16,
            );
        }
        v.extend(std::iter::repeat_n(0i16, 267));
    }
    v.truncate(8000);
    v
}

fn bench(c: &mut Criterion) {
    for (name, audio) in [("speech", speech()), ("keys", keys())] {
        let mut g = c.benchmark_group(format!("detector/{name}"));
        // One element = one 20 ms frame, so criterion reports frames per second.
        g.throughput(Throughput::Elements((audio.len() / 160) as u64));
        g.bench_function("strict", |b| {
            b.iter(|| {
                let mut d = DtmfDetector::new(DetectorConfig::default());
                for f in audio.chunks(160) {
                    d.process(std::hint::black_box(f), &mut |e| {
                        std::hint::black_box(e);
                    });
                }
            })
        });
        g.bench_function("presence", |b| {
            let mut mask = [false; 160];
            b.iter(|| {
                let mut p = PresenceDetector::new(PresenceConfig::default());
                for f in audio.chunks(160) {
                    p.process(std::hint::black_box(f), &mut mask[..f.len()]);
                }
                std::hint::black_box(&mask);
            })
        });
        // What the scrubber runs: both detectors over one Goertzel bank.
        g.bench_function("both_shared", |b| {
            let mut mask = [0u64; 3];
            b.iter(|| {
                let mut p = PresenceDetector::new(PresenceConfig::default());
                let mut d = DtmfDetector::new(DetectorConfig::default());
                for f in audio.chunks(160) {
                    process_both(
                        &mut p,
                        &mut d,
                        std::hint::black_box(f),
                        &mut mask,
                        &mut |e| {
                            std::hint::black_box(e);
                        },
                    );
                }
                std::hint::black_box(&mask);
            })
        });
        g.bench_function("masker", |b| {
            let mut buf = [0i16; 160];
            let mask = [true; 160];
            let mut m = Masker::new(MaskKind::Noise);
            b.iter(|| {
                for f in audio.chunks(160) {
                    buf[..f.len()].copy_from_slice(f);
                    m.apply(&mut buf[..f.len()], &mask[..f.len()]);
                }
                std::hint::black_box(&buf);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
