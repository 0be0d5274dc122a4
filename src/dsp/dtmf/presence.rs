//! The presence detector: a fast signal that drives masking. It sums the last three 16-sample
//! steps (48 samples) every 2 ms: coarse in frequency but quick, so with `delay` samples of
//! look-ahead it can mask a tone from before its first sample. A window that passes that coarse
//! test is looked at again on its raw samples before a span starts (pair on the grid, pure,
//! and rising against what came before) and, once the span has lasted 16 ms, over 128 samples
//! that resolve a voice's harmonics: that is what keeps vowels from being masked as keys.

use super::simd::{argmax4, dot2, max4};
use crate::dsp::goertzel::{Bank, DTMF_HZ, RATE, STEP, Step, Terms, dbm0_power, step_terms};

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
    /// Largest relative frequency error of either tone, measured over the last 48 samples,
    /// for a window to start masking.
    pub max_freq_dev: f32,
    /// Share of the last 48 samples' energy the two tones, measured at the frequencies found,
    /// must carry to start masking.
    pub min_pure_ratio: f32,
    /// How much louder (in amplitude) each tone must be than 16 samples before the window.
    pub min_rise: f32,
    /// For a span that has lasted 128 samples, the same two limits over its last 128, where a
    /// voice's neighbouring harmonics are resolved.
    pub long_freq_dev: f32,
    pub long_pure_ratio: f32,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            delay: 80,
            min_level_dbm0: -50.0,
            min_energy_ratio: 0.65,
            min_tone_share: 0.08,
            hang: 24,
            max_freq_dev: 0.08,
            min_pure_ratio: 0.5,
            min_rise: 2.0,
            long_freq_dev: 0.03,
            long_pure_ratio: 0.6,
        }
    }
}

/// Share of the onset thresholds a held pair needs to keep masking: speech over a sounding
/// key must not open holes in the mask.
const HELD_SHARE: f32 = 0.85;
/// Steps after a span of a pair during which a window sharing a tone with it starts a span
/// without the rise test: a key that speech broke up, or whose pair the fine window read
/// differently for a moment, would fail against its own earlier part.
const RESUME_STEPS: u32 = 8;
/// Samples between the rise test's two windows: a key found one window late still rises
/// against the audio before it.
const RISE_GAP: usize = 16;

/// Raw samples kept for the fine tests: the last eight steps.
const RAW_STEPS: usize = 8;
const RAW: usize = RAW_STEPS * STEP;
/// The short fine window (the last 64 samples: what the look-ahead leaves at a key's onset)
/// and the long one (128, once a span has lasted that long).
const SHORT: usize = 48;
const SHORT_PHASE: usize = 32;
const LONG: usize = RAW;
const LONG_PHASE: usize = 96;

/// Hann-weighted e^{-jω_k n} at the grid frequencies over a window of `W` samples and over
/// the two phase windows of `P` inside it; one copy per process.
struct Kernels<const W: usize, const P: usize> {
    phase_re: [[f32; P]; 8],
    phase_im: [[f32; P]; 8],
    full_re: [[f32; W]; 8],
    full_im: [[f32; W]; 8],
    full_sum: f32,
}

static SHORT_K: std::sync::LazyLock<Box<Kernels<SHORT, SHORT_PHASE>>> =
    std::sync::LazyLock::new(Kernels::new);
static LONG_K: std::sync::LazyLock<Box<Kernels<LONG, LONG_PHASE>>> =
    std::sync::LazyLock::new(Kernels::new);

fn hann<const N: usize>() -> [f32; N] {
    let mut w = [0f32; N];
    for (n, v) in w.iter_mut().enumerate() {
        let x = 2.0 * std::f64::consts::PI * (n as f64 + 0.5) / N as f64;
        *v = (0.5 - 0.5 * x.cos()) as f32;
    }
    w
}

