//! The presence detector: a fast, generous signal that drives masking. It sums the last three
//! 16-sample steps (48 samples) every 2 ms: coarse in frequency but quick, so with `delay`
//! samples of look-ahead it can mask a tone from before its first sample.

use super::simd::{argmax4, max4};
use crate::dsp::goertzel::{Bank, STEP, Step, Terms, dbm0_power, step_terms};

/// Presence detector configuration.
#[derive(Clone, Debug)]
pub struct PresenceConfig {
    /// Decision latency in samples: the mask for sample `n` is known once sample `n + delay`
    /// has been fed. This is the scrubber's delay line length D.
    pub delay: usize,
    /// Weakest tone that triggers masking, per tone.
    pub min_level_dbm0: f32,
    /// Share of a 48-sample window's energy that two grid tones must carry.
    pub min_energy_ratio: f32,
    /// Share of the window's energy each of the two tones must carry on its own, so a single
    /// tone (a 1 kHz test tone, a ringback cadence) does not count as two.
    pub min_tone_share: f32,
    /// Samples masked after the last window that saw a tone.
    pub hang: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            delay: 80,
            min_level_dbm0: -50.0,
            min_energy_ratio: 0.75,
            min_tone_share: 0.08,
            hang: 24,
        }
    }
}

/// Window of the presence detector, in steps (48 samples), tested every step (2 ms). Testing
/// every millisecond cost half the detectors' time and masked no key better: a 6 ms window
/// moved on by 2 ms still overlaps its neighbours by two thirds, and the mask's pre-roll and
/// hang-over (tens of samples) cover the 8 samples a decision can come later. Every key the
/// masking tests play is still masked from first to last sample, and fewer lone windows in
/// speech are tested, so less speech is masked (dev corpus: 0.895 % → 0.614 % of the time).
const WIN_STEPS: usize = 3;
const WIN: usize = WIN_STEPS * STEP;
/// How long (tests, so 8 ms) a seen pair stays eligible for the relaxed test.
const HOLD_STEPS: u8 = 4;
/// Ring of pending mask marks; must exceed delay + hang.
const MARKS: usize = 256;

/// Fast, generous presence detector that drives masking.
pub struct PresenceDetector {
    cfg: PresenceConfig,
    delay: usize,
    pre: usize,
    pub(super) bank: Bank,
    /// The last three steps (a ring), frequency-major so window sums are whole-vector adds.
    win_re: [[f32; 8]; WIN_STEPS],
    win_im: [[f32; 8]; WIN_STEPS],
    win_energy: [f32; WIN_STEPS],
    /// Steps seen.
    steps: u64,
    /// Ring slot of the next step.
    slot: usize,
    pub(super) pos: u64,
    /// One bit per sample: a bitset keeps the ring to half a cache line.
    marks: [u64; MARKS / 64],
    min_power: f32,
    /// `min_power` as a bound on |X_k|² over the window: N²/2 · min_power.
    loud_q: f32,
    /// The grid pair last seen, and window tests since.
    held: Option<(usize, usize, u8)>,
}

impl PresenceDetector {
    pub fn new(cfg: PresenceConfig) -> Self {
        let delay = cfg.delay.min(MARKS - 1 - cfg.hang.min(64));
        PresenceDetector {
            delay,
            // Pre-roll: as much of the look-ahead as the window leaves, capped so speech
            // before a key is not eaten needlessly.
            pre: delay.saturating_sub(WIN).min(48),
            min_power: dbm0_power(cfg.min_level_dbm0),
            loud_q: dbm0_power(cfg.min_level_dbm0) * (WIN * WIN) as f32 / 2.0,
            cfg: PresenceConfig {
                hang: cfg.hang.min(64),
                ..cfg
            },
            bank: Bank::new(),
            win_re: [[0.0; 8]; WIN_STEPS],
            win_im: [[0.0; 8]; WIN_STEPS],
            win_energy: [0.0; WIN_STEPS],
            steps: 0,
            slot: 0,
            pos: 0,
            marks: [0; MARKS / 64],
            held: None,
        }
    }

    /// Samples of look-ahead this detector needs (D).
    pub fn delay(&self) -> usize {
        self.delay
    }

    /// Feeds `input`; writes into `mask[i]` whether the sample `delay()` samples before
    /// `input[i]` must be masked. `mask.len()` must equal `input.len()`. Samples before the
    /// start of the stream are reported unmasked. Never allocates.
    pub fn process(&mut self, input: &[i16], mask: &mut [bool]) {
        let n = input.len().min(mask.len());
        for (input, mask) in input[..n].chunks(64).zip(mask[..n].chunks_mut(64)) {
            let mut bits = [0u64];
            self.process_bits(input, &mut bits);
            for (i, m) in mask.iter_mut().enumerate() {
                *m = bits[0] >> i & 1 != 0;
            }
        }
    }

