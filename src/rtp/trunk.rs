//! Trunk emulation for offline tools, tests and the demo: turns 8 kHz audio into the RTP packets
//! a PSTN gateway would send (G.711 frames of one ptime, optionally with keys as RFC 4733
//! events instead of in-band tones), and turns a packet stream back into the audio a receiver
//! would play, placed by timestamp.
//!
//! Not on the relay's packet path: it allocates freely. It never reads a clock.

use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::rtp::event::TelephoneEvent;
use crate::rtp::packet::{RtpView, RtpViewMut, write_header};

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
    deliver(audio, cfg, events, &Impairments::default())
        .into_iter()
        .map(|p| p.bytes)
        .collect()
}

/// What a real trunk does to a stream beyond packetizing it cleanly. Each is off by default;
/// every random choice comes from `seed`, so a failing case replays exactly.
#[derive(Clone, Debug, Default)]
pub struct Impairments {
    pub seed: u64,
    /// Share of packets lost, in percent.
    pub loss_pct: f64,
    /// Share of packets that arrive after their successor, in percent.
    pub reorder_pct: f64,
    /// Share of packets that arrive twice, in percent; the copy comes one to three packets
    /// after the original.
    pub duplicate_pct: f64,
    pub silence_suppression: Option<SilenceSuppression>,
    /// From the first packet whose audio starts at or after this sample offset, the stream has
    /// a new SSRC and new sequence and timestamp bases (a re-INVITE or a media server switch).
    /// Packets are renumbered whole, so an event is never split between two SSRCs.
    pub ssrc_change_at: Option<u64>,
    /// The first this many packets of every event are lost.
    pub lost_first_event_packets: usize,
    pub late_events: Option<LateEvents>,
    /// Share of audio packets, in percent, sent with the marker bit set though no talkspurt
    /// starts there: gateways that mark the first packet after every internal switch.
    pub spurious_marker_pct: f64,
}

/// Silence suppression by the sender's voice activity detector (RFC 3389): silent frames stop
/// being sent after a hang-over, a comfort-noise packet (payload type 13) stands for them, and
/// the first packet of the next talkspurt has the marker bit (RFC 3551 §4.1).
#[derive(Clone, Copy, Debug)]
pub struct SilenceSuppression {
    /// A frame whose samples all lie within ±`threshold` is silent.
    pub threshold: i16,
    /// Silent frames still sent as audio before suppression starts.
    pub hangover: usize,
    /// While suppressed, a comfort-noise packet every this many frames, the first at once.
    pub cn_every: usize,
}

/// A carrier that turns keys into RFC 4733 events only once its detector has heard them: the
/// key's first frames go out in-band as audio, the rest as events of the same key.
#[derive(Clone, Copy, Debug)]
pub struct LateEvents {
    /// At least this many samples of each key go out in-band: every frame that starts before
    /// the key's start plus `fragment`.
    pub fragment: usize,
    /// The events are dated from the tone's onset, their duration covering the in-band part
    /// too (RFC 4733 §2.5.1.1: the timestamp is when the event began); otherwise from the first
    /// frame they replace.
    pub backdated: bool,
}

/// Payload type of comfort noise (RFC 3551 §6, RFC 3389).
pub const PT_CN: u8 = 13;
/// Comfort-noise level sent: −70 dBov (RFC 3389 §3.1), a quiet line.
const CN_LEVEL: u8 = 70;

/// One packet as the trunk delivered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub bytes: Vec<u8>,
    /// Where the packet's timestamp falls in the source audio, in samples: the first sample of
    /// an audio frame, the start of the silence a comfort-noise packet stands for, the start of
    /// an event.
    pub at: u64,
}

/// Packetizes `audio` as [`packetize`] does, then impairs the stream as `imp` says, in the order
/// a real path would: the sender's choices (silence suppression, late events, an SSRC change),
/// then the network's (lost first event packets, loss, duplicates, reordering).
pub fn deliver(
    audio: &[i16],
    cfg: &TrunkConfig,
    events: Option<&[KeySpan]>,
    imp: &Impairments,
) -> Vec<Delivered> {
    let mut packets = send(audio, cfg, events.unwrap_or(&[]), events.is_some(), imp);
    let mut rng = SplitMix(imp.seed);
    if let Some(at) = imp.ssrc_change_at {
        change_ssrc(&mut packets, at, &mut rng);
    }
    if imp.lost_first_event_packets > 0 {
        lose_first_event_packets(&mut packets, cfg.event_pt, imp.lost_first_event_packets);
    }
    if imp.spurious_marker_pct > 0.0 {
        for p in &mut packets {
            let audio = RtpView::parse(&p.bytes)
                .is_ok_and(|v| Codec::from_payload_type(v.payload_type()).is_some());
            if audio
                && rng.chance(imp.spurious_marker_pct)
                && let Ok(mut v) = RtpViewMut::parse(&mut p.bytes)
            {
                v.set_marker(true);
            }
        }
    }
    packets.retain(|_| !rng.chance(imp.loss_pct));
    duplicate(&mut packets, imp.duplicate_pct, &mut rng);
    reorder(&mut packets, imp.reorder_pct, &mut rng);
    packets
}

