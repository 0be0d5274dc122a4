//! Test support shared by the integration tests: card-number signals with exact ground truth,
//! fixture audio, and G.711 helpers. Deterministic: every random choice is seeded.
#![allow(dead_code)]

pub mod pcap;

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};

use tonewall::digit::Digit;
use tonewall::dsp::g711::Codec;
use tonewall::rtp::trunk::KeySpan;

pub const RATE: f64 = 8000.0;
/// Peak amplitude of a 0 dBm0 sine in 16-bit linear PCM: G.711's digital milliwatt sits
/// 3.17 dB below μ-law full scale (ITU-T G.711 Table 5; 32767 · 10^(-3.17/20)).
pub const DBM0_PEAK: f64 = 22_686.0;

/// The test card keyed in a payment: PAN, expiry (MMYY) and CVV. A well-known Visa test
/// number (Luhn-valid, never issued).
pub const TEST_CARD: &str = "4111111111111111";
pub const TEST_EXPIRY: &str = "1230";
pub const TEST_CVV: &str = "123";

/// How each key of a sequence is sent.
#[derive(Clone, Copy, Debug)]
pub struct ToneParams {
    /// Level of the low-group tone in dBm0.
    pub level_dbm0: f64,
    /// High-group level minus low-group level, dB (positive: high louder).
    pub twist_db: f64,
    /// Relative frequency error applied to both tones (0.015 = +1.5 %).
    pub offset: f64,
    pub tone_ms: f64,
    pub pause_ms: f64,
}

impl Default for ToneParams {
    fn default() -> Self {
        ToneParams {
            level_dbm0: -10.0,
            twist_db: 0.0,
            offset: 0.0,
            tone_ms: 60.0,
            pause_ms: 60.0,
        }
    }
}

/// Small deterministic PRNG (xorshift) so signals are reproducible without extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn gauss(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Keys of `text` as tones after `lead_ms` of silence, with exact spans.
pub fn tones(text: &str, p: ToneParams, lead_ms: f64, seed: u64) -> (Vec<f64>, Vec<KeySpan>) {
    let mut rng = Rng::new(seed);
    let mut out = vec![0.0; (lead_ms * RATE / 1000.0) as usize];
    let mut spans = Vec::new();
    let tone_len = (p.tone_ms * RATE / 1000.0).round() as usize;
    let pause_len = (p.pause_ms * RATE / 1000.0).round() as usize;
    let a_lo = DBM0_PEAK * 10f64.powf(p.level_dbm0 / 20.0);
    let a_hi = a_lo * 10f64.powf(p.twist_db / 20.0);
    for c in text.chars() {
        let d = Digit::from_char(c).expect("keypad character");
        let (lo, hi) = d.freqs();
        let (lo, hi) = (
            f64::from(lo) * (1.0 + p.offset),
            f64::from(hi) * (1.0 + p.offset),
        );
        // Random phases: real phones do not start tones at a zero crossing.
        let (ph1, ph2) = (
            rng.unit() * std::f64::consts::TAU,
            rng.unit() * std::f64::consts::TAU,
        );
        let start = out.len();
        for i in 0..tone_len {
            let t = i as f64 / RATE;
            out.push(
                a_lo * (2.0 * std::f64::consts::PI * lo * t + ph1).sin()
                    + a_hi * (2.0 * std::f64::consts::PI * hi * t + ph2).sin(),
            );
        }
        spans.push(KeySpan {
            digit: d,
            start: start as u64,
            end: (start + tone_len) as u64,
        });
        out.extend(std::iter::repeat_n(0.0, pause_len));
    }
    (out, spans)
}

/// Adds white noise at `snr_db` below the mean power of the tone samples.
pub fn add_noise(signal: &mut [f64], spans: &[KeySpan], snr_db: f64, seed: u64) {
    let mut rng = Rng::new(seed);
    let (mut p, mut n) = (0.0, 0usize);
    for s in spans {
        for &v in &signal[s.start as usize..s.end as usize] {
            p += v * v;
            n += 1;
        }
    }
    let sigma = (p / n.max(1) as f64 / 10f64.powf(snr_db / 10.0)).sqrt();
    for v in signal.iter_mut() {
        *v += sigma * rng.gauss();
    }
}

/// Mixes `under` (e.g. speech), scaled by `gain_db`, under `signal`, looping it if short.
pub fn mix_under(signal: &mut [f64], under: &[i16], gain_db: f64) {
    if under.is_empty() {
        return;
    }
    let g = 10f64.powf(gain_db / 20.0);
    for (i, v) in signal.iter_mut().enumerate() {
        *v += g * f64::from(under[i % under.len()]);
    }
}

pub fn to_i16(signal: &[f64]) -> Vec<i16> {
    signal
        .iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// Encodes and decodes through G.711, as a trunk's audio arrives.
pub fn g711_round_trip(audio: &[i16], codec: Codec) -> Vec<i16> {
    audio
        .iter()
        .map(|&s| codec.decode(codec.encode(s)))
        .collect()
}

/// Reads an 8 kHz mono PCM16 fixture from `fixtures/`.
pub fn fixture(name: &str) -> Vec<i16> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    tonewall::wav::read_wav(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The whole card as keyed in a payment: PAN, then expiry, then CVV.
pub fn card_keys() -> String {
    format!("{TEST_CARD}{TEST_EXPIRY}{TEST_CVV}")
}

/// A port on 127.0.0.1 free for both UDP and TCP (SIP listens on both), for a test's own
/// endpoints: tonewall's listeners and sipp's. The three above it are left alone too, as sipp's
/// media takes the ports beside the one it is given.
///
/// Taken from 65000 up: above the kernel's ephemeral range (32768-60999 by default) and the
/// tests' media ranges. A port the kernel picked, and the test let go of, could be handed to
/// another socket before sipp bound it, and sipp then failed with EADDRINUSE.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(65_000);
    loop {
        let p = NEXT.fetch_add(4, Ordering::Relaxed);
        assert!(p <= 65_531, "the tests ran out of ports");
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
}

/// Sends packets paced a little (loopback keeps order; pacing keeps socket buffers small).
pub async fn send_all(sock: &tokio::net::UdpSocket, to: std::net::SocketAddr, packets: &[Vec<u8>]) {
    for (i, p) in packets.iter().enumerate() {
        sock.send_to(p, to).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Receives until `n` datagrams arrived or nothing came for three seconds.
pub async fn recv_n(sock: &tokio::net::UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < n {
        let wait = std::time::Duration::from_secs(3);
        match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) => got.push(buf[..len].to_vec()),
            _ => break,
        }
    }
    got
}