    /// [`PresenceDetector::process`] with the mask as bits, as [`process_both`] gives it: bit
    /// `i % 64` of `mask[i / 64]` is ORed in for `input[i]`. Input beyond the mask's bits is not
    /// read.
    pub fn process_bits(&mut self, input: &[i16], mask: &mut [u64]) {
        let n = input.len().min(mask.len().saturating_mul(64));
        for (i, &x) in input[..n].iter().enumerate() {
            let at = self.pos;
            self.pos += 1;
            if self.bank.stage(x) {
                let t = step_terms(self.bank.pending());
                self.finish_step(&t);
            }
            if self.take_mark(at) {
                mask[i / 64] |= 1 << (i % 64);
            }
        }
    }

    // The per-step path is inlined into `process_both`'s loop, here and in the strict detector:
    // as calls, a step's terms went through memory and its two energies were read back as one
    // 8-byte load of two 4-byte stores, a failed store forward that perf showed as the hot spot.
    #[inline(always)]
    pub(super) fn finish_step(&mut self, t: &Terms) -> Step {
        let st = self.bank.rotate(t);
        self.on_step(&st);
        st
    }

    #[inline(always)]
    fn on_step(&mut self, st: &Step) {
        self.steps += 1;
        let slot = self.slot;
        self.slot = if slot + 1 == WIN_STEPS { 0 } else { slot + 1 };
        if let (Some(re), Some(im), Some(e)) = (
            self.win_re.get_mut(slot),
            self.win_im.get_mut(slot),
            self.win_energy.get_mut(slot),
        ) {
            (*re, *im, *e) = (st.re, st.im, st.energy());
        }
        if self.steps >= WIN_STEPS as u64 && self.tone_in_window() {
            self.mark_window();
        }
    }

    /// The mask decision for the sample `delay` before `at`, clearing its slot for reuse.
    #[inline]
    pub(super) fn take_mark(&mut self, at: u64) -> bool {
        match at.checked_sub(self.delay as u64) {
            Some(out) => {
                let i = (out % MARKS as u64) as usize;
                let (word, bit) = (&mut self.marks[i / 64], 1u64 << (i % 64));
                let was = *word & bit != 0;
                *word &= !bit;
                was
            }
            None => false,
        }
    }

    /// [`PresenceDetector::take_mark`] for the step's sixteen samples from `at`, bit `j` for
    /// `at + j`. One read-modify-write of the ring instead of sixteen dependent ones.
    #[inline(always)]
    pub(super) fn take_marks16(&mut self, at: u64) -> u16 {
        let Some(out) = at.checked_sub(self.delay as u64) else {
            // The stream's first samples: some have no decision yet.
            let mut bits = 0;
            for j in 0..STEP as u64 {
                bits |= u16::from(self.take_mark(at + j)) << j;
            }
            return bits;
        };
        let i = (out % MARKS as u64) as usize;
        let (w, b) = (i / 64, i % 64);
        let mut bits = self.marks[w] >> b;
        self.marks[w] &= !(0xFFFF << b);
        if b > 64 - STEP {
            // The sixteen straddle two words: the first gave 64 - b of them.
            let (next, k) = ((w + 1) % (MARKS / 64), 64 - b);
            bits |= self.marks[next] << k;
            self.marks[next] &= !(0xFFFF >> k);
        }
        bits as u16
    }

