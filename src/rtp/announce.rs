//! The failure announcement a loop call hears when its locator leads nowhere: the special
//! information tone (ITU-T E.180: 950, 1400 and 1800 Hz, each 330 ms, then 1 s of silence,
//! repeated), generated as 20 ms G.711 RTP packets of the relay's own stream towards the caller.
//!
//! An intercept tone rather than speech: it needs no recorded prompt, every network and PBX
//! knows it means "this did not work", and none of its frequencies is a DTMF frequency.
//! Sans-IO: the shell paces the packets; this only writes them.

use crate::dsp::g711::Codec;
use crate::rtp::packet::write_header;

const RATE: f64 = 8000.0;
/// Samples per 20 ms packet.
pub const PACKET_SAMPLES: usize = 160;
const SEGMENTS: [(f64, usize); 4] = [(950.0, 2640), (1400.0, 2640), (1800.0, 2640), (0.0, 8000)];
/// -20 dBm0 sine peak, in linear PCM16 (0 dBm0 peak is 22 686 per the G.711 tables).
const AMPLITUDE: f64 = 2268.6;

/// One announcement stream: its own SSRC, sequence and timestamp.
#[derive(Clone, Debug)]
pub struct Announcer {
    codec: Codec,
    ssrc: u32,
    seq: u16,
    ts: u32,
    /// Sample position in the repeating pattern.
    pos: usize,
}

impl Announcer {
    pub fn new(codec: Codec, ssrc: u32, seq: u16, ts: u32) -> Announcer {
        Announcer {
            codec,
            ssrc,
            seq,
            ts,
            pos: 0,
        }
    }

    /// Writes the next packet into `out`; returns its length (0 if `out` is too short).
    pub fn next_packet(&mut self, out: &mut [u8]) -> usize {
        let first = self.pos == 0;
        let h = write_header(
            out,
            first,
            self.codec.payload_type(),
            self.seq,
            self.ts,
            self.ssrc,
        );
        let Some(payload) = out.get_mut(h..h + PACKET_SAMPLES).filter(|_| h > 0) else {
            return 0;
        };
        let period: usize = SEGMENTS.iter().map(|s| s.1).sum();
        for b in payload.iter_mut() {
            let mut at = self.pos % period;
            let mut freq = 0.0;
            for (f, len) in SEGMENTS {
                if at < len {
                    freq = f;
                    break;
                }
                at -= len;
            }
            let t = at as f64 / RATE;
            let s = AMPLITUDE * (2.0 * std::f64::consts::PI * freq * t).sin();
            *b = self.codec.encode(s as i16);
            self.pos += 1;
        }
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(PACKET_SAMPLES as u32);
        h + PACKET_SAMPLES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::spectrum;
    use crate::rtp::packet::RtpView;

    #[test]
    fn packets_are_continuous_and_carry_the_intercept_tone_not_dtmf() {
        let mut a = Announcer::new(Codec::Pcma, 0x1234, 0, 1000);
        let mut audio = Vec::new();
        let mut buf = [0u8; 256];
        for i in 0..200u32 {
            let n = a.next_packet(&mut buf);
            assert_eq!(n, 12 + PACKET_SAMPLES);
            let v = RtpView::parse(&buf[..n]).unwrap();
            assert_eq!(v.payload_type(), 8);
            assert_eq!(v.sequence(), i as u16);
            assert_eq!(v.timestamp(), 1000 + 160 * i);
            assert_eq!(v.ssrc(), 0x1234);
            audio.extend(v.payload().iter().map(|&b| Codec::Pcma.decode(b)));
        }
        // 4 s: two full patterns. Energy where the tones are, silence after them.
        let rms = |r: std::ops::Range<usize>| {
            (audio[r.clone()]
                .iter()
                .map(|&s| f64::from(s).powi(2))
                .sum::<f64>()
                / r.len() as f64)
                .sqrt()
        };
        assert!(rms(0..7920) > 1000.0);
        assert!(rms(8000..15_900) < 10.0);
        // An independent decoder hears no DTMF key in it.
        assert!(spectrum::fft_decode(&audio, &mut |_| {}).is_empty());
        assert_eq!(a.next_packet(&mut [0u8; 100]), 0);
    }
}
