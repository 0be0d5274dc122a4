//! Per-packet cost of SRTP on the relay's path: one 20 ms G.711 packet (12-byte header, 160
//! bytes of audio) protected, and protected then unprotected, for each suite, in place on
//! the caller's buffer as the relay would call it. A bare copy of the packet for scale.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tonewall::rtp::srtp::{InboundSrtp, OutboundSrtp, SrtpMasterKey, SrtpSuite};

const LEN: usize = 172;

fn packet(seq: u16, buf: &mut [u8]) {
    buf[0] = 0x80;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    for (i, b) in buf[12..LEN].iter_mut().enumerate() {
        *b = 0xd5 ^ i as u8;
    }
}

fn bench(c: &mut Criterion) {
    let mut buf = [0u8; 256];
    c.bench_function("srtp/copy_172", |b| {
        let src = [0x55u8; LEN];
        b.iter(|| {
            buf[..LEN].copy_from_slice(black_box(&src));
            black_box(&buf);
        })
    });

    for suite in SrtpSuite::ALL {
        let key = SrtpMasterKey::generate(suite).expect("key");
        let mut out = OutboundSrtp::new(&key).expect("context");
        // Sequence numbers run on (and wrap) as in one long call.
        let mut seq = 0u16;
        c.bench_function(&format!("srtp/protect/{suite}"), |b| {
            b.iter(|| {
                packet(seq, &mut buf);
                seq = seq.wrapping_add(1);
                black_box(out.protect_rtp(&mut buf, LEN).expect("protect"))
            })
        });

        let mut out = OutboundSrtp::new(&key).expect("context");
        let mut inb = InboundSrtp::new(&key).expect("context");
        let mut seq = 0u16;
        c.bench_function(&format!("srtp/protect+unprotect/{suite}"), |b| {
            b.iter(|| {
                packet(seq, &mut buf);
                seq = seq.wrapping_add(1);
                let n = out.protect_rtp(&mut buf, LEN).expect("protect");
                black_box(inb.unprotect_rtp(&mut buf, n).expect("unprotect"))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
