//! The demo without SIP: the trunk's packets fed to the relay's `Scrubber` in process.

use std::io::Write;
use std::path::Path;

use super::{
    DEMO_PAN, DemoError, DemoSummary, caller_audio, caller_speech, write_picture, write_wav,
};
use crate::dsp::g711::Codec;
use crate::dsp::mask::MaskKind;
use crate::dsp::spectrum;
use crate::rtp::packet::RtpView;
use crate::rtp::scrubber::{ScrubbedDigit, Scrubber, ScrubberConfig, Verdict};
use crate::rtp::trunk::{KeySpan, TrunkConfig, depacketize, packetize};

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

/// The demo without SIP: the media path alone, the trunk's packets fed to a `Scrubber` in
/// process (once with every key in-band, once with every key as RFC 4733 events). Prints each
/// step to `w` and writes files into `out_dir`.
pub fn run_offline(out_dir: &Path, w: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    std::fs::create_dir_all(out_dir).map_err(io)?;
    let (speech, source) = caller_speech();
    let (caller, first, second) = caller_audio(&speech);
    let spans: Vec<KeySpan> = first.into_iter().chain(second).collect();
    let mut sum = DemoSummary {
        keys_sent: spans.len(),
        ..DemoSummary::default()
    };
    let say = |w: &mut dyn Write, s: String| writeln!(w, "{s}").map_err(io);

    say(
        w,
        "tonewall demo (offline): a card payment on the caller→agent media path".into(),
    )?;
    say(
        w,
        format!(
            "  1. The caller talks ({source}), then keys the test card Visa •••• {} with expiry and CVV, twice:",
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

    let (inband, events) = scrub_both_ways(out_dir, w, &caller, &spans, &mut sum)?;

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
    // Show the keying stretch, where the difference is.
    let lo = spans
        .first()
        .map_or(0, |s| s.start as usize)
        .saturating_sub(4000);
    let hi = spans
        .last()
        .map_or(caller.len(), |s| s.end as usize + 4000)
        .min(caller.len());
    let agent = (
        "agent, keys in-band (what the scrubber lets through)",
        &inband.agent[..],
    );
    write_picture(out_dir, &caller, agent, (lo, hi), 0)?;
    say(
        w,
        format!(
            "  6. Listen and look: {}/caller.wav, agent_inband.wav, agent_events.wav,",
            out_dir.display()
        ),
    )?;
    say(
        w,
        "     and spectrogram.png (top: caller, bottom: agent; DTMF frequencies marked at the right)."
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

/// Steps 3 and 4: the caller's audio through the scrubber with the keys in-band, then with the
/// keys as RFC 4733 events.
fn scrub_both_ways(
    out_dir: &Path,
    w: &mut dyn Write,
    caller: &[i16],
    spans: &[KeySpan],
    sum: &mut DemoSummary,
) -> Result<(Leg, Leg), DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    let say = |w: &mut dyn Write, s: String| writeln!(w, "{s}").map_err(io);
    let inband = run_leg(caller, None);
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

    let events = run_leg(caller, Some(spans));
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
    Ok((inband, events))
}
