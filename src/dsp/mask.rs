//! Masking sounds that replace tone spans: silence, comfort noise, flat tone. Edges are ramped
//! so masking never clicks: the fade into the mask happens in the first samples of a span
//! (the presence detector's pre-roll, before any tone) and the fade back out in the samples
//! after it (past the hang-over). Deterministic (seeded noise), no allocation.

use super::goertzel::{DBM0_PEAK, RATE};

/// Which sound replaces a masked span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaskKind {
    Silence,
    #[default]
    Noise,
    Tone,
}

/// Crossfade length in samples (2 ms): long enough not to click, short enough to sit inside
/// the detector's pre-roll and hang-over.
const RAMP: u16 = 16;
/// Comfort noise level: about −30 dBm0 RMS, audible as "keys are being pressed" without
/// startling the agent. Uniform noise of peak a has RMS a/√3.
const NOISE_PEAK: f32 = DBM0_PEAK * 0.0316 * 1.732 / std::f32::consts::SQRT_2;
/// Flat tone: a single 500 Hz sine at −20 dBm0, off the DTMF grid and not a call-progress tone.
const TONE_HZ: f32 = 500.0;
const TONE_PEAK: f32 = DBM0_PEAK * 0.1;
const TONE_PERIOD: u32 = (RATE / TONE_HZ) as u32;

/// Applies masking to a block of delayed audio given per-sample mask decisions.
pub struct Masker {
    kind: MaskKind,
    /// Crossfade position: 0 = original audio, RAMP = mask only.
    gain: u16,
    rng: u32,
    phase: u32,
}

impl Masker {
    pub fn new(kind: MaskKind) -> Self {
        Masker {
            kind,
            gain: 0,
            rng: 0x2545_F491,
            phase: 0,
        }
    }

    pub fn kind(&self) -> MaskKind {
        self.kind
    }

    /// Ramp length in samples; the presence detector's pre-roll and hang-over must be at least
    /// this long so a ramp never overlaps a tone.
    pub fn ramp_len(&self) -> usize {
        usize::from(RAMP)
    }

    /// Rewrites `audio[i]` where `mask[i]` is set, fading in over the span's first samples,
    /// and fades back to the original over the samples after a span.
    /// Returns true if any sample was altered.
    pub fn apply(&mut self, audio: &mut [i16], mask: &[bool]) -> bool {
        let mut changed = false;
        for (a, &m) in audio.iter_mut().zip(mask) {
            if m {
                self.gain = (self.gain + 1).min(RAMP);
            } else if self.gain > 0 {
                self.gain -= 1;
            } else {
                continue;
            }
            let s = self.next_sample();
            let g = f32::from(self.gain) / f32::from(RAMP);
            let v = f32::from(*a) * (1.0 - g) + s * g;
            // Half away from zero, as `round` does, without its call into libm per sample (the
            // baseline x86-64 build has no rounding instruction); `as` saturates.
            *a = (v + 0.5f32.copysign(v)) as i16;
            changed = true;
        }
        changed
    }

    fn next_sample(&mut self) -> f32 {
        match self.kind {
            MaskKind::Silence => 0.0,
            MaskKind::Noise => {
                // xorshift32: cheap, seeded, and never silent.
                let mut x = self.rng;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                self.rng = x;
                (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * NOISE_PEAK
            }
            MaskKind::Tone => {
                self.phase = (self.phase + 1) % TONE_PERIOD;
                TONE_PEAK
                    * (2.0 * std::f32::consts::PI * self.phase as f32 / TONE_PERIOD as f32).sin()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: MaskKind, audio: &[i16], mask: &[bool]) -> Vec<i16> {
        let mut m = Masker::new(kind);
        let mut out = audio.to_vec();
        // Feed in uneven frames to prove the ramp state carries across calls.
        let mut at = 0;
        for len in [7usize, 160, 33, 1000] {
            let end = (at + len).min(out.len());
            m.apply(&mut out[at..end], &mask[at..end]);
            at = end;
        }
        out
    }

    #[test]
    fn unmasked_audio_is_untouched_and_masked_audio_replaced() {
        let audio: Vec<i16> = (0..400).map(|i| ((i * 37) % 2000) as i16 - 1000).collect();
        let mut mask = vec![false; 400];
        mask[100..200].fill(true);
        for kind in [MaskKind::Silence, MaskKind::Noise, MaskKind::Tone] {
            let out = run(kind, &audio, &mask);
            assert_eq!(out[..100], audio[..100], "{kind:?}");
            // After the fade-out the original returns exactly.
            assert_eq!(out[200 + 16..], audio[200 + 16..], "{kind:?}");
            let past_ramp = &out[116..200];
            if kind == MaskKind::Silence {
                assert!(past_ramp.iter().all(|&s| s == 0));
            } else {
                let same = past_ramp
                    .iter()
                    .zip(&audio[116..200])
                    .filter(|(a, b)| a == b)
                    .count();
                assert!(same < 3, "{kind:?}: {same} samples kept");
            }
        }
    }

    #[test]
    fn ramps_do_not_click() {
        // A loud constant under the mask: no step between neighbours larger than a ramp step.
        let audio = vec![16_000i16; 300];
        let mut mask = vec![false; 300];
        mask[50..250].fill(true);
        let out = run(MaskKind::Silence, &audio, &mask);
        for w in out.windows(2) {
            assert!((i32::from(w[0]) - i32::from(w[1])).abs() <= 1001, "{w:?}");
        }
    }

    #[test]
    fn noise_is_about_minus_30_dbm0() {
        let mut m = Masker::new(MaskKind::Noise);
        let mut a = vec![0i16; 8000];
        m.apply(&mut a, &vec![true; 8000]);
        let rms = (a[16..].iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 7984.0).sqrt();
        let dbm0 = 20.0 * (rms / (f64::from(DBM0_PEAK) / 2f64.sqrt())).log10();
        assert!((dbm0 + 30.0).abs() < 1.0, "{dbm0}");
    }
}
