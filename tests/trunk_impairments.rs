//! Real trunks are not clean (issue 20): the card keyed over a caller's room, sent through the
//! trunk emulator's impairments (loss, reordering, duplicates, ptime of 10/30/40 ms, silence
//! suppression with comfort noise and markers, spurious markers, an SSRC change, lost first
//! event packets, carriers that send a key's onset in-band and then its events), scrubbed by
//! the relay's own `Scrubber` in arrival order, as the relay receives it. For every case:
//!
//! - nothing of a key reaches the agent: every sample the scrubber was given from inside a key
//!   comes out as silence (silence mask), and the auditor's decoder and residue scanner find
//!   nothing in the agent's audio, played back by timestamp or in arrival order;
//! - capture reports every key that arrived (40 ms or more of it, or any of its events) exactly
//!   once, and nothing that was not keyed;
//! - every other sample passes bit-exact, D samples later, in the order it arrived;
//! - each packet out carries its packet's sequence, timestamp and SSRC, in the audio payload
//!   type; per stream, sequence order is timestamp order with no overlap; only duplicates and
//!   late event updates are dropped;
//! - nothing panics.

mod common;

use common::*;
use tonewall::digit::DigitSource;
use tonewall::dsp::g711::Codec;
use tonewall::dsp::mask::MaskKind;
use tonewall::dsp::spectrum;
use tonewall::rtp::packet::RtpView;
use tonewall::rtp::scrubber::{DropReason, ScrubbedDigit, Scrubber, ScrubberConfig, Verdict};
use tonewall::rtp::trunk::{
    Delivered, Impairments, KeySpan, LateEvents, PT_CN, SilenceSuppression, TrunkConfig, deliver,
    depacketize,
};

const EVENT_PT: u8 = 101;

/// The caller's side: a card keyed over a quiet room (speech 20 dB under the keys), then the
/// expiry and CVV keyed in a silent room, so a sender that suppresses silence does so between
/// those keys.
struct Call {
    audio: Vec<i16>,
    spans: Vec<KeySpan>,
}

fn call() -> Call {
    let keys = card_keys();
    let (pan, rest) = keys.split_at(TEST_CARD.len());
    let p = ToneParams {
        level_dbm0: -15.0,
        tone_ms: 100.0,
        pause_ms: 80.0,
        ..ToneParams::default()
    };
    let (mut a, mut spans) = tones(pan, p, 700.0, 1);
    let speech = fixture("speech_en_hello.wav");
    let rms =
        (speech.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / speech.len() as f64).sqrt();
    let speech_dbm0 = 20.0 * (rms / (DBM0_PEAK / 2f64.sqrt())).log10();
    a.extend(std::iter::repeat_n(0.0, 1200));
    mix_under(&mut a, &speech, -35.0 - speech_dbm0);
    let (b, b_spans) = tones(
        rest,
        ToneParams {
            pause_ms: 140.0,
            ..p
        },
        200.0,
        2,
    );
    let offset = a.len() as u64;
    a.extend(b);
    spans.extend(b_spans.into_iter().map(|s| KeySpan {
        start: s.start + offset,
        end: s.end + offset,
        ..s
    }));
    a.extend(std::iter::repeat_n(0.0, 2400));
    Call {
        audio: to_i16(&a),
        spans,
    }
}

struct Case {
    label: String,
    /// Samples per packet.
    ptime: usize,
    events: bool,
    imp: Impairments,
}

fn case(label: &str, ptime: usize, events: bool, imp: Impairments) -> Case {
    Case {
        label: format!(
            "{label} (ptime {} ms, {})",
            ptime / 8,
            if events { "events" } else { "in-band" }
        ),
        ptime,
        events,
        imp,
    }
}

/// What the scrubber made of one delivered stream.
struct Run {
    delivered: Vec<Delivered>,
    /// For each delivered packet, the packet sent for it, if any.
    sent: Vec<Option<Vec<u8>>>,
    digits: Vec<ScrubbedDigit>,
    delay: usize,
}

