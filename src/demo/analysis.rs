//! The auditor's view of the SIP demo's call.

use std::io::Write;
use std::path::Path;

use super::{DemoError, DemoSummary, write_picture, write_wav};
use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::dsp::spectrum;
use crate::rtp::trunk::KeySpan;

/// What the call produced, for the analysis.
pub(super) struct CallOutcome {
    pub(super) agent: Vec<i16>,
    pub(super) packets_sent: usize,
    pub(super) events_sent: usize,
    pub(super) packets_received: usize,
    pub(super) events_received: usize,
}

/// The auditor's view of the call: decoders on both sides, bit-exactness of the speech, files.
pub(super) fn analyse(
    out_dir: &Path,
    w: &mut dyn Write,
    caller: &[i16],
    inband: &[KeySpan],
    events: &[KeySpan],
    call: &CallOutcome,
    sum: &mut DemoSummary,
) -> Result<(), DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    let before = spectrum::fft_decode(caller, &mut |_| {});
    sum.decoded_on_caller_side = before.len();
    let keyed: Vec<Digit> = inband.iter().chain(events).map(|s| s.digit).collect();
    let in_order = before.iter().map(|d| d.digit).eq(keyed.iter().copied());
    let agent = &call.agent;
    sum.decoded_on_agent_side = spectrum::fft_decode(agent, &mut |_| {}).len();
    sum.residue_on_agent_side = spectrum::sensitive_scan(agent, &mut |_| {}).len();
    sum.events_reaching_agent = call.events_received;
    writeln!(
        w,
        "  8. Keys masked. An independent FFT decoder on the caller's side hears {} keys{} (shown here only as •);",
        before.len(),
        if in_order { ", all of them in order" } else { "" }
    )
    .map_err(io)?;
    writeln!(
        w,
        "     on the agent's side it hears {} digits, the residue scanner finds {} dual-tone fragments, and {} of {} telephone-events arrived.",
        sum.decoded_on_agent_side,
        sum.residue_on_agent_side,
        call.events_received,
        call.events_sent
    )
    .map_err(io)?;

    // Speech away from the keys must reach the agent unchanged, D samples later (same codec).
    let d = (sum.delay_ms * 8.0).round() as usize;
    let first = inband.first().map_or(0, |s| s.start as usize);
    let last = events.last().map_or(0, |s| s.end as usize);
    sum.speech_identical_pct = speech_identical_pct(caller, agent, d, (first, last));
    writeln!(
        w,
        "     Speech before and after the keys reaches the agent {:.1} ms later, {:.2} % of its samples bit-exact.",
        sum.delay_ms, sum.speech_identical_pct
    )
    .map_err(io)?;

    write_wav(&out_dir.join("caller.wav"), caller)?;
    write_wav(&out_dir.join("agent.wav"), agent)?;
    let span = (first.saturating_sub(4000), (last + 4000).min(caller.len()));
    let agent_panel = ("agent (what tonewall lets through)", &agent[..]);
    write_picture(out_dir, caller, agent_panel, span, d)?;
    writeln!(
        w,
        "  9. Listen and look: {0}/caller.wav (what the caller keyed), {0}/agent.wav (what the agent heard),",
        out_dir.display()
    )
    .map_err(io)?;
    writeln!(
        w,
        "     and {}/spectrogram.png (top: caller, bottom: agent; DTMF frequencies marked at the right).",
        out_dir.display()
    )
    .map_err(io)?;
    let ok = sum.decoded_on_agent_side == 0
        && sum.residue_on_agent_side == 0
        && sum.events_reaching_agent == 0
        && call.packets_received > 0;
    let paid = sum.card_sealed && sum.card_unlocked && sum.second_unlock_refused;
    writeln!(
        w,
        "{}",
        match (ok, paid) {
            (true, true) => {
                "  Result: no digit reached the agent; the card reached the payment integration, once, through the vault."
            }
            (true, false) => "  Result: no digit reached the agent, but THE PAYMENT DID NOT COMPLETE.",
            (false, _) => "  Result: DIGITS REACHED THE AGENT (or no media arrived).",
        }
    )
    .map_err(io)?;
    Ok(())
}

/// Of the caller's samples away from the keys (`keys` is the keyed stretch, with a 100 ms
/// margin each side), the share that reached the agent bit-exact `delay` samples later,
/// through the same G.711 round trip, in percent.
fn speech_identical_pct(
    caller: &[i16],
    agent: &[i16],
    delay: usize,
    (first, last): (usize, usize),
) -> f64 {
    let margin = 800;
    let (mut same, mut total) = (0usize, 0usize);
    for i in (0..first.saturating_sub(margin)).chain(last + margin..caller.len()) {
        if let (Some(&c), Some(&a)) = (caller.get(i), agent.get(i + delay)) {
            total += 1;
            same += usize::from(Codec::Pcmu.decode(Codec::Pcmu.encode(c)) == a);
        }
    }
    if total == 0 {
        0.0
    } else {
        100.0 * same as f64 / total as f64
    }
}