/// The sender: frames of audio, events, comfort noise; sequence numbers without gaps.
fn send(
    audio: &[i16],
    cfg: &TrunkConfig,
    spans: &[KeySpan],
    as_events: bool,
    imp: &Impairments,
) -> Vec<Delivered> {
    let n = cfg.ptime.max(1);
    let frames = audio.len().div_ceil(n);
    let mut packets = Vec::with_capacity(frames);
    let mut seq = cfg.first_seq;
    // Where each key's events begin: at its start, or where a late carrier starts converting.
    let events_from = |s: &KeySpan| match imp.late_events {
        Some(late) => (s.start + late.fragment as u64).next_multiple_of(n as u64),
        None => s.start,
    };
    let overlaps = |s: &KeySpan, from: u64, frame: usize| {
        let s0 = (frame * n) as u64;
        from < s.end && from < s0 + n as u64 && s.end > s0
    };
    let mut next_marker = true;
    let mut silent_run = 0;
    let mut f = 0;
    while f < frames {
        let start = (f * n) as u64;
        let ts = cfg.first_ts.wrapping_add((f * n) as u32);
        let span = as_events
            .then(|| spans.iter().find(|s| overlaps(s, events_from(s), f)))
            .flatten();
        if let Some(span) = span {
            // All frames this key overlaps from where its events begin become one event.
            let last = ((span.end - 1) / n as u64) as usize;
            let count = last + 1 - f;
            let backdated = imp.late_events.is_some_and(|l| l.backdated);
            let event_at = if backdated { span.start } else { start };
            let event_ts = cfg.first_ts.wrapping_add(event_at as u32);
            // Up to two free frame slots after the key carry the repeated end packets; a slot
            // that another key already needs is left to it.
            let extra = (1..=2)
                .take_while(|k| {
                    last + k < frames && !spans.iter().any(|s| overlaps(s, s.start, last + k))
                })
                .count();
            for k in 0..count {
                let covered = start + ((k + 1) * n) as u64 - event_at;
                let duration = covered.min(u64::from(u16::MAX)) as u16;
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
                    packets.push(Delivered {
                        bytes: pkt,
                        at: event_at,
                    });
                    seq = seq.wrapping_add(1);
                }
            }
            f = last + 1 + extra;
            next_marker = true;
            silent_run = 0;
            continue;
        }
        let lo = f * n;
        let hi = (lo + n).min(audio.len());
        let samples = |i: usize| {
            audio
                .get(lo + i)
                .copied()
                .filter(|_| lo + i < hi)
                .unwrap_or(0)
        };
        if let Some(vad) = imp.silence_suppression {
            let silent = (0..n).all(|i| samples(i).unsigned_abs() <= vad.threshold.unsigned_abs());
            silent_run = if silent { silent_run + 1 } else { 0 };
            if silent_run > vad.hangover {
                let quiet = silent_run - vad.hangover - 1;
                if quiet % vad.cn_every.max(1) == 0 {
                    let mut pkt = vec![0u8; 13];
                    write_header(&mut pkt, false, PT_CN, seq, ts, cfg.ssrc);
                    pkt[12] = CN_LEVEL;
                    packets.push(Delivered {
                        bytes: pkt,
                        at: start,
                    });
                    seq = seq.wrapping_add(1);
                }
                next_marker = true;
                f += 1;
                continue;
            }
        }
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
            *b = cfg.codec.encode(samples(i));
        }
        packets.push(Delivered {
            bytes: pkt,
            at: start,
        });
        seq = seq.wrapping_add(1);
        next_marker = false;
        f += 1;
    }
    packets
}

