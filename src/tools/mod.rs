//! The offline tools behind `tonewall scrub` and `tonewall scan --report`: run a recording
//! through the relay's own scrubber exactly as a trunk would feed it, and report what happened
//! without revealing any digit.

mod report;

pub use report::{FileFigures, ReportError, TalkoffReport, Totals, collect_wavs, talkoff_report};

use crate::digit::DigitSource;
use crate::dsp::dtmf::{DetectorConfig, DtmfDetector, PresenceConfig};
use crate::dsp::g711::Codec;
use crate::dsp::mask::MaskKind;
use crate::rtp::scrubber::{MAX_DELAY, ScrubStats, Scrubber, ScrubberConfig, Verdict};
use crate::rtp::trunk::{KeySpan, TrunkConfig, depacketize, packetize};

/// Altered samples this close (2 ms, the masker's ramp) belong to one masked span.
const MERGE_GAP: usize = 16;

/// Options of one offline scrub run.
#[derive(Clone, Debug)]
pub struct ScrubOptions {
    pub codec: Codec,
    pub mask: MaskKind,
    /// Delay line in samples; `None` takes the detector's default.
    pub delay: Option<usize>,
    /// Packet duration in samples.
    pub ptime: usize,
    /// Send keys as RFC 4733 events instead of in-band tones.
    pub events: bool,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions {
            codec: Codec::Pcmu,
            mask: MaskKind::default(),
            delay: None,
            ptime: 160,
            events: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("--delay-ms gives {0} samples; the delay line holds at most {MAX_DELAY} (20 ms)")]
    DelayTooLong(usize),
    #[error("--ptime must be between 10 and 200 ms, got {0} samples")]
    BadPtime(usize),
}

/// What a scrub run produced: the agent-side audio and counters (never digits).
#[derive(Clone, Debug)]
pub struct ScrubReport {
    /// What the agent hears, starting at the first packet's timestamp (so delayed by D).
    pub agent_audio: Vec<i16>,
    pub delay_samples: usize,
    pub digits_detected: usize,
    pub digits_inband: usize,
    pub digits_rfc4733: usize,
    /// Masked spans on the agent side, in samples `[start, end)` of `agent_audio`.
    pub masked_spans: Vec<(usize, usize)>,
    pub packets_in: usize,
    pub packets_out: usize,
    /// Telephone-event packets the agent side received (zero while scrubbing).
    pub events_leaked: usize,
    pub stats: ScrubStats,
}

impl ScrubReport {
    /// Samples masked in all. Summed as integers: a float sum of no spans is -0.0 (the
    /// identity of float addition), which the report would print as "-0.0 ms".
    pub fn masked_samples(&self) -> usize {
        self.masked_spans.iter().map(|(a, b)| b - a).sum()
    }
}

/// Finds the keys in `audio` the way a gateway that sends RFC 4733 would: with the strict detector.
pub fn find_keys(audio: &[i16]) -> Vec<KeySpan> {
    let mut det = DtmfDetector::new(DetectorConfig::default());
    let mut spans = Vec::new();
    let mut push = |ev: crate::dsp::dtmf::DigitEvent| {
        spans.push(KeySpan {
            digit: ev.digit,
            start: ev.start,
            end: ev.end,
        })
    };
    det.process(audio, &mut push);
    det.finish(&mut push);
    spans
}

/// Packetizes `audio` as a trunk would, scrubs it, and plays the result back as the agent hears it.
pub fn scrub_audio(audio: &[i16], opts: &ScrubOptions) -> Result<ScrubReport, ToolError> {
    if !(80..=1600).contains(&opts.ptime) {
        return Err(ToolError::BadPtime(opts.ptime));
    }
    let mut presence = PresenceConfig::default();
    if let Some(d) = opts.delay {
        if d > MAX_DELAY {
            return Err(ToolError::DelayTooLong(d));
        }
        presence.delay = d;
    }
    let trunk = TrunkConfig {
        codec: opts.codec,
        ptime: opts.ptime,
        ..TrunkConfig::default()
    };
    let spans = opts.events.then(|| find_keys(audio));
    let packets = packetize(audio, &trunk, spans.as_deref());
    let mut scrubber = Scrubber::new(ScrubberConfig {
        event_pt: Some(trunk.event_pt),
        default_codec: opts.codec,
        mask: opts.mask,
        presence,
        ..ScrubberConfig::default()
    });
    let ptime_ms = (opts.ptime / 8) as u64;
    let mut out = Vec::with_capacity(packets.len());
    let mut buf = vec![0u8; 2048];
    let mut digits = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        if let Verdict::Forward(len) =
            scrubber.process(i as u64 * ptime_ms, p, &mut buf, &mut |d| digits.push(d))
        {
            out.push(buf[..len].to_vec());
        }
    }
    scrubber.finish(&mut |d| digits.push(d));
    let rx = depacketize(out.iter().map(|p| p.as_slice()), trunk.first_ts);

    // Masked spans: where the agent's audio differs from the caller's, delayed by D. A noise
    // mask lands on the caller's own G.711 code now and then; a gap shorter than the mask's
    // ramp is such a coincidence, not two spans, and its samples count as masked.
    let d = scrubber.delay_samples();
    let sent = depacketize(packets.iter().map(|p| p.as_slice()), trunk.first_ts).audio;
    let mut masked_spans = Vec::new();
    let mut open: Option<(usize, usize)> = None;
    for (i, &s) in rx.audio.iter().enumerate() {
        let orig = if i >= d {
            sent.get(i - d).copied()
        } else {
            None
        };
        let differs = i >= d && orig != Some(s);
        if !differs {
            continue;
        }
        match open {
            Some((st, end)) if i - end < MERGE_GAP => open = Some((st, i + 1)),
            Some(span) => {
                masked_spans.push(span);
                open = Some((i, i + 1));
            }
            None => open = Some((i, i + 1)),
        }
    }
    masked_spans.extend(open);
    let count = |src| digits.iter().filter(|x| x.source == src).count();
    Ok(ScrubReport {
        delay_samples: d,
        digits_detected: digits.len(),
        digits_inband: count(DigitSource::InBand),
        digits_rfc4733: count(DigitSource::Rfc4733),
        masked_spans,
        packets_in: packets.len(),
        packets_out: out.len(),
        events_leaked: rx.non_audio_packets,
        stats: scrubber.stats().clone(),
        agent_audio: rx.audio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_without_keys_has_nothing_masked() {
        let hum: Vec<i16> = (0..8000)
            .map(|i| {
                (3000.0 * (2.0 * std::f64::consts::PI * 150.0 * f64::from(i) / 8000.0).sin()) as i16
            })
            .collect();
        let report = scrub_audio(&hum, &ScrubOptions::default()).unwrap();
        assert_eq!(report.digits_detected, 0);
        assert!(report.masked_spans.is_empty());
        assert_eq!(report.masked_samples(), 0);
        let ms = report.masked_samples() as f64 / 8.0;
        assert_eq!(format!("{ms:.1}"), "0.0");
    }
}
