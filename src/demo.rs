//! `tonewall demo`: a payment call's media path, end to end, for a newcomer to watch and hear.
//!
//! A caller speaks, then keys a test card (in-band tones, and again as RFC 4733 events) while
//! speech continues underneath; a trunk packetizes it into RTP; the relay's own `Scrubber`
//! cleans it; the auditor's independent FFT decoder listens on both sides. The demo writes the
//! audio as WAVs and a before/after spectrogram, and prints card data only masked.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::dsp::mask::MaskKind;
use crate::dsp::spectrum;
use crate::rtp::packet::RtpView;
use crate::rtp::scrubber::{ScrubbedDigit, Scrubber, ScrubberConfig, Verdict};
use crate::rtp::trunk::{KeySpan, TrunkConfig, depacketize, packetize};

/// Visa test number (Luhn-valid, never issued), expiry MMYY, CVV.
const DEMO_PAN: &str = "4111111111111111";
const DEMO_EXPIRY: &str = "1230";
const DEMO_CVV: &str = "123";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write to {0}: {1}")]
    Output(PathBuf, std::io::Error),
    #[error("cannot write a WAV: {0}")]
    Wav(String),
    #[error("cannot draw the spectrogram: {0}")]
    Picture(#[from] crate::spectrogram::SpectrogramError),
}

/// What the demo found, for tests and the summary.
#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    pub keys_sent: usize,
    pub digits_captured_inband: usize,
    pub digits_captured_events: usize,
    pub decoded_on_caller_side: usize,
    pub decoded_on_agent_side: usize,
    pub residue_on_agent_side: usize,
    pub events_reaching_agent: usize,
    pub delay_ms: f64,
}

/// Speech for the caller: the fixture clip when run from a checkout, else a synthetic voice.
fn caller_speech() -> (Vec<i16>, &'static str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/speech_en_hello.wav");
    match crate::wav::read_wav(&path) {
        Ok(s) if !s.is_empty() => (s, "recorded speech (fixtures/speech_en_hello.wav)"),
        _ => (
            synthetic_voice(8000 * 8),
            "a synthetic voice (fixture not found)",
        ),
    }
}

/// A buzzy vowel-like voice: harmonics of a gliding pitch, nothing like a dual tone.
fn synthetic_voice(len: usize) -> Vec<i16> {
    (0..len)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let f0 = 120.0 + 20.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            let env = (0.5 + 0.5 * (2.0 * std::f64::consts::PI * 2.5 * t).sin()).powi(2);
            let v: f64 = (1..8)
                .map(|h| (2.0 * std::f64::consts::PI * f0 * f64::from(h) * t).sin() / f64::from(h))
                .sum();
            (2500.0 * env * v) as i16
        })
        .collect()
}

/// The caller's audio: speech, then the card keyed over quieter speech, then speech again.
fn caller_audio(speech: &[i16]) -> (Vec<i16>, Vec<KeySpan>) {
    let keys: String = [DEMO_PAN, DEMO_EXPIRY, DEMO_CVV].concat();
    let lead = 8000 * 2;
    let (tone_len, gap) = (560usize, 640usize); // 70 ms tones, 80 ms pauses
    let total = lead + keys.len() * (tone_len + gap) + 8000 * 2;
    let mut out = vec![0f64; total];
    // Speech all along; quieter while the caller concentrates on the keypad.
    for (i, v) in out.iter_mut().enumerate() {
        let s = f64::from(speech.get(i % speech.len().max(1)).copied().unwrap_or(0));
        let keying = i >= lead && i < total - 8000 * 2;
        *v = if keying { 0.3 * s } else { s };
    }
    let amp = 22_686.0 * 10f64.powf(-12.0 / 20.0); // -12 dBm0 per tone
    let mut spans = Vec::new();
    for (k, c) in keys.chars().enumerate() {
        let Some(d) = Digit::from_char(c) else {
            continue;
        };
        let (lo, hi) = d.freqs();
        let start = lead + k * (tone_len + gap);
        for i in 0..tone_len {
            let t = i as f64 / 8000.0;
            out[start + i] += amp
                * ((2.0 * std::f64::consts::PI * f64::from(lo) * t).sin()
                    + (2.0 * std::f64::consts::PI * f64::from(hi) * t + 1.0).sin());
        }
        spans.push(KeySpan {
            digit: d,
            start: start as u64,
            end: (start + tone_len) as u64,
        });
    }
    let audio = out
        .iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    (audio, spans)
}

struct Leg {
    agent: Vec<i16>,
    digits: Vec<ScrubbedDigit>,
    packets_in: usize,
    packets_out: usize,
    events_in: usize,
    events_out: usize,
    masked_spans: u64,
    delay: usize,
}

