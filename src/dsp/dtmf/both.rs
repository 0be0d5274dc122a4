//! Both detectors fed from one Goertzel bank, with the per-step path compiled for AVX2 where the
//! CPU has it.

use super::presence::PresenceDetector;
use super::strict::{DigitEvent, DtmfDetector};
use crate::dsp::goertzel::{STEP, Terms, step_terms};

/// Feeds the same samples to the presence detector and the strict detector, computing each
/// 16-sample step's DFT terms once for both (ARCHITECTURE.md, "The DTMF engine": two signals from one Goertzel
/// bank). Each detector keeps its own phase reference, so the result is exactly that of
/// `presence.process(input, mask)` followed by `strict.process(input, on_digit)`. The two can
/// have heard different streams (the scrubber does not let the strict detector hear the frames
/// it synthesizes); while their steps are out of line each computes its own terms.
///
/// On x86-64 CPUs with AVX2 the same code runs compiled for 8-lane vectors: the bank's eight
/// frequencies fill one register where the baseline build needs two, and a step's terms are
/// sixteen `pmaddwd`s. The terms are exact integer sums and the rest is the same IEEE operations
/// in the same order per lane (no fused multiply-add), so both builds decide alike to the bit;
/// a test holds them to it.
///
/// The mask comes out as bits, bit `i % 64` of `mask[i / 64]` for `input[i]`, ORed into what the
/// caller passes (zeros, usually): per sample it is the same decision as
/// [`PresenceDetector::process`] gives. Input beyond what `mask` has bits for is not read.
pub fn process_both(
    presence: &mut PresenceDetector,
    strict: &mut DtmfDetector,
    input: &[i16],
    mask: &mut [u64],
    on_digit: &mut dyn FnMut(DigitEvent),
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been found to support AVX2, all the function requires.
        unsafe { process_both_avx2(presence, strict, input, mask, on_digit) };
        return;
    }
    process_both_portable(presence, strict, input, mask, on_digit);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn process_both_avx2(
    presence: &mut PresenceDetector,
    strict: &mut DtmfDetector,
    input: &[i16],
    mask: &mut [u64],
    on_digit: &mut dyn FnMut(DigitEvent),
) {
    use crate::dsp::goertzel::step_terms_avx2;
    process_both_with(presence, strict, input, mask, on_digit, |x| {
        step_terms_avx2(x)
    });
}

/// [`process_both`] for the build's baseline CPU.
fn process_both_portable(
    presence: &mut PresenceDetector,
    strict: &mut DtmfDetector,
    input: &[i16],
    mask: &mut [u64],
    on_digit: &mut dyn FnMut(DigitEvent),
) {
    process_both_with(presence, strict, input, mask, on_digit, step_terms);
}

/// [`process_both`] with `terms` computing whole steps' terms; inlined into the AVX2 copy,
/// which is how that copy gets the whole per-step path compiled for AVX2.
#[inline(always)]
fn process_both_with(
    presence: &mut PresenceDetector,
    strict: &mut DtmfDetector,
    input: &[i16],
    mask: &mut [u64],
    on_digit: &mut dyn FnMut(DigitEvent),
    terms: impl Fn(&[i16; STEP]) -> Terms,
) {
    let n = input.len().min(mask.len().saturating_mul(64));
    let input = &input[..n];
    if presence.bank.fill() != strict.bank.fill() {
        presence.process_bits(input, mask);
        strict.process(input, on_digit);
        return;
    }
    // Up to the next step boundary sample by sample, then whole steps, then the rest.
    let lead = ((STEP - presence.bank.fill()) % STEP).min(n);
    let (head, rest) = input.split_at(lead);
    if !head.is_empty() {
        both_per_sample(presence, strict, head, mask, 0, on_digit);
    }
    let mut steps = rest.chunks_exact(STEP);
    let mut at_bit = lead;
    for chunk in &mut steps {
        let Ok(x) = <&[i16; STEP]>::try_from(chunk) else {
            continue;
        };
        // The marks for these samples are final: a window completed by this step marks only
        // samples after the last one released here.
        let at = presence.pos;
        or_bits(mask, at_bit, presence.take_marks16(at));
        at_bit += STEP;
        presence.pos += STEP as u64;
        strict.stage_step(chunk);
        let t = terms(x);
        finish_both(presence, strict, x, &t, on_digit);
    }
    let tail = steps.remainder();
    if !tail.is_empty() {
        both_per_sample(presence, strict, tail, mask, at_bit, on_digit);
    }
}