fn scrub(call: &Call, c: &Case, mask: MaskKind) -> Run {
    let trunk = TrunkConfig {
        ptime: c.ptime,
        event_pt: EVENT_PT,
        ..TrunkConfig::default()
    };
    let delivered = deliver(&call.audio, &trunk, c.events.then_some(&call.spans), &c.imp);
    let mut s = Scrubber::new(ScrubberConfig {
        mask,
        ..ScrubberConfig::default()
    });
    let mut digits = Vec::new();
    let mut sent = Vec::new();
    let mut buf = [0u8; 2048];
    let ms = (c.ptime / 8) as u64;
    for (i, p) in delivered.iter().enumerate() {
        match s.process(i as u64 * ms, &p.bytes, &mut buf, &mut |d| digits.push(d)) {
            Verdict::Forward(len) => sent.push(Some(buf[..len].to_vec())),
            Verdict::Drop(DropReason::Duplicate) => {
                assert!(
                    delivered[..i].iter().any(|q| q.bytes == p.bytes),
                    "{}: packet {i} dropped as a duplicate of nothing",
                    c.label
                );
                sent.push(None);
            }
            Verdict::Drop(DropReason::LateEvent) => {
                assert_eq!(RtpView::parse(&p.bytes).unwrap().payload_type(), EVENT_PT);
                sent.push(None);
            }
            Verdict::Drop(DropReason::LateAudio) => {
                // Only a key's onset, sent in-band before an event dated from it, can come
                // after the event filled its time.
                assert!(
                    event_key(&call.spans, p.at, c.ptime).is_some(),
                    "{}: audio away from every key dropped as late",
                    c.label
                );
                sent.push(None);
            }
            Verdict::Drop(r) => panic!("{}: packet {i} dropped: {r}", c.label),
        }
    }
    // The call goes on without packets for a while, then ends.
    let end = delivered.len() as u64 * ms;
    s.tick(end + 2000, &mut |d| digits.push(d));
    s.finish(&mut |d| digits.push(d));
    Run {
        delivered,
        sent,
        digits,
        delay: s.delay_samples(),
    }
}

/// The scrubber's own timeline (samples fed, in arrival order): what went in, where each sample
/// came from, and what came out.
struct Lane {
    /// G.711 byte fed; None for a frame standing in for an RFC 4733 event.
    fed: Vec<Option<u8>>,
    /// Key of the call each sample belongs to, if any.
    key: Vec<Option<usize>>,
    out: Vec<u8>,
}

fn key_at(spans: &[KeySpan], at: u64) -> Option<usize> {
    spans.iter().position(|s| (s.start..s.end).contains(&at))
}

/// The key an event packet stands for: its timestamp is the start of the first frame the key
/// overlaps, which may begin before the key does.
fn event_key(spans: &[KeySpan], at: u64, ptime: usize) -> Option<usize> {
    spans
        .iter()
        .position(|s| s.start < at + ptime as u64 && at < s.end)
}

fn lane(call: &Call, run: &Run, ptime: usize) -> Lane {
    let mut l = Lane {
        fed: Vec::new(),
        key: Vec::new(),
        out: Vec::new(),
    };
    for (d, sent) in run.delivered.iter().zip(&run.sent) {
        let Some(sent) = sent else { continue };
        let (vin, vout) = (
            RtpView::parse(&d.bytes).unwrap(),
            RtpView::parse(sent).unwrap(),
        );
        if vout.payload_type() == PT_CN {
            continue;
        }
        if vin.payload_type() == EVENT_PT {
            let k = event_key(&call.spans, d.at, ptime);
            assert!(k.is_some(), "an event outside every key");
            for _ in vout.payload() {
                l.fed.push(None);
                l.key.push(k);
            }
        } else {
            for (i, &b) in vin.payload().iter().enumerate() {
                l.fed.push(Some(b));
                l.key.push(key_at(&call.spans, d.at + i as u64));
            }
        }
        l.out.extend_from_slice(vout.payload());
    }
    l
}