/// Renumbers the stream from the first packet whose audio starts at or after `at`: a new SSRC,
/// sequence and timestamp bases drawn from `rng`, the marker on the new stream's first packet.
fn change_ssrc(packets: &mut [Delivered], at: u64, rng: &mut SplitMix) {
    let Some(first) = packets.iter().position(|p| p.at >= at) else {
        return;
    };
    let Ok(v) = RtpView::parse(&packets[first].bytes) else {
        return;
    };
    let (old_seq, old_ts, old_ssrc) = (v.sequence(), v.timestamp(), v.ssrc());
    let (mut ssrc, seq0, ts0) = (rng.next() as u32, rng.next() as u16, rng.next() as u32);
    if ssrc == old_ssrc {
        ssrc ^= 1;
    }
    for (i, p) in packets[first..].iter_mut().enumerate() {
        let Ok(mut v) = RtpViewMut::parse(&mut p.bytes) else {
            continue;
        };
        let (seq, ts) = (v.view().sequence(), v.view().timestamp());
        v.set_ssrc(ssrc);
        v.set_sequence(seq0.wrapping_add(seq.wrapping_sub(old_seq)));
        v.set_timestamp(ts0.wrapping_add(ts.wrapping_sub(old_ts)));
        if i == 0 {
            v.set_marker(true);
        }
    }
}

/// Drops the first `count` packets of every event (one SSRC and timestamp per event).
fn lose_first_event_packets(packets: &mut Vec<Delivered>, event_pt: u8, count: usize) {
    let mut current: Option<((u32, u32), usize)> = None;
    packets.retain(|p| {
        let Ok(v) = RtpView::parse(&p.bytes) else {
            return true;
        };
        if v.payload_type() != event_pt {
            return true;
        }
        let id = (v.ssrc(), v.timestamp());
        let seen = match current {
            Some((cur, seen)) if cur == id => seen,
            _ => 0,
        };
        current = Some((id, seen + 1));
        seen >= count
    });
}

/// Sends a copy of some packets again, one to three packets after the original.
fn duplicate(packets: &mut Vec<Delivered>, pct: f64, rng: &mut SplitMix) {
    if pct <= 0.0 {
        return;
    }
    let mut out = Vec::with_capacity(packets.len() + packets.len() / 10);
    // Copies waiting for their turn: (originals still to pass, copy).
    let mut pending: Vec<(u64, Delivered)> = Vec::new();
    for p in packets.drain(..) {
        let copy = rng.chance(pct).then(|| (1 + rng.next() % 3, p.clone()));
        out.push(p);
        pending.retain_mut(|(wait, copy)| {
            *wait -= 1;
            if *wait == 0 {
                out.push(copy.clone());
            }
            *wait != 0
        });
        pending.extend(copy);
    }
    out.extend(pending.into_iter().map(|(_, p)| p));
    *packets = out;
}

