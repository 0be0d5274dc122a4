//! `tonewall demo`: a payment call's media path, end to end, for a newcomer to watch and hear.
//!
//! A caller speaks, then keys a test card (in-band tones, and again as RFC 4733 events) while
//! speech continues underneath; a trunk packetizes it into RTP; the relay's own `Scrubber`
//! cleans it; the auditor's independent FFT decoder listens on both sides. The demo writes the
//! audio as WAVs and a before/after spectrogram, and prints card data only masked.

//!
//! The parts: `offline` (the media path alone, in process), `sip` (the call through a relay
//! over SIP on loopback), `api` (the payment integration's side, over the control API) and
//! `analysis` (the auditor's view of the SIP call).

mod analysis;
mod api;
mod offline;
mod sip;

pub use offline::run_offline;
pub use sip::run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digit::Digit;
use crate::net::ua::UaError;
use crate::rtp::trunk::KeySpan;
use crate::spectrogram::Panel;

/// The loop number's user part.
const LOOP_USER: &str = "pay";

/// Visa test number (Luhn-valid, never issued), expiry MMYY, CVV.
const DEMO_PAN: &str = "4111111111111111";
const DEMO_EXPIRY: &str = "1230";
const DEMO_CVV: &str = "123";
/// The agent the trunk asks for; tonewall carries the header to the contact centre.
const AGENT: &str = "7001";
/// How long any one SIP or API exchange may take on loopback before the demo gives up.
const SIP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write to {0}: {1}")]
    Output(PathBuf, std::io::Error),
    #[error("cannot write a WAV: {0}")]
    Wav(String),
    #[error("cannot draw the spectrogram: {0}")]
    Picture(#[from] crate::spectrogram::SpectrogramError),
    #[error("loopback network: {0}")]
    Network(std::io::Error),
    #[error("tonewall in the demo: {0}")]
    Relay(String),
    #[error("SIP: {0}")]
    Sip(#[from] UaError),
    #[error("control API: {0}")]
    Api(String),
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
    /// Speech away from the keys that reached the agent bit-exact (SIP demo).
    pub speech_identical_pct: f64,
    /// The payment session sealed the card, one unlock returned it and a second was refused.
    pub card_sealed: bool,
    pub card_unlocked: bool,
    pub second_unlock_refused: bool,
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

/// The caller's audio: speech, the card keyed over quieter speech, speech, the card keyed
/// again, speech. Returns the audio and the keys' spans of each pass; both passes are in the
/// audio (what the caller keyed), the trunk decides which pass goes as RFC 4733 events.
fn caller_audio(speech: &[i16]) -> (Vec<i16>, Vec<KeySpan>, Vec<KeySpan>) {
    // Each field ends with #, as an IVR asks: a Visa number may be 13, 16 or 19 digits long.
    let keys = format!("{DEMO_PAN}#{DEMO_EXPIRY}#{DEMO_CVV}#");
    let (lead, between, tail) = (8000 * 2, 8000 * 3 / 2, 8000 * 2);
    let (tone_len, gap) = (560usize, 640usize); // 70 ms tones, 80 ms pauses
    let pass = keys.len() * (tone_len + gap);
    let total = lead + pass + between + pass + tail;
    let mut out = vec![0f64; total];
    let second = lead + pass + between;
    // Speech all along; quieter while the caller concentrates on the keypad.
    for (i, v) in out.iter_mut().enumerate() {
        let s = f64::from(speech.get(i % speech.len().max(1)).copied().unwrap_or(0));
        let keying = (lead..lead + pass).contains(&i) || (second..second + pass).contains(&i);
        *v = if keying { 0.3 * s } else { s };
    }
    let amp = 22_686.0 * 10f64.powf(-12.0 / 20.0); // -12 dBm0 per tone
    let mut passes = [Vec::new(), Vec::new()];
    for (p, first) in [lead, second].into_iter().enumerate() {
        for (k, c) in keys.chars().enumerate() {
            let Some(d) = Digit::from_char(c) else {
                continue;
            };
            let (lo, hi) = d.freqs();
            let start = first + k * (tone_len + gap);
            for i in 0..tone_len {
                let t = i as f64 / 8000.0;
                out[start + i] += amp
                    * ((2.0 * std::f64::consts::PI * f64::from(lo) * t).sin()
                        + (2.0 * std::f64::consts::PI * f64::from(hi) * t + 1.0).sin());
            }
            passes[p].push(KeySpan {
                digit: d,
                start: start as u64,
                end: (start + tone_len) as u64,
            });
        }
    }
    let audio = out
        .iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    let [inband, events] = passes;
    (audio, inband, events)
}

fn write_wav(path: &Path, audio: &[i16]) -> Result<(), DemoError> {
    crate::wav::write_wav_pcm16(path, audio).map_err(|e| DemoError::Wav(e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Writes `spectrogram.png`: the caller's audio over `[lo, hi)` above the agent's, the agent's
/// taken `delay` samples later so both panels show the same moments on one clock.
fn write_picture(
    out_dir: &Path,
    caller: &[i16],
    (agent_title, agent): (&str, &[i16]),
    (lo, hi): (usize, usize),
    delay: usize,
) -> Result<(), DemoError> {
    let agent_lo = (lo + delay).min(agent.len());
    let agent_hi = (hi + delay).min(agent.len());
    crate::spectrogram::write_png(
        &out_dir.join("spectrogram.png"),
        &[
            Panel {
                title: "caller (what the trunk sends)",
                audio: caller.get(lo..hi).unwrap_or_default(),
                start_s: lo as f64 / 8000.0,
            },
            Panel {
                title: agent_title,
                audio: agent.get(agent_lo..agent_hi).unwrap_or_default(),
                start_s: lo as f64 / 8000.0,
            },
        ],
    )?;
    Ok(())
}