/// Sequence, timestamp and SSRC out are those in; the payload type is audio; per stream,
/// frames follow in sequence order without overlap, and consecutive packets are contiguous.
fn assert_headers(run: &Run, label: &str) {
    let mut views = Vec::new();
    for (d, sent) in run.delivered.iter().zip(&run.sent) {
        let Some(sent) = sent else { continue };
        let (vin, vout) = (
            RtpView::parse(&d.bytes).unwrap(),
            RtpView::parse(sent).unwrap(),
        );
        assert_eq!(
            (vin.sequence(), vin.ssrc()),
            (vout.sequence(), vout.ssrc()),
            "{label}: header changed"
        );
        if vin.payload_type() != EVENT_PT {
            assert_eq!(
                vin.timestamp(),
                vout.timestamp(),
                "{label}: timestamp changed"
            );
            assert_eq!(vin.payload().len(), vout.payload().len(), "{label}");
        }
        assert_ne!(
            vout.payload_type(),
            EVENT_PT,
            "{label}: an event reached the agent"
        );
        if vout.payload_type() != PT_CN {
            assert!(Codec::from_payload_type(vout.payload_type()).is_some());
            views.push(vout);
        }
    }
    // Each stream's packets in sequence order, from its own first packet's number.
    let mut bases: Vec<(u32, u16)> = Vec::new();
    for v in &views {
        if !bases.iter().any(|b| b.0 == v.ssrc()) {
            bases.push((v.ssrc(), v.sequence()));
        }
    }
    let base = |ssrc: u32| bases.iter().find(|b| b.0 == ssrc).map_or(0, |b| b.1);
    views.sort_by_key(|v| (v.ssrc(), v.sequence().wrapping_sub(base(v.ssrc())) as i16));
    for w in views.windows(2) {
        if w[0].ssrc() != w[1].ssrc() {
            continue;
        }
        assert_ne!(
            w[0].sequence(),
            w[1].sequence(),
            "{label}: a sequence number sent twice"
        );
        let gap = w[1].timestamp().wrapping_sub(w[0].timestamp()) as i32;
        let len = w[0].payload().len() as i32;
        let what = format!(
            "{label}: seq {} at ts {} ({len} samples), then seq {} at ts {}",
            w[0].sequence(),
            w[0].timestamp(),
            w[1].sequence(),
            w[1].timestamp()
        );
        assert!(gap >= len, "{what}: back or overlapping");
        if w[1].sequence() == w[0].sequence().wrapping_add(1) {
            assert_eq!(gap, len, "{what}: not contiguous");
        }
    }
}

/// Every key sample fed comes out as silence; every sample fed farther than the guards from
/// any key sample comes out bit-exact, `delay` samples later.
fn assert_lane(l: &Lane, delay: usize, codec: Codec, label: &str) {
    let n = l.fed.len();
    let (before, after) = (160, 240);
    let mut guarded = vec![false; n];
    for (j, k) in l.key.iter().enumerate() {
        if k.is_some() {
            for g in &mut guarded[j.saturating_sub(before)..(j + after + 1).min(n)] {
                *g = true;
            }
        }
    }
    let mut altered = 0;
    let fed = l.fed.iter().zip(&l.key).zip(&guarded);
    for (j, ((&fed, &key), &guarded)) in fed.enumerate() {
        let Some(&out) = l.out.get(j + delay) else {
            break;
        };
        if let Some(k) = key {
            let v = codec.decode(out);
            assert!(
                v.unsigned_abs() <= 8,
                "{label}: key {k} leaked at lane sample {j} (agent {v})"
            );
        } else if !guarded && fed != Some(out) {
            altered += 1;
        }
    }
    assert_eq!(
        altered, 0,
        "{label}: {altered} samples altered away from every key"
    );
}

fn assert_scans_clean(audio: &[i16], label: &str) {
    let found = spectrum::fft_decode(audio, &mut |_| {});
    assert!(
        found.is_empty(),
        "{label}: the decoder hears {} digits at the agent",
        found.len()
    );
    let residue = spectrum::sensitive_scan(audio, &mut |_| {});
    assert!(
        residue.is_empty(),
        "{label}: {} dual-tone fragments at the agent, the first at {:.1} ms",
        residue.len(),
        residue[0].start_ms
    );
}