impl<const W: usize, const P: usize> Kernels<W, P> {
    #[allow(clippy::needless_range_loop)]
    fn new() -> Box<Self> {
        let hp: [f32; P] = hann();
        let hf: [f32; W] = hann();
        let mut k = Box::new(Kernels {
            phase_re: [[0.0; P]; 8],
            phase_im: [[0.0; P]; 8],
            full_re: [[0.0; W]; 8],
            full_im: [[0.0; W]; 8],
            full_sum: hf.iter().sum(),
        });
        for (i, &f) in DTMF_HZ.iter().enumerate() {
            let w = 2.0 * std::f64::consts::PI * f64::from(f) / f64::from(RATE);
            for n in 0..W {
                let (s, c) = (w * n as f64).sin_cos();
                if let Some(&g) = hp.get(n) {
                    k.phase_re[i][n] = (f64::from(g) * c) as f32;
                    k.phase_im[i][n] = (-f64::from(g) * s) as f32;
                }
                k.full_re[i][n] = (f64::from(hf[n]) * c) as f32;
                k.full_im[i][n] = (-f64::from(hf[n]) * s) as f32;
            }
        }
        k
    }

    /// Amplitude of grid tone `k` in `x` as measured at the grid frequency.
    #[inline(always)]
    fn amplitude(&self, x: &[f32], k: usize) -> f32 {
        let (fr, fi) = dot2(x, &self.full_re[k], &self.full_im[k]);
        2.0 * (fr * fr + fi * fi).sqrt() / self.full_sum
    }

    /// |X_k|² of `x` at grid frequency `k`, through the full window.
    #[inline(always)]
    fn power(&self, x: &[f32], k: usize) -> f32 {
        let (fr, fi) = dot2(x, &self.full_re[k], &self.full_im[k]);
        fr * fr + fi * fi
    }

    /// Relative frequency error of the tone near grid frequency `k` in `x` (`W` samples), from
    /// the phase step between the two phase windows, and its energy over the window, corrected
    /// for the window's roll-off at that offset.
    #[inline(always)]
    fn measure(&self, x: &[f32], k: usize) -> (f32, f32) {
        let lag = W - P;
        let (kr, ki) = (&self.phase_re[k], &self.phase_im[k]);
        let (a, b) = (&x[..P.min(x.len())], &x[lag.min(x.len())..]);
        let (ar, ai) = dot2(a, kr, ki);
        let (br, bi) = dot2(b, kr, ki);
        let f = DTMF_HZ[k];
        let w = 2.0 * std::f32::consts::PI * f / RATE;
        let dphi = (bi * ar - br * ai).atan2(br * ar + bi * ai) - w * lag as f32;
        let dphi = (dphi + std::f32::consts::PI).rem_euclid(2.0 * std::f32::consts::PI)
            - std::f32::consts::PI;
        let df = dphi * RATE / (2.0 * std::f32::consts::PI * lag as f32);
        // Hann's amplitude response δ bins off centre: sinc(δ) / (1 − δ²).
        let d = df * W as f32 / RATE;
        let xd = std::f32::consts::PI * d;
        let sinc = if xd.abs() < 1e-4 { 1.0 } else { xd.sin() / xd };
        let resp = (sinc / (1.0 - d * d).max(1e-3)).clamp(0.2, 1.0);
        let amp = self.amplitude(x, k) / resp;
        (df / f, amp * amp / 2.0 * W as f32)
    }
}