/// Swaps some packets with their successor; a swapped pair is not swapped again.
fn reorder(packets: &mut [Delivered], pct: f64, rng: &mut SplitMix) {
    let mut i = 0;
    while i + 1 < packets.len() {
        if rng.chance(pct) {
            packets.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator, enough for reproducible
/// impairments and independent of any crate's stream across versions.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `pct` percent.
    fn chance(&mut self, pct: f64) -> bool {
        pct > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 100.0 < pct
    }
}

/// What a receiver made of a packet stream.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// Audio placed by timestamp from the first packet's timestamp; gaps are silence.
    pub audio: Vec<i16>,
    /// Telephone-event (or any other non-G.711) packets that arrived; comfort noise aside.
    pub non_audio_packets: usize,
    pub audio_packets: usize,
    /// Comfort-noise packets (RFC 3389): a level for the silence that follows, no audio.
    pub comfort_noise_packets: usize,
}

/// Plays a packet stream back into audio, by timestamp relative to `origin_ts`. A stream that
/// starts under a new SSRC (a re-INVITE, a media server switch) plays on from where the audio
/// heard so far ends, as a receiver that restarts its jitter buffer for the new source would.
pub fn depacketize<'a>(packets: impl IntoIterator<Item = &'a [u8]>, origin_ts: u32) -> Received {
    let mut rx = Received::default();
    // Each SSRC's timestamp origin, in the order the sources appeared.
    let mut origins: Vec<(u32, u32)> = Vec::new();
    for pkt in packets {
        let Ok(view) = RtpView::parse(pkt) else {
            continue;
        };
        if view.payload_type() == PT_CN {
            rx.comfort_noise_packets += 1;
            continue;
        }
        let Some(codec) = Codec::from_payload_type(view.payload_type()) else {
            rx.non_audio_packets += 1;
            continue;
        };
        rx.audio_packets += 1;
        let origin = match origins.iter().find(|(ssrc, _)| *ssrc == view.ssrc()) {
            Some(&(_, origin)) => origin,
            None => {
                let origin = if origins.is_empty() {
                    origin_ts
                } else {
                    view.timestamp().wrapping_sub(rx.audio.len() as u32)
                };
                origins.push((view.ssrc(), origin));
                origin
            }
        };
        let at = view.timestamp().wrapping_sub(origin) as usize;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Audio no frame of which is silent: a slow ramp through the codec's range.
    fn busy(len: usize) -> Vec<i16> {
        (0..len).map(|i| 1000 + (i % 4000) as i16).collect()
    }

    fn seqs(packets: &[Delivered]) -> Vec<u16> {
        packets
            .iter()
            .map(|p| RtpView::parse(&p.bytes).unwrap().sequence())
            .collect()
    }

    fn view(p: &Delivered) -> RtpView<'_> {
        RtpView::parse(&p.bytes).unwrap()
    }

    fn key(c: char, start: u64, end: u64) -> KeySpan {
        KeySpan {
            digit: Digit::from_char(c).unwrap(),
            start,
            end,
        }
    }

    #[test]
    fn no_impairment_is_plain_packetizing() {
        let audio = busy(16_000);
        let spans = [key('5', 3000, 3800)];
        let cfg = TrunkConfig::default();
        let plain = packetize(&audio, &cfg, Some(&spans));
        let delivered = deliver(&audio, &cfg, Some(&spans), &Impairments::default());
        let bytes: Vec<Vec<u8>> = delivered.iter().map(|p| p.bytes.clone()).collect();
        assert_eq!(bytes, plain);
        for p in &delivered {
            let v = view(p);
            assert_eq!(
                u64::from(v.timestamp().wrapping_sub(cfg.first_ts)),
                p.at,
                "`at` is the packet's place in the audio"
            );
        }
    }

    #[test]
    fn loss_drops_about_the_right_share_and_keeps_the_rest_intact() {
        let audio = busy(160 * 2000);
        let cfg = TrunkConfig::default();
        let clean = deliver(&audio, &cfg, None, &Impairments::default());
        for (seed, pct) in [(1, 1.0), (2, 3.0), (3, 5.0)] {
            let imp = Impairments {
                seed,
                loss_pct: pct,
                ..Impairments::default()
            };
            let lossy = deliver(&audio, &cfg, None, &imp);
            let lost = clean.len() - lossy.len();
            let expected = clean.len() as f64 * pct / 100.0;
            // Binomial: within four standard deviations.
            let slack = 4.0 * expected.sqrt();
            assert!(
                (lost as f64 - expected).abs() < slack,
                "{pct} %: lost {lost} of {}",
                clean.len()
            );
            let s = seqs(&lossy);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "survivors stay in order");
            assert!(lossy.iter().all(|p| clean.contains(p)), "and unchanged");
        }
        let imp = Impairments {
            seed: 2,
            loss_pct: 3.0,
            ..Impairments::default()
        };
        assert_eq!(
            deliver(&audio, &cfg, None, &imp),
            deliver(&audio, &cfg, None, &imp),
            "same seed, same loss"
        );
    }

    #[test]
    fn reorder_swaps_neighbours_only() {
        let audio = busy(160 * 2000);
        let cfg = TrunkConfig::default();
        let imp = Impairments {
            seed: 7,
            reorder_pct: 5.0,
            ..Impairments::default()
        };
        let s = seqs(&deliver(&audio, &cfg, None, &imp));
        assert_eq!(s.len(), 2000, "nothing lost or added");
        let mut swaps = 0;
        let mut i = 0;
        while i < s.len() {
            let expect = cfg.first_seq.wrapping_add(i as u16);
            if s[i] == expect {
                i += 1;
                continue;
            }
            assert_eq!(
                (s[i], s[i + 1]),
                (expect.wrapping_add(1), expect),
                "packet {i}: a swap of neighbours"
            );
            swaps += 1;
            i += 2;
        }
        assert!((60..=140).contains(&swaps), "{swaps} swaps for 5 % of 2000");
    }

    #[test]
    fn duplicates_repeat_one_to_three_packets_later() {
        let audio = busy(160 * 2000);
        let cfg = TrunkConfig::default();
        let imp = Impairments {
            seed: 11,
            duplicate_pct: 5.0,
            ..Impairments::default()
        };
        let delivered = deliver(&audio, &cfg, None, &imp);
        let mut originals = Vec::new();
        let mut copies = 0;
        for (i, p) in delivered.iter().enumerate() {
            if let Some(j) = delivered[..i].iter().position(|q| q == p) {
                let between = originals.len() - 1 - originals.iter().position(|&k| k == j).unwrap();
                // Copies still waiting when the stream ends come right after its last packet.
                let at_end = originals.len() == 2000;
                assert!(
                    (1..=3).contains(&between) || at_end,
                    "copy {between} originals after"
                );
                copies += 1;
            } else {
                originals.push(i);
            }
        }
        assert_eq!(originals.len(), 2000);
        assert!(
            (60..=140).contains(&copies),
            "{copies} copies for 5 % of 2000"
        );
    }

    #[test]
    fn an_ssrc_change_renumbers_the_rest_of_the_stream() {
        let audio = busy(16_000);
        let spans = [key('7', 7900, 8700)];
        let cfg = TrunkConfig::default();
        let clean = deliver(&audio, &cfg, Some(&spans), &Impairments::default());
        let imp = Impairments {
            seed: 5,
            ssrc_change_at: Some(8000),
            ..Impairments::default()
        };
        let changed = deliver(&audio, &cfg, Some(&spans), &imp);
        assert_eq!(changed.len(), clean.len());
        // The key's events start at 7840, before the change: they stay whole under the old SSRC.
        let first = clean.iter().position(|p| p.at >= 8000).unwrap();
        assert_eq!(view(&clean[first]).payload_type(), 0);
        let new = view(&changed[first]);
        assert_ne!(new.ssrc(), cfg.ssrc);
        assert!(new.marker(), "the new stream's first packet has the marker");
        for (i, (c, p)) in clean.iter().zip(&changed).enumerate() {
            let (c, p) = (view(c), view(p));
            assert_eq!(c.payload(), p.payload());
            if i < first {
                assert_eq!(c.as_bytes(), p.as_bytes());
                continue;
            }
            assert_eq!(p.ssrc(), new.ssrc());
            let k = (i - first) as u16;
            assert_eq!(p.sequence(), new.sequence().wrapping_add(k));
            assert_eq!(
                p.timestamp().wrapping_sub(new.timestamp()),
                c.timestamp().wrapping_sub(view(&clean[first]).timestamp()),
                "timestamps keep their spacing"
            );
        }
    }

    #[test]
    fn silence_suppression_sends_comfort_noise_and_marks_the_next_talkspurt() {
        let mut audio = busy(1600);
        audio.extend(vec![0; 3200]);
        audio.extend(busy(1600));
        let cfg = TrunkConfig::default();
        let imp = Impairments {
            silence_suppression: Some(SilenceSuppression {
                threshold: 0,
                hangover: 2,
                cn_every: 5,
            }),
            ..Impairments::default()
        };
        let delivered = deliver(&audio, &cfg, None, &imp);
        let kinds: Vec<(u8, bool, u64)> = delivered
            .iter()
            .map(|p| (view(p).payload_type(), view(p).marker(), p.at))
            .collect();
        // Ten frames of sound, two of hang-over, then 18 suppressed: comfort noise at the first
        // and every fifth; ten frames of sound again, the first marked.
        let mut expected = Vec::new();
        for f in 0..12 {
            expected.push((0, f == 0, f * 160));
        }
        for f in [12, 17, 22, 27] {
            expected.push((PT_CN, false, f * 160));
        }
        for f in 30..40 {
            expected.push((0, f == 30, f * 160));
        }
        assert_eq!(kinds, expected);
        let s = seqs(&delivered);
        assert!(
            s.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "sequence numbers run on through the silence"
        );
    }

    #[test]
    fn late_events_send_the_key_onset_in_band() {
        let audio = busy(4000);
        let spans = [key('3', 1000, 1800)];
        let cfg = TrunkConfig::default();
        for backdated in [false, true] {
            let imp = Impairments {
                late_events: Some(LateEvents {
                    fragment: 160,
                    backdated,
                }),
                ..Impairments::default()
            };
            let delivered = deliver(&audio, &cfg, Some(&spans), &imp);
            // Frames from 1280 (the first boundary at or after 1000 + 160) to 1920 are events.
            let audio_at: Vec<u64> = delivered
                .iter()
                .filter(|p| view(p).payload_type() == 0)
                .map(|p| p.at)
                .collect();
            assert!(audio_at.contains(&1120), "the onset's frames go in-band");
            assert!(!audio_at.iter().any(|&a| (1280..2240).contains(&a)));
            let events: Vec<(u32, TelephoneEvent)> = delivered
                .iter()
                .filter(|p| view(p).payload_type() == 101)
                .map(|p| {
                    let v = view(p);
                    (v.timestamp(), TelephoneEvent::parse(v.payload()).unwrap())
                })
                .collect();
            let onset = if backdated { 1000 } else { 1280 };
            assert!(
                events
                    .iter()
                    .all(|(ts, _)| *ts == cfg.first_ts + onset as u32)
            );
            let durations: Vec<u16> = events.iter().map(|(_, e)| e.duration).collect();
            let ends = [1440, 1600, 1760, 1920, 1920, 1920].map(|e| (e - onset) as u16);
            assert_eq!(durations, ends, "backdated {backdated}");
        }
    }

    #[test]
    fn the_first_packets_of_every_event_can_be_lost() {
        let audio = busy(8000);
        let spans = [key('1', 1600, 2400), key('2', 4000, 4800)];
        let cfg = TrunkConfig::default();
        let clean = deliver(&audio, &cfg, Some(&spans), &Impairments::default());
        let imp = Impairments {
            lost_first_event_packets: 2,
            ..Impairments::default()
        };
        let lossy = deliver(&audio, &cfg, Some(&spans), &imp);
        let durations = |packets: &[Delivered]| -> Vec<u16> {
            packets
                .iter()
                .filter(|p| view(p).payload_type() == 101)
                .map(|p| TelephoneEvent::parse(view(p).payload()).unwrap().duration)
                .collect()
        };
        assert_eq!(
            durations(&clean),
            [160, 320, 480, 640, 800, 800, 800].repeat(2)
        );
        assert_eq!(durations(&lossy), [480, 640, 800, 800, 800].repeat(2));
        assert_eq!(clean.len() - lossy.len(), 4);
    }

    #[test]
    fn spurious_markers_touch_only_the_marker_of_audio_packets() {
        let audio = busy(16_000);
        let spans = [key('4', 4000, 4800)];
        let cfg = TrunkConfig::default();
        let clean = deliver(&audio, &cfg, Some(&spans), &Impairments::default());
        let imp = Impairments {
            seed: 7,
            spurious_marker_pct: 30.0,
            ..Impairments::default()
        };
        let marked = deliver(&audio, &cfg, Some(&spans), &imp);
        assert_eq!(clean.len(), marked.len());
        let mut extra = 0;
        for (c, m) in clean.iter().zip(&marked) {
            let (cv, mv) = (view(c), view(m));
            assert_eq!(cv.payload(), mv.payload());
            assert_eq!(
                (cv.sequence(), cv.timestamp(), cv.payload_type()),
                (mv.sequence(), mv.timestamp(), mv.payload_type())
            );
            if mv.marker() && !cv.marker() {
                assert_ne!(mv.payload_type(), 101, "event markers are the sender's");
                extra += 1;
            }
        }
        // 93 audio packets at 30 %: well away from none and from all.
        assert!((10..60).contains(&extra), "{extra} markers added");
    }

    #[test]
    fn playback_follows_a_new_ssrc_and_skips_comfort_noise() {
        let audio = busy(3200);
        let cfg = TrunkConfig::default();
        let imp = Impairments {
            seed: 9,
            ssrc_change_at: Some(1600),
            ..Impairments::default()
        };
        let mut delivered = deliver(&audio, &cfg, None, &imp);
        let mut cn = vec![0u8; 13];
        write_header(&mut cn, false, PT_CN, 1, cfg.first_ts, cfg.ssrc);
        delivered.insert(3, Delivered { bytes: cn, at: 0 });
        let rx = depacketize(delivered.iter().map(|p| p.bytes.as_slice()), cfg.first_ts);
        assert_eq!(rx.comfort_noise_packets, 1);
        assert_eq!(rx.non_audio_packets, 0);
        let expected: Vec<i16> = audio
            .iter()
            .map(|&s| cfg.codec.decode(cfg.codec.encode(s)))
            .collect();
        assert_eq!(rx.audio, expected);
    }
}