/// Each key that arrived is reported once, where it was keyed; nothing else is.
fn assert_capture(call: &Call, run: &Run, l: &Lane, c: &Case) {
    let (ptime, events, label) = (c.ptime, c.events, c.label.as_str());
    let mut delivered_samples = vec![0usize; call.spans.len()];
    let mut event_seen = vec![false; call.spans.len()];
    let mut seen = std::collections::HashSet::new();
    for (d, sent) in run.delivered.iter().zip(&run.sent) {
        let v = RtpView::parse(&d.bytes).unwrap();
        if v.payload_type() == EVENT_PT {
            if let Some(k) = event_key(&call.spans, d.at, ptime) {
                event_seen[k] = true;
            }
        } else if sent.is_some() && v.payload_type() != PT_CN {
            for i in 0..v.payload().len() as u64 {
                if let Some(k) = key_at(&call.spans, d.at + i)
                    && seen.insert(d.at + i)
                {
                    delivered_samples[k] += 1;
                }
            }
        }
    }
    let mut reports = vec![0; call.spans.len()];
    for d in &run.digits {
        let mid = ((d.start + d.end) / 2).min(l.key.len() as u64 - 1) as usize;
        // The key the report's middle lies in, or the nearest one on the lane.
        let k = (0..l.key.len())
            .flat_map(|r| [mid.checked_sub(r), Some(mid + r)])
            .flatten()
            .filter_map(|j| l.key.get(j).copied().flatten())
            .next()
            .unwrap_or_else(|| panic!("{label}: a digit reported with no key on the lane"));
        assert_eq!(
            d.digit, call.spans[k].digit,
            "{label}: key {k} reported as another digit"
        );
        if events && event_seen[k] {
            assert_eq!(d.source, DigitSource::Rfc4733, "{label}: key {k}");
        }
        reports[k] += 1;
    }
    // Where each key begins and ends on the lane: two presses of one key with less than 40 ms
    // of the pause between them arriving are one tone to any receiver (Q.24 asks a detector to
    // part keys 40 ms apart), so only the first of them must be reported.
    let first = |k: usize| l.key.iter().position(|&x| x == Some(k));
    let last = |k: usize| l.key.iter().rposition(|&x| x == Some(k));
    let parted = |k: usize| {
        let Some(start) = first(k) else { return true };
        let Some(prev) = (0..k).rev().find(|&p| last(p).is_some_and(|e| e < start)) else {
            return true;
        };
        call.spans[prev].digit != call.spans[k].digit || start - last(prev).unwrap() > 320
    };
    for (k, &r) in reports.iter().enumerate() {
        assert!(r <= 1, "{label}: key {k} reported {r} times");
        let arrived = (event_seen[k] || delivered_samples[k] >= 320) && parted(k);
        assert!(
            !arrived || r == 1,
            "{label}: key {k} arrived but was not reported"
        );
    }
}

fn check(call: &Call, c: &Case) {
    let label = c.label.as_str();
    let run = scrub(call, c, MaskKind::Silence);
    assert_headers(&run, label);
    let l = lane(call, &run, c.ptime);
    assert_lane(&l, run.delay, Codec::Pcmu, label);
    assert_capture(call, &run, &l, c);
    // The comfort mask the agent hears by default, judged by the auditor's tools, both as a
    // receiver plays it (by timestamp) and as a recorder that keeps arrival order would.
    let run = scrub(call, c, MaskKind::Noise);
    let sent: Vec<&[u8]> = run.sent.iter().flatten().map(|p| p.as_slice()).collect();
    let agent = depacketize(sent, TrunkConfig::default().first_ts);
    assert_eq!(agent.non_audio_packets, 0, "{label}");
    assert_scans_clean(&agent.audio, &format!("{label}, by timestamp"));
    let arrival: Vec<i16> = lane(call, &run, c.ptime)
        .out
        .iter()
        .map(|&b| Codec::Pcmu.decode(b))
        .collect();
    assert_scans_clean(&arrival, &format!("{label}, in arrival order"));
}

fn both(label: &str, ptime: usize, imp: Impairments) -> [Case; 2] {
    [
        case(label, ptime, false, imp.clone()),
        case(label, ptime, true, imp),
    ]
}

#[test]
fn a_clean_trunk_at_every_ptime() {
    let call = call();
    for ptime in [80, 160, 240, 320] {
        for c in both("clean", ptime, Impairments::default()) {
            check(&call, &c);
        }
    }
}