    // Eight parallel frequency lanes: indexing reads clearest and vectorises.
    // Inlined into the per-step path for the same reason as `finish_step`, and so the AVX2
    // copy of `process_both` runs it with 8-lane vectors too.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn tone_in_window(&mut self) -> bool {
        let mut e = 0.0;
        for &se in &self.win_energy {
            e += se;
        }
        if e <= 0.0 {
            return false;
        }
        // A window too quiet for any term to reach the level floor cannot hold a tone: over N
        // samples |X_k|² ≤ N·Σx² (Cauchy–Schwarz), so each p_k ≤ 2e, and `loud` below needs
        // p_k ≥ N·min_power for two of them. The 1 % margin covers float rounding, so skipping
        // the terms here never changes a decision; it only saves their sums in quiet audio.
        if 2.02 * e < WIN as f32 * self.min_power {
            self.age_held();
            return false;
        }
        // Written out per slot: as a loop over the ring the sums compiled to scalar adds.
        let [r0, r1, r2] = &self.win_re;
        let [i0, i1, i2] = &self.win_im;
        let (mut re, mut im) = ([0f32; 8], [0f32; 8]);
        for k in 0..8 {
            re[k] = r0[k] + r1[k] + r2[k];
            im[k] = i0[k] + i1[k] + i2[k];
        }
        // |X_k|²; the tests below are on p_k = 2|X_k|²/N (the energy of a sine giving that
        // term) with the 2/N moved into their thresholds, which saves the divisions.
        let mut q = [0f32; 8];
        for k in 0..8 {
            q[k] = re[k] * re[k] + im[k] * im[k];
        }
        // The strongest term of each group: its value is all the tests below read, its index
        // only matters once they pass.
        let (ql, qh) = (
            max4([q[0], q[1], q[2], q[3]]),
            max4([q[4], q[5], q[6], q[7]]),
        );
        // p/N ≥ min_power  ⇔  q ≥ min_power·N²/2;  p ≥ r·e  ⇔  q ≥ r·e·N/2.
        let loud = ql >= self.loud_q && qh >= self.loud_q;
        let en = e * (WIN as f32 / 2.0);
        let (ratio, share) = (self.cfg.min_energy_ratio * en, self.cfg.min_tone_share * en);
        // The weaker of the two tests below (the held one), which each of them implies: a window
        // failing it is no tone whatever pair was held, so the pair's indices and the hold are
        // never looked at. Most speech ends here; the decisions are those of the full test.
        let (ratio_lo, share_lo) = (ratio.min(0.5 * ratio), share.min(0.5 * share));
        if !(loud && ql + qh >= ratio_lo && ql >= share_lo && qh >= share_lo) {
            self.age_held();
            return false;
        }
        let l = argmax4([q[0], q[1], q[2], q[3]]);
        let h = 4 + argmax4([q[4], q[5], q[6], q[7]]);
        // `loud` held, or the window was turned away above.
        let onset = ql + qh >= ratio && ql >= share && qh >= share;
        // Once a pair has been seen, the same pair keeps masking at half the energy share:
        // speech over a sounding key must not open holes in the mask.
        let held = matches!(self.held, Some((hl, hh, _)) if hl == l && hh == h)
            && ql + qh >= 0.5 * ratio
            && ql >= 0.5 * share
            && qh >= 0.5 * share;
        if onset || held {
            self.held = Some((l, h, 0));
            true
        } else {
            self.age_held();
            false
        }
    }

    /// A window without a tone: the pair last seen stays eligible for a while.
    fn age_held(&mut self) {
        self.held = match self.held {
            Some((hl, hh, age)) if age < HOLD_STEPS => Some((hl, hh, age + 1)),
            _ => None,
        };
    }

    /// Marks the window just completed, with pre-roll before it and hang-over after it.
    fn mark_window(&mut self) {
        let end = self.pos;
        let released = end.saturating_sub(self.delay as u64);
        let from = end.saturating_sub((WIN + self.pre) as u64).max(released);
        let to = end + self.cfg.hang as u64;
        for s in from..to {
            let i = (s % MARKS as u64) as usize;
            self.marks[i / 64] |= 1u64 << (i % 64);
        }
    }

    /// Forgets all history (used when scrubbing is switched on mid-stream).
    pub fn reset(&mut self) {
        *self = PresenceDetector::new(self.cfg.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digit::Digit;
    use crate::dsp::dtmf::testkit::key;

    fn presence_mask(audio: &[i16]) -> (Vec<bool>, usize) {
        let mut p = PresenceDetector::new(PresenceConfig::default());
        let d = p.delay();
        let mut mask = vec![false; audio.len()];
        for (a, m) in audio.chunks(160).zip(mask.chunks_mut(160)) {
            p.process(a, m);
        }
        // mask[i] is for sample i - d.
        (mask[d..].to_vec(), d)
    }

    #[test]
    fn presence_covers_a_tone_with_pre_roll_and_hang_over() {
        for (lead, len) in [(403, 480), (400, 40), (1001, 184), (997, 333)] {
            let audio = key(Digit::ALL[5], -10.0, lead, len, 800);
            let (mask, _) = presence_mask(&audio);
            let first = mask.iter().position(|&m| m).expect("masked");
            let last = mask.iter().rposition(|&m| m).unwrap();
            assert!(first + 16 <= lead, "{lead}/{len}: mask starts at {first}");
            assert!(first + 160 >= lead, "{lead}/{len}: mask starts at {first}");
            assert!(last >= lead + len, "{lead}/{len}: mask ends at {last}");
            assert!(
                last <= lead + len + 200,
                "{lead}/{len}: mask ends at {last}"
            );
            assert!(mask[first..=last].iter().all(|&m| m), "{lead}/{len}: gap");
        }
    }
}