/// ORs the 16 bits of `v` into the bit mask from bit `at` on (which need not be word-aligned).
#[inline(always)]
fn or_bits(mask: &mut [u64], at: usize, v: u16) {
    let (w, b) = (at / 64, at % 64);
    if let Some(x) = mask.get_mut(w) {
        *x |= u64::from(v) << b;
    }
    if b > 64 - STEP
        && let Some(x) = mask.get_mut(w + 1)
    {
        *x |= u64::from(v) >> (64 - b);
    }
}

/// Hands one step's terms to both detectors, phase-referenced once when their banks
/// are in phase (always, unless the strict detector was restarted mid-stream).
#[inline(always)]
fn finish_both(
    presence: &mut PresenceDetector,
    strict: &mut DtmfDetector,
    x: &[i16; STEP],
    t: &Terms,
    on_digit: &mut dyn FnMut(DigitEvent),
) {
    if presence.bank.in_phase_with(&strict.bank) {
        let st = presence.finish_step(x, t);
        strict.finish_rotated(&st, on_digit);
    } else {
        presence.finish_step(x, t);
        strict.finish_step(t, on_digit);
    }
}

/// [`process_both`] one sample at a time, for the parts of a frame off the step grid; the mask
/// bit of `input[i]` is bit `at_bit + i`.
fn both_per_sample(
    presence: &mut PresenceDetector,
    strict: &mut DtmfDetector,
    input: &[i16],
    mask: &mut [u64],
    at_bit: usize,
    on_digit: &mut dyn FnMut(DigitEvent),
) {
    for (i, &x) in input.iter().enumerate() {
        let at = presence.pos;
        presence.pos += 1;
        let done = presence.bank.stage(x);
        strict.stage(x);
        if done {
            let x = *presence.bank.pending();
            let t = step_terms(&x);
            finish_both(presence, strict, &x, &t, on_digit);
        }
        let bit = at_bit + i;
        if presence.take_mark(at)
            && let Some(w) = mask.get_mut(bit / 64)
        {
            *w |= 1 << (bit % 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digit::Digit;
    use crate::dsp::dtmf::presence::PresenceConfig;
    use crate::dsp::dtmf::strict::DetectorConfig;
    use crate::dsp::dtmf::testkit::key;

    #[test]
    fn shared_bank_gives_exactly_what_separate_detectors_give() {
        let mut audio = Vec::new();
        for (i, &d) in Digit::ALL.iter().enumerate() {
            audio.extend(key(d, -25.0, 300 + i * 13, 330 + i * 5, 0));
        }
        audio.extend(std::iter::repeat_n(0, 500));
        // Delays off the sub-block grid read the mask ring across its words' boundaries.
        for delay in [80, 77, 61, 3] {
            both_match_separate(&audio, delay);
        }
    }

    /// The AVX2 build of `process_both` must decide exactly as the baseline build: same masked
    /// samples, same digits with the same spans, over real speech and music with keys laid over
    /// them from well above the recording's level to under it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_build_decides_exactly_as_the_baseline_build() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: only the baseline build runs here");
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut audio = Vec::new();
        for f in [
            "speech_en_codec2_talkoff.wav",
            "music_asc_time_to_strike_10s.wav",
        ] {
            audio.extend(crate::wav::read_wav(&dir.join(f)).expect("fixture"));
        }
        // −6 to −28.5 dBm0 per tone: the quieter keys sit under loud speech and some are missed,
        // which is where two builds that rounded differently would part.
        for (i, &d) in Digit::ALL.iter().enumerate() {
            let dbm0 = -6.0 - 1.5 * i as f32;
            let at = 2_000 + i * 6_500;
            for (a, k) in audio[at..].iter_mut().zip(key(d, dbm0, 0, 400 + i * 20, 0)) {
                *a = a.saturating_add(k);
            }
        }
        let run = |avx2: bool| {
            let mut p = PresenceDetector::new(PresenceConfig::default());
            if !avx2 {
                p = p.without_avx2();
            }
            let mut d = DtmfDetector::new(DetectorConfig::default());
            let mut mask = Vec::new();
            let mut found = Vec::new();
            for a in audio.chunks(160) {
                let mut on = |e| found.push(e);
                let mut m = [0u64; 3];
                if avx2 {
                    // SAFETY: AVX2 support was checked above.
                    unsafe { process_both_avx2(&mut p, &mut d, a, &mut m, &mut on) };
                } else {
                    process_both_portable(&mut p, &mut d, a, &mut m, &mut on);
                }
                mask.extend(bools(&m, a.len()));
            }
            d.finish(&mut |e| found.push(e));
            (mask, found)
        };
        let (base_mask, base_found) = run(false);
        let (avx_mask, avx_found) = run(true);
        let masked = base_mask.iter().filter(|&&m| m).count();
        // Six of the sixteen are found: the rest sit under speech as loud as they are.
        assert!(
            masked > 0 && base_found.len() >= 5,
            "{masked} masked, {base_found:?}"
        );
        assert_eq!(avx_found, base_found);
        let differ = base_mask
            .iter()
            .zip(&avx_mask)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{differ} of {masked} masked samples differ");
    }

    /// The first `n` bits of a mask, as flags.
    fn bools(bits: &[u64], n: usize) -> Vec<bool> {
        (0..n).map(|i| bits[i / 64] >> (i % 64) & 1 != 0).collect()
    }

    fn both_match_separate(audio: &[i16], delay: usize) {
        // Uneven frames, and a stretch the strict detector does not hear (as the scrubber does
        // for synthesized event frames) that puts the two out of step for a while.
        let cfg = PresenceConfig {
            delay,
            ..PresenceConfig::default()
        };
        let mut p1 = PresenceDetector::new(cfg.clone());
        let mut d1 = DtmfDetector::new(DetectorConfig::default());
        let mut p2 = PresenceDetector::new(cfg);
        let mut d2 = DtmfDetector::new(DetectorConfig::default());
        let (mut m1, mut m2) = (vec![false; audio.len()], vec![false; audio.len()]);
        let (mut g1, mut g2) = (Vec::new(), Vec::new());
        let mut at = 0;
        for (i, len) in [160usize, 37, 160, 3, 80, 160, 160, 11, 160]
            .iter()
            .cycle()
            .enumerate()
        {
            let end = (at + len).min(audio.len());
            let (a, b) = (&audio[at..end], (at, end));
            if i % 7 == 5 {
                p1.process(a, &mut m1[b.0..b.1]);
                let mut bits = [0u64; 3];
                p2.process_bits(a, &mut bits);
                m2[b.0..b.1].copy_from_slice(&bools(&bits, a.len()));
            } else {
                p1.process(a, &mut m1[b.0..b.1]);
                d1.process(a, &mut |e| g1.push(e));
                let mut bits = [0u64; 3];
                process_both(&mut p2, &mut d2, a, &mut bits, &mut |e| g2.push(e));
                m2[b.0..b.1].copy_from_slice(&bools(&bits, a.len()));
            }
            at = end;
            if at == audio.len() {
                break;
            }
        }
        d1.finish(&mut |e| g1.push(e));
        d2.finish(&mut |e| g2.push(e));
        assert!(m1.iter().any(|&m| m) && !g1.is_empty(), "delay {delay}");
        assert_eq!(m1, m2, "delay {delay}");
        assert_eq!(g1, g2, "delay {delay}");
    }
}