#[test]
fn packet_loss_of_one_to_five_percent() {
    let call = call();
    for (seed, loss) in [(11, 1.0), (12, 3.0), (13, 5.0), (14, 5.0)] {
        for ptime in [160, 240] {
            let imp = Impairments {
                seed,
                loss_pct: loss,
                ..Impairments::default()
            };
            for c in both(&format!("{loss} % loss, seed {seed}"), ptime, imp) {
                check(&call, &c);
            }
        }
    }
}

#[test]
fn reordering_and_duplicates() {
    let call = call();
    for seed in [21, 22, 23] {
        for ptime in [80, 160] {
            let reorder = Impairments {
                seed,
                reorder_pct: 5.0,
                ..Impairments::default()
            };
            let dups = Impairments {
                seed,
                duplicate_pct: 5.0,
                ..Impairments::default()
            };
            for c in both(&format!("5 % reordered, seed {seed}"), ptime, reorder)
                .into_iter()
                .chain(both(&format!("5 % duplicated, seed {seed}"), ptime, dups))
            {
                check(&call, &c);
            }
        }
    }
}

#[test]
fn silence_suppression_comfort_noise_and_markers() {
    let call = call();
    for ptime in [160, 320] {
        for hangover in [0, 2] {
            let imp = Impairments {
                silence_suppression: Some(SilenceSuppression {
                    threshold: 0,
                    hangover,
                    cn_every: 3,
                }),
                ..Impairments::default()
            };
            for c in both(
                &format!("silence suppressed, hangover {hangover}"),
                ptime,
                imp,
            ) {
                check(&call, &c);
            }
        }
        let imp = Impairments {
            seed: 31,
            spurious_marker_pct: 20.0,
            ..Impairments::default()
        };
        for c in both("20 % spurious markers", ptime, imp) {
            check(&call, &c);
        }
    }
}

#[test]
fn an_ssrc_change_mid_card() {
    let call = call();
    // Between two keys, then in the middle of one.
    let between = (call.spans[7].end + call.spans[8].start) / 2;
    let inside = call.spans[12].start + 300;
    for at in [between, inside] {
        for ptime in [160, 240] {
            let imp = Impairments {
                seed: 41,
                ssrc_change_at: Some(at),
                ..Impairments::default()
            };
            for c in both(&format!("SSRC change at sample {at}"), ptime, imp) {
                check(&call, &c);
            }
        }
    }
}

#[test]
fn events_whose_first_packets_are_lost_or_late_behind_in_band_onsets() {
    let call = call();
    for ptime in [160, 240] {
        for lost in [1, 2, 3] {
            let imp = Impairments {
                lost_first_event_packets: lost,
                ..Impairments::default()
            };
            check(
                &call,
                &case(
                    &format!("first {lost} event packets lost"),
                    ptime,
                    true,
                    imp,
                ),
            );
        }
        for (fragment, backdated) in [(80, false), (120, true), (160, true), (300, false)] {
            let imp = Impairments {
                late_events: Some(LateEvents {
                    fragment,
                    backdated,
                }),
                ..Impairments::default()
            };
            let label = format!(
                "{fragment} samples in-band, then events{}",
                if backdated {
                    " dated from the onset"
                } else {
                    ""
                }
            );
            check(&call, &case(&label, ptime, true, imp));
        }
    }
}

#[test]
fn everything_at_once() {
    let call = call();
    for seed in [51, 52, 53, 54, 1041, 1210] {
        for events in [false, true] {
            let imp = Impairments {
                seed,
                loss_pct: 3.0,
                reorder_pct: 3.0,
                duplicate_pct: 2.0,
                silence_suppression: Some(SilenceSuppression {
                    threshold: 0,
                    hangover: 1,
                    cn_every: 4,
                }),
                ssrc_change_at: Some(call.spans[10].start - 400),
                lost_first_event_packets: usize::from(seed % 2 == 0),
                late_events: events.then_some(LateEvents {
                    fragment: 120,
                    backdated: seed % 2 == 1,
                }),
                spurious_marker_pct: 5.0,
            };
            check(
                &call,
                &case(&format!("all impairments, seed {seed}"), 160, events, imp),
            );
        }
    }
}