fn run_leg(audio: &[i16], spans: Option<&[KeySpan]>) -> Leg {
    let trunk = TrunkConfig {
        codec: Codec::Pcmu,
        ..TrunkConfig::default()
    };
    let packets = packetize(audio, &trunk, spans);
    let mut s = Scrubber::new(ScrubberConfig {
        mask: MaskKind::Noise,
        ..ScrubberConfig::default()
    });
    let mut out = Vec::with_capacity(packets.len());
    let mut digits = Vec::new();
    let mut buf = [0u8; 2048];
    for (i, p) in packets.iter().enumerate() {
        if let Verdict::Forward(n) = s.process(i as u64 * 20, p, &mut buf, &mut |d| digits.push(d))
        {
            out.push(buf[..n].to_vec());
        }
    }
    s.finish(&mut |d| digits.push(d));
    let is_event = |p: &Vec<u8>| {
        RtpView::parse(p).is_ok_and(|v| Some(v.payload_type()) == Some(trunk.event_pt))
    };
    let rx = depacketize(out.iter().map(|p| p.as_slice()), trunk.first_ts);
    Leg {
        agent: rx.audio,
        digits,
        packets_in: packets.len(),
        packets_out: out.len(),
        events_in: packets.iter().filter(|p| is_event(p)).count(),
        events_out: out.iter().filter(|p| is_event(p)).count(),
        masked_spans: s.stats().mask_spans,
        delay: s.delay_samples(),
    }
}

fn write_wav(path: &Path, audio: &[i16]) -> Result<(), DemoError> {
    crate::wav::write_wav_pcm16(path, audio).map_err(|e| DemoError::Wav(e.to_string()))
}

/// Runs the demo, printing each step to `w` and writing files into `out_dir`.
pub fn run(out_dir: &Path, w: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    std::fs::create_dir_all(out_dir).map_err(io)?;
    let (speech, source) = caller_speech();
    let (caller, spans) = caller_audio(&speech);
    let mut sum = DemoSummary {
        keys_sent: spans.len(),
        ..DemoSummary::default()
    };
    let say = |w: &mut dyn Write, s: String| writeln!(w, "{s}").map_err(io);

    say(
        w,
        "tonewall demo: a card payment on the caller→agent media path".into(),
    )?;
    say(
        w,
        format!(
            "  1. The caller talks ({source}), then keys the test card Visa •••• {} with expiry and CVV:",
            &DEMO_PAN[12..]
        ),
    )?;
    say(
        w,
        format!(
            "     {} keys, 70 ms tones at -12 dBm0 over quieter speech, {:.1} s of audio.",
            spans.len(),
            caller.len() as f64 / 8000.0
        ),
    )?;
    let before = spectrum::fft_decode(&caller, &mut |_| {});
    sum.decoded_on_caller_side = before.len();
    say(
        w,
        format!(
            "  2. An independent FFT decoder on the caller's side hears {} digits (shown here only as •).",
            before.len()
        ),
    )?;

    let inband = run_leg(&caller, None);
    sum.delay_ms = inband.delay as f64 / 8.0;
    sum.digits_captured_inband = inband.digits.len();
    say(
        w,
        format!(
            "  3. In-band: the trunk sends {} PCMU packets; the scrubber sends {} to the agent,",
            inband.packets_in, inband.packets_out
        ),
    )?;
    say(
        w,
        format!(
            "     masks {} spans, hands {} digits to capture, adds {:.1} ms of delay.",
            inband.masked_spans,
            inband.digits.len(),
            sum.delay_ms
        ),
    )?;

    let events = run_leg(&caller, Some(&spans));
    sum.digits_captured_events = events.digits.len();
    sum.events_reaching_agent = events.events_out;
    say(
        w,
        format!(
            "  4. RFC 4733: the trunk sends the keys as {} telephone-event packets; {} reach the agent,",
            events.events_in, events.events_out
        ),
    )?;
    say(
        w,
        format!(
            "     each replaced by masking audio in sequence ({} packets in, {} out); {} digits captured.",
            events.packets_in,
            events.packets_out,
            events.digits.len()
        ),
    )?;

    let mut decoded = 0;
    let mut residue = 0;
    for leg in [&inband, &events] {
        decoded += spectrum::fft_decode(&leg.agent, &mut |_| {}).len();
        residue += spectrum::sensitive_scan(&leg.agent, &mut |_| {}).len();
    }
    sum.decoded_on_agent_side = decoded;
    sum.residue_on_agent_side = residue;
    say(
        w,
        format!(
            "  5. On the agent's side the same decoder hears {decoded} digits; the residue scanner finds {residue} dual-tone fragments."
        ),
    )?;

    write_wav(&out_dir.join("caller.wav"), &caller)?;
    write_wav(&out_dir.join("agent_inband.wav"), &inband.agent)?;
    write_wav(&out_dir.join("agent_events.wav"), &events.agent)?;
    let picture = out_dir.join("spectrogram.png");
    // Show the keying stretch, where the difference is.
    let lo = spans
        .first()
        .map_or(0, |s| s.start as usize)
        .saturating_sub(4000);
    let hi = spans
        .last()
        .map_or(caller.len(), |s| s.end as usize + 4000)
        .min(caller.len());
    let agent_hi = hi.min(inband.agent.len());
    crate::spectrogram::write_png(
        &picture,
        &[&caller[lo..hi], &inband.agent[lo.min(agent_hi)..agent_hi]],
    )?;
    say(
        w,
        format!(
            "  6. Listen and look: {}/caller.wav, agent_inband.wav, agent_events.wav,",
            out_dir.display()
        ),
    )?;
    say(
        w,
        "     and spectrogram.png (top: caller, bottom: agent; DTMF rows marked at the left edge)."
            .into(),
    )?;
    let ok = decoded == 0 && residue == 0 && sum.events_reaching_agent == 0;
    say(
        w,
        if ok {
            "  Result: no digit reached the agent.".into()
        } else {
            "  Result: DIGITS REACHED THE AGENT.".into()
        },
    )?;
    Ok(sum)
}