/// Both tones within `max_dev` of the grid and carrying `min_ratio` of `x`'s energy.
#[inline(always)]
fn pure<const W: usize, const P: usize>(
    k: &Kernels<W, P>,
    x: &[f32],
    l: usize,
    h: usize,
    max_dev: f32,
    min_ratio: f32,
) -> bool {
    let e = energy(x);
    if e <= 0.0 {
        return false;
    }
    let (dl, pl) = k.measure(x, l);
    let (dh, ph) = k.measure(x, h);
    dl.abs() <= max_dev && dh.abs() <= max_dev && pl + ph >= min_ratio * e
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Σ x², in eight interleaved partial sums like [`dot2`]'s: summed in order, the 128 dependent
/// additions of a long window were the fine tests' longest chain.
#[inline(always)]
fn energy(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let xc = x.chunks_exact(8);
    let tail: f32 = xc.remainder().iter().map(|v| v * v).sum();
    for a in xc {
        for (s, v) in acc.iter_mut().zip(a) {
            *s += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The strongest grid tone of each group over the last `SHORT` samples of `x`.
#[inline(always)]
fn fine_pair(x: &[f32; RAW]) -> (usize, usize) {
    let now = &x[RAW - SHORT..];
    let k = &*SHORT_K;
    // Compared as |X|²: the amplitude is a rising function of it, so the same tone wins
    // without eight square roots per step. A plain loop: `array::from_fn` stays an outlined
    // call, which the AVX2 copy cannot inline.
    let mut a = [0f32; 8];
    for (i, v) in a.iter_mut().enumerate() {
        *v = k.power(now, i);
    }
    (
        argmax4([a[0], a[1], a[2], a[3]]),
        4 + argmax4([a[4], a[5], a[6], a[7]]),
    )
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
    /// The last `RAW_STEPS` steps' samples, a step per slot, for the fine tests.
    raw: [[i16; STEP]; RAW_STEPS],
    raw_slot: usize,
    /// Steps since the current span's onset (saturating).
    span_steps: u8,
    /// The pair last masked and steps since: a key that speech broke up resumes without the
    /// rise test, which its own earlier part would fail.
    last_pair: Option<(usize, usize)>,
    since_pair: u16,
    /// Where the audio was last joined from pieces that were not contiguous in time (a lost,
    /// late or reordered packet, a new stream): a long window over the join measures the jump
    /// in phase, not the audio.
    splice_at: Option<u64>,
    /// The CPU has AVX2, which the fine tests use.
    avx2: bool,
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
            raw: [[0; STEP]; RAW_STEPS],
            raw_slot: 0,
            span_steps: 0,
            last_pair: None,
            since_pair: u16::MAX,
            splice_at: None,
            avx2: has_avx2(),
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
                let step = *self.bank.pending();
                let t = step_terms(&step);
                self.finish_step(&step, &t);
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
    pub(super) fn finish_step(&mut self, x: &[i16; STEP], t: &Terms) -> Step {
        if let Some(slot) = self.raw.get_mut(self.raw_slot) {
            *slot = *x;
        }
        self.raw_slot = (self.raw_slot + 1) % RAW_STEPS;
        let st = self.bank.rotate(t);
        self.on_step(&st);
        st
    }

    #[inline(always)]
    fn on_step(&mut self, st: &Step) {
        self.steps += 1;
        self.since_pair = self.since_pair.saturating_add(1);
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
        // A window over a join measures the jump: its pair can read as a neighbour's, which
        // then neither holds nor resumes the key. A span sounding at the join holds across it.
        if matches!(self.held, Some((_, _, 0)))
            && self.splice_at.is_some_and(|at| self.pos < at + WIN as u64)
        {
            self.since_pair = 0;
            return true;
        }
        let mut e = 0.0;
        for &se in &self.win_energy {
            e += se;
        }
        if e <= 0.0 {
            self.age_held();
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
        let hf = HELD_SHARE;
        let (ratio_lo, share_lo) = (ratio.min(hf * ratio), share.min(hf * share));
        if !(loud && ql + qh >= ratio_lo && ql >= share_lo && qh >= share_lo) {
            self.age_held();
            return false;
        }
        let onset = ql + qh >= ratio && ql >= share && qh >= share;
        let held_gate = ql + qh >= hf * ratio && ql >= hf * share && qh >= hf * share;
        self.fine_tests(onset, held_gate)
    }

    /// The tests on the raw samples, for a window the coarse test let through: rare in speech,
    /// but every step while a key sounds, where they were over half the detector's time. They
    /// run on one conversion of the recent samples to floats, compiled for AVX2 where the CPU
    /// has it (the same IEEE operations in the same order per lane, so both builds decide alike).
    #[inline(never)]
    fn fine_tests(&mut self, onset: bool, held_gate: bool) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU was found to support AVX2.
            return unsafe { self.fine_tests_avx2(onset, held_gate) };
        }
        self.fine_tests_with(onset, held_gate)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn fine_tests_avx2(&mut self, onset: bool, held_gate: bool) -> bool {
        self.fine_tests_with(onset, held_gate)
    }

    #[inline(always)]
    fn fine_tests_with(&mut self, onset: bool, held_gate: bool) -> bool {
        let x = self.recent();
        // The pair from the fine window: a 48-sample rectangular term can favour the neighbour
        // of a tone 1.5 % off the grid when the other group's tone leaks into it.
        let (l, h) = fine_pair(&x);
        // Once a pair has been seen, the same pair keeps masking at a lower energy share:
        // speech over a sounding key must not open holes in the mask.
        let held = matches!(self.held, Some((hl, hh, _)) if hl == l && hh == h) && held_gate;
        let resumes = matches!(self.last_pair, Some((pl, ph)) if pl == l || ph == h)
            && u32::from(self.since_pair) <= RESUME_STEPS;
        let fine = if held {
            self.span_steps = self.span_steps.saturating_add(1);
            self.continues(&x, l, h)
        } else {
            onset && self.starts(&x, l, h, resumes)
        };
        if fine {
            if !held {
                self.span_steps = 0;
            }
            self.held = Some((l, h, 0));
            self.last_pair = Some((l, h));
            self.since_pair = 0;
            true
        } else {
            self.age_held();
            false
        }
    }

    /// The last `RAW` samples, oldest first.
    #[inline(always)]
    fn recent(&self) -> [f32; RAW] {
        let mut x = [0f32; RAW];
        for (i, chunk) in x.chunks_exact_mut(STEP).enumerate() {
            let slot = (self.raw_slot + i) % RAW_STEPS;
            for (d, &v) in chunk.iter_mut().zip(&self.raw[slot]) {
                *d = f32::from(v);
            }
        }
        x
    }

    /// Whether a window the coarse test passed starts a span: over the last 48 samples, both
    /// tones within `max_freq_dev` of the grid (from the phase step between two Hann windows 16
    /// apart) and carrying `min_pure_ratio` of the energy; and each tone `min_rise` times
    /// louder than in the 48 samples ending 16 before them. A key starts from whatever was
    /// there; a vowel's harmonics grow into place over tens of milliseconds, and this one test
    /// turns away most of the windows of speech that look like a key for 6 ms (on 47 minutes of
    /// speech: masked time 0.58 % → 0.03 % with the coarse test alone). A window sharing a tone
    /// with a span just ended resumes without it. Run only when the coarse test passed.
    #[inline(always)]
    fn starts(&self, x: &[f32; RAW], l: usize, h: usize, resumes: bool) -> bool {
        let gap = RISE_GAP;
        let (before, now) = (
            &x[RAW - 2 * SHORT - gap..RAW - SHORT - gap],
            &x[RAW - SHORT..],
        );
        let k = &*SHORT_K;
        if !pure(k, now, l, h, self.cfg.max_freq_dev, self.cfg.min_pure_ratio) {
            return false;
        }
        // Audio before a join is not what came before this in time: rising against it means
        // nothing (a key right after another key's last piece, its pause lost, would fail).
        let joined = self
            .splice_at
            .is_some_and(|at| self.pos < at + (2 * SHORT + gap) as u64);
        if resumes || joined {
            return true;
        }
        let rise = self.cfg.min_rise;
        k.amplitude(before, l) * rise <= k.amplitude(now, l)
            && k.amplitude(before, h) * rise <= k.amplitude(now, h)
    }

    /// Whether a held pair keeps masking: always while the span is younger than the long
    /// window (the coarse held test decided), then only if the last 128 samples, where a
    /// voice's neighbouring harmonics are resolved, hold the pair on the grid and pure. A
    /// vowel's two harmonics that happened to start like a key are cut there.
    #[inline(always)]
    fn continues(&mut self, x: &[f32; RAW], l: usize, h: usize) -> bool {
        if usize::from(self.span_steps) * STEP < LONG {
            return true;
        }
        // A step of margin: a join inside a step leaves part of that step before it.
        if self
            .splice_at
            .is_some_and(|at| self.pos < at + (LONG + STEP) as u64)
        {
            return true;
        }
        let ok = pure(
            &LONG_K,
            x,
            l,
            h,
            self.cfg.long_freq_dev,
            self.cfg.long_pure_ratio,
        );
        if !ok {
            // Heard long enough to be measured and found not to be a key: it does not resume
            // without the rise test either.
            self.last_pair = None;
        }
        ok
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

    /// Says that the next sample does not follow the last one in time. A key spliced from
    /// pieces fails every test while the join is inside its window: a span sounding at the
    /// join holds until the short windows have passed it, then on the coarse test alone until
    /// the long one has.
    pub fn splice(&mut self) {
        self.splice_at = Some(self.pos);
    }

    /// Runs the fine tests with the baseline build, for the test that holds both builds alike.
    #[cfg(test)]
    pub(super) fn without_avx2(mut self) -> Self {
        self.avx2 = false;
        self
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

#[cfg(test)]
mod splice_tests {
    use super::*;
    use crate::digit::Digit;
    use crate::dsp::dtmf::testkit::key;

    /// Mask over `parts` joined in order, the detector told of each join; mask[i] is for
    /// sample i.
    fn joined_mask(parts: &[&[i16]]) -> Vec<bool> {
        let mut p = PresenceDetector::new(PresenceConfig::default());
        let audio: Vec<i16> = parts.concat();
        let mut mask = vec![false; audio.len()];
        let mut at = 0;
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                p.splice();
            }
            p.process(part, &mut mask[at..at + part.len()]);
            at += part.len();
        }
        mask.split_off(p.delay())
    }

    #[test]
    fn a_key_joined_from_pieces_is_masked_whole() {
        // A key of 800 samples from 400 on, packets of `skip` samples lost at `cut`: the
        // pieces' phases jump at the join, which every window over it measures.
        let d = Digit::from_char('0').unwrap();
        let whole = key(d, -15.0, 400, 800, 600);
        let mut cases = 0;
        for cut in [320, 480, 560] {
            for skip in (3..200).step_by(7) {
                for piece in [64, 80, 160] {
                    let resume = 400 + cut + skip;
                    if resume + piece > 1200 {
                        continue;
                    }
                    let tail = vec![0i16; 600];
                    let mask =
                        joined_mask(&[&whole[..400 + cut], &whole[resume..resume + piece], &tail]);
                    let end = 400 + cut + piece;
                    let holes = (400..end).filter(|&i| !mask[i]).count();
                    assert_eq!(holes, 0, "cut {cut} skip {skip} piece {piece}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 150);
    }

    #[test]
    fn a_key_joined_straight_after_another_key_is_masked_whole() {
        // Another key's last piece, its pause lost, then a key: the rise test would compare
        // the new key with the old one, whose tones leak into the short window's bins.
        let second = key(Digit::from_char('1').unwrap(), -15.0, 0, 800, 600);
        for len in (400..600).step_by(16) {
            let first = key(Digit::from_char('0').unwrap(), -15.0, 400, len, 0);
            let mask = joined_mask(&[&first, &second]);
            let holes = (400..400 + len + 800).filter(|&i| !mask[i]).count();
            assert_eq!(holes, 0, "first key {len} samples");
        }
    }
}
