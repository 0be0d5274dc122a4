//! Trunk emulation for offline tools, tests and the demo: turns 8 kHz audio into the RTP packets
//! a PSTN gateway would send (G.711 frames of one ptime, optionally with keys as RFC 4733
//! events instead of in-band tones), and turns a packet stream back into the audio a receiver
//! would play, placed by timestamp.
//!
//! Not on the relay's packet path: it allocates freely. It never reads a clock.

use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::rtp::event::TelephoneEvent;
use crate::rtp::packet::{RtpView, write_header};

/// One key's span in the audio, in samples: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpan {
    pub digit: Digit,
    pub start: u64,
    pub end: u64,
}

/// How the emulated trunk packetizes.
#[derive(Clone, Debug)]
pub struct TrunkConfig {
    pub codec: Codec,
    /// Samples per packet (160 = 20 ms).
    pub ptime: usize,
    pub event_pt: u8,
    pub ssrc: u32,
    pub first_seq: u16,
    pub first_ts: u32,
    /// Volume field of generated events, as a positive number of dB below 0 dBm0.
    pub event_volume: u8,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            codec: Codec::Pcmu,
            ptime: 160,
            event_pt: 101,
            ssrc: 0x5eed_cafe,
            first_seq: 1000,
            first_ts: 80_000,
            event_volume: 10,
        }
    }
}

/// Packetizes `audio`. With `events`, every frame overlapping a key's span is sent as RFC 4733
/// telephone-event packets (RFC 4733 §2.5.1: one timestamp per event, growing duration, E bit
/// on the last update repeated three times), the way gateways that strip in-band tones do; the
/// two repeated end packets take the next two frame slots, whose audio is not sent.
pub fn packetize(audio: &[i16], cfg: &TrunkConfig, events: Option<&[KeySpan]>) -> Vec<Vec<u8>> {
    let n = cfg.ptime.max(1);
    let frames = audio.len().div_ceil(n);
    let mut packets = Vec::with_capacity(frames);
    let mut seq = cfg.first_seq;
    let mut next_marker = true;
    let mut f = 0;
    while f < frames {
        let start = (f * n) as u64;
        let ts = cfg.first_ts.wrapping_add((f * n) as u32);
        let span = events.and_then(|spans| {
            spans
                .iter()
                .find(|s| s.start < start + n as u64 && s.end > start)
        });
        if let Some(span) = span {
            // All frames this key overlaps become one event.
            let last = ((span.end - 1) / n as u64) as usize;
            let event_ts = ts;
            let count = last + 1 - f;
            // Up to two free frame slots after the key carry the repeated end packets; a slot
            // that another key already needs is left to it.
            let overlaps_key = |frame: usize| {
                let s0 = (frame * n) as u64;
                events.is_some_and(|spans| {
                    spans.iter().any(|s| s.start < s0 + n as u64 && s.end > s0)
                })
            };
            let extra = (1..=2)
                .take_while(|k| last + k < frames && !overlaps_key(last + k))
                .count();
            for k in 0..count {
                let duration = ((k + 1) * n).min(u16::MAX as usize) as u16;
                let end = k + 1 == count;
                let copies = if end { 1 + extra } else { 1 };
                for _ in 0..copies {
                    let ev = TelephoneEvent {
                        event: span.digit.event_code(),
                        end,
                        volume: cfg.event_volume,
                        duration,
                    };
                    let mut pkt = vec![0u8; 16];
                    write_header(&mut pkt, k == 0, cfg.event_pt, seq, event_ts, cfg.ssrc);
                    let mut block = [0u8; 4];
                    ev.write(&mut block);
                    pkt[12..16].copy_from_slice(&block);
                    packets.push(pkt);
                    seq = seq.wrapping_add(1);
                }
            }
            f = last + 1 + extra;
            next_marker = true;
            continue;
        }
        let lo = f * n;
        let hi = (lo + n).min(audio.len());
        let mut pkt = vec![0u8; 12 + n];
        write_header(
            &mut pkt,
            next_marker,
            cfg.codec.payload_type(),
            seq,
            ts,
            cfg.ssrc,
        );
        for (i, b) in pkt[12..].iter_mut().enumerate() {
            let s = audio
                .get(lo + i)
                .copied()
                .filter(|_| lo + i < hi)
                .unwrap_or(0);
            *b = cfg.codec.encode(s);
        }
        packets.push(pkt);
        seq = seq.wrapping_add(1);
        next_marker = false;
        f += 1;
    }
    packets
}

/// What a receiver made of a packet stream.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Audio placed by timestamp from the first packet's timestamp; gaps are silence.
    pub audio: Vec<i16>,
    /// Telephone-event (or any non-G.711) packets that arrived.
    pub non_audio_packets: usize,
    pub audio_packets: usize,
}

/// Plays a packet stream back into audio, by timestamp relative to `origin_ts`.
pub fn depacketize<'a>(packets: impl IntoIterator<Item = &'a [u8]>, origin_ts: u32) -> Received {
    let mut rx = Received::default();
    for pkt in packets {
        let Ok(view) = RtpView::parse(pkt) else {
            continue;
        };
        let Some(codec) = Codec::from_payload_type(view.payload_type()) else {
            rx.non_audio_packets += 1;
            continue;
        };
        rx.audio_packets += 1;
        let at = view.timestamp().wrapping_sub(origin_ts) as usize;
        let payload = view.payload();
        if at > 100_000_000 {
            continue;
        }
        if rx.audio.len() < at + payload.len() {
            rx.audio.resize(at + payload.len(), 0);
        }
        for (o, &b) in rx.audio[at..].iter_mut().zip(payload) {
            *o = codec.decode(b);
        }
    }
    rx
}
