//! DTMF detection. Two signals from one Goertzel front end (DESIGN.md §4):
//! a strict Q.24 digit decision for capture and scan, and a fast presence signal for masking.
//!
//! Both work on 16-sample steps from [`Bank`], phase-referenced to the absolute sample index.
//! The strict detector sums them into 96-sample blocks (12 ms) and measures each tone's
//! frequency from the phase advance between the block's halves, which is what lets it accept
//! ±1.5 % and reject ±3.5 % with a block far too short to resolve that by magnitude alone.
//! The presence detector sums the last three steps (48 samples) every 2 ms: coarse in
//! frequency but quick, so with `delay` samples of look-ahead it can mask a tone from before its
//! first sample. Neither allocates or reads a clock; sample offsets are the only time.

use super::goertzel::{Bank, DTMF_HZ, RATE, STEP, SUB, Step, Terms, dbm0_power, step_terms};
use crate::digit::Digit;

/// A digit decided by the strict detector, with exact sample offsets (absolute, from the
/// first sample the detector was fed). Emitted once the tone has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigitEvent {
    pub digit: Digit,
    /// First sample of the tone.
    pub start: u64,
    /// One past the last sample of the tone.
    pub end: u64,
}

/// Strict digit detector configuration (ITU-T Q.24 figures by default).
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// Weakest tone accepted, per tone. Q.24 asks for −36 dBm0 (and twist can put the other
    /// tone 8 dB lower); −55 dBm0 must be rejected.
    pub min_level_dbm0: f32,
    /// How much louder the high-group tone may be (dB). Q.24: 4 dB accepted.
    pub max_reverse_twist_db: f32,
    /// How much louder the low-group tone may be (dB). Q.24: 8 dB accepted.
    pub max_normal_twist_db: f32,
    /// Largest relative frequency error accepted (Q.24: accept 1.5 %, reject 3.5 %).
    pub max_freq_dev: f32,
    /// Share of the block's energy the two tones must carry (talk-off guard).
    pub min_energy_ratio: f32,
    /// Largest second-harmonic power relative to its fundamental (talk-off guard).
    pub max_harmonic_ratio: f32,
    /// Shortest tone reported, in samples (Q.24 accepts 40 ms and rejects 23 ms or less).
    pub min_tone_samples: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            min_level_dbm0: -47.0,
            // Margins over Q.24 cover G.711 quantisation and the estimator's spread, so the
            // boundary cases (exactly 4 and 8 dB) pass.
            max_reverse_twist_db: 6.5,
            max_normal_twist_db: 10.0,
            max_freq_dev: 0.025,
            min_energy_ratio: 0.70,
            max_harmonic_ratio: 0.15,
            min_tone_samples: 240,
        }
    }
}

/// Block length of the strict detector: 6 steps, 12 ms. Two whole blocks fit in any 38 ms
/// tone but not in a 23 ms one, and the halves give 48-sample phase steps that stay
/// unambiguous up to ±83 Hz.
const BLOCK_STEPS: usize = 6;
const BLOCK: usize = BLOCK_STEPS * STEP;
const HALF_STEPS: usize = BLOCK_STEPS / 2;
/// The block in sub-blocks, the unit of the energy history.
const BLOCK_SUBS: usize = BLOCK / SUB;
/// Windows of the frequency measurement (see `offset_and_power`).
const PHASE_WIN: usize = 64;
const PHASE_LAG: usize = BLOCK - PHASE_WIN;
/// Sub-block energies remembered for refining edges (four blocks).
const HIST: usize = 4 * BLOCK_SUBS;

#[derive(Clone, Copy, Debug)]
enum State {
    Idle,
    /// One block matched `key`; a second confirms it (one miss between is bridged: speech
    /// over a key can spoil a single block).
    Pending {
        key: Digit,
        first: u64,
        steady: f32,
        missed: bool,
    },
    Active {
        key: Digit,
        start: u64,
        last_hit: u64,
        misses: u8,
        steady: f32,
    },
}

/// Strict detector: reports each key exactly once, with its span.
pub struct DtmfDetector {
    cfg: DetectorConfig,
    bank: Bank,
    /// Complex sums of the current block's halves, real and imaginary parts apart so the
    /// per-step sums are whole-vector adds.
    half_re: [[f32; 8]; 2],
    half_im: [[f32; 8]; 2],
    energy: f32,
    /// The block's samples as they came (the block tests convert them as they read them): half
    /// the cache lines of floats, and they are written every packet but read only by the rare
    /// block that passes the cheap gates.
    samples: [i16; BLOCK],
    steps_in_block: usize,
    /// Energy of each of the last `HIST` sub-blocks (a ring).
    hist: [f32; HIST],
    /// Index of the next sub-block (absolute).
    sub_index: u64,
    /// `sub_index` modulo `HIST`, kept alongside to spare a division per step. Always even:
    /// sub-blocks arrive in pairs and `HIST` is even.
    hist_slot: usize,
    pos: u64,
    state: State,
    min_power: f32,
}

/// Kernels of the strict detector's block measurements at each grid frequency k: Hann-weighted
/// e^{-jω_k n} over a phase window and over the whole block, and plain e^{-j2ω_k n} for the
/// second-harmonic test. With them each measurement is a dot product the compiler vectorises,
/// where a rotating-phasor recurrence is one long dependency chain. One copy per process.
struct Kernels {
    phase_re: [[f32; PHASE_WIN]; 8],
    phase_im: [[f32; PHASE_WIN]; 8],
    full_re: [[f32; BLOCK]; 8],
    full_im: [[f32; BLOCK]; 8],
    harm_re: [[f32; BLOCK]; 8],
    harm_im: [[f32; BLOCK]; 8],
    /// Σ of the full-block Hann window (its coherent gain).
    full_sum: f32,
}

static KERNELS: std::sync::LazyLock<Box<Kernels>> = std::sync::LazyLock::new(kernels);

// Parallel fixed-size tables indexed by frequency and sample.
#[allow(clippy::needless_range_loop)]
fn kernels() -> Box<Kernels> {
    let hp: [f32; PHASE_WIN] = hann();
    let hf: [f32; BLOCK] = hann();
    let mut k = Box::new(Kernels {
        phase_re: [[0.0; PHASE_WIN]; 8],
        phase_im: [[0.0; PHASE_WIN]; 8],
        full_re: [[0.0; BLOCK]; 8],
        full_im: [[0.0; BLOCK]; 8],
        harm_re: [[0.0; BLOCK]; 8],
        harm_im: [[0.0; BLOCK]; 8],
        full_sum: hf.iter().sum(),
    });
    for (i, &f) in DTMF_HZ.iter().enumerate() {
        let w = 2.0 * std::f64::consts::PI * f64::from(f) / f64::from(RATE);
        for n in 0..BLOCK {
            let (s, c) = (w * n as f64).sin_cos();
            if let Some(&g) = hp.get(n) {
                k.phase_re[i][n] = (f64::from(g) * c) as f32;
                k.phase_im[i][n] = (-f64::from(g) * s) as f32;
            }
            k.full_re[i][n] = (f64::from(hf[n]) * c) as f32;
            k.full_im[i][n] = (-f64::from(hf[n]) * s) as f32;
            let (s2, c2) = (2.0 * w * n as f64).sin_cos();
            k.harm_re[i][n] = c2 as f32;
            k.harm_im[i][n] = -s2 as f32;
        }
    }
    k
}

/// Why a block was not a key (for tracing the detector in tests).
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)]
enum Reject {
    Silent,
    NotClear,
    Ratio(f32),
    Frequency(f32, f32),
    Level,
    Twist(f32),
    Harmonic(f32),
}

/// What one block looked like to the strict detector.
#[derive(Clone, Copy, Debug)]
struct BlockHit {
    key: Digit,
    /// Energy of the two tones per sub-block, for edge refinement.
    steady: f32,
}

impl DtmfDetector {
    pub fn new(cfg: DetectorConfig) -> Self {
        let min_power = dbm0_power(cfg.min_level_dbm0);
        DtmfDetector {
            cfg,
            bank: Bank::new(),
            half_re: [[0.0; 8]; 2],
            half_im: [[0.0; 8]; 2],
            energy: 0.0,
            samples: [0; BLOCK],
            steps_in_block: 0,
            hist: [0.0; HIST],
            sub_index: 0,
            hist_slot: 0,
            pos: 0,
            state: State::Idle,
            min_power,
        }
    }

    /// Feeds linear samples (8 kHz); calls `on_digit` for every digit that has ended.
    pub fn process(&mut self, samples: &[i16], on_digit: &mut dyn FnMut(DigitEvent)) {
        for &x in samples {
            if self.stage(x) {
                let t = step_terms(self.bank.pending());
                self.finish_step(&t, on_digit);
            }
        }
    }

    /// Takes one sample; true when it completes a step, whose terms must then be passed
    /// to [`DtmfDetector::finish_step`] before the next sample.
    #[inline]
    fn stage(&mut self, x: i16) -> bool {
        let at = self.steps_in_block * STEP + self.bank.fill();
        if let Some(slot) = self.samples.get_mut(at) {
            *slot = x;
        }
        self.pos += 1;
        self.bank.stage(x)
    }

    /// Takes a whole step at once; only at a step boundary (`bank.fill() == 0`).
    #[inline]
    fn stage_step(&mut self, x: &[i16]) {
        let at = self.steps_in_block * STEP;
        if let Some(dst) = self.samples.get_mut(at..at + STEP) {
            dst.copy_from_slice(x);
        }
        self.pos += STEP as u64;
    }

    #[inline(always)]
    fn finish_step(&mut self, t: &Terms, on_digit: &mut dyn FnMut(DigitEvent)) {
        let st = self.bank.rotate(t);
        self.on_step(&st, on_digit);
    }

    /// The same, with the step already phase-referenced by a bank in phase with ours.
    #[inline(always)]
    fn finish_rotated(&mut self, st: &Step, on_digit: &mut dyn FnMut(DigitEvent)) {
        self.bank.skip();
        self.on_step(st, on_digit);
    }

    #[inline(always)]
    fn on_step(&mut self, st: &Step, on_digit: &mut dyn FnMut(DigitEvent)) {
        let h = usize::from(self.steps_in_block >= HALF_STEPS);
        for k in 0..8 {
            self.half_re[h][k] += st.re[k];
            self.half_im[h][k] += st.im[k];
        }
        self.energy += st.energy();
        if let Some(h) = self.hist.get_mut(self.hist_slot..self.hist_slot + 2) {
            h.copy_from_slice(&st.energy);
        }
        self.hist_slot = if self.hist_slot + 2 >= HIST {
            0
        } else {
            self.hist_slot + 2
        };
        self.sub_index += 2;
        self.steps_in_block += 1;
        if self.steps_in_block < BLOCK_STEPS {
            return;
        }
        let block_start = self.pos - BLOCK as u64;
        let verdict = self.evaluate();
        #[cfg(test)]
        if std::env::var_os("TONEWALL_TRACE_BLOCKS").is_some() {
            eprintln!("block at {block_start}: {verdict:?}");
        }
        let hit = verdict.ok();

        self.half_re = [[0.0; 8]; 2];
        self.half_im = [[0.0; 8]; 2];
        self.energy = 0.0;
        self.steps_in_block = 0;
        self.step(block_start, hit, on_digit);
    }

    /// The Q.24 block test.
    fn evaluate(&self) -> Result<BlockHit, Reject> {
        let n = BLOCK as f32;
        let e = self.energy;
        if e <= 0.0 {
            return Err(Reject::Silent);
        }
        let mut p = [0f32; 8];
        for (k, pk) in p.iter_mut().enumerate() {
            let (re, im) = (
                self.half_re[0][k] + self.half_re[1][k],
                self.half_im[0][k] + self.half_im[1][k],
            );
            // Energy of a sine that would give this DFT term: |X|² · 2 / N.
            *pk = 2.0 * (re * re + im * im) / n;
        }
        let l = argmax4([p[0], p[1], p[2], p[3]]);
        let h = 4 + argmax4([p[4], p[5], p[6], p[7]]);
        // Each tone must stand clear of its group's other frequencies (6 dB).
        for k in 0..4 {
            if k != l && p[k] * 4.0 > p[l] {
                return Err(Reject::NotClear);
            }
            if k + 4 != h && p[k + 4] * 4.0 > p[h] {
                return Err(Reject::NotClear);
            }
        }
        // Cheap gate before the windowed measurement: most speech stops here.
        if p[l] + p[h] < 0.5 * self.cfg.min_energy_ratio * e {
            return Err(Reject::Ratio((p[l] + p[h]) / e));
        }
        let (dl, pl) = self.offset_and_power(l);
        let (dh, ph) = self.offset_and_power(h);
        if dl.abs() > self.cfg.max_freq_dev || dh.abs() > self.cfg.max_freq_dev {
            return Err(Reject::Frequency(dl, dh));
        }
        if pl / n < self.min_power || ph / n < self.min_power {
            return Err(Reject::Level);
        }
        let twist = 10.0 * (ph / pl).log10();
        if twist > self.cfg.max_reverse_twist_db || -twist > self.cfg.max_normal_twist_db {
            return Err(Reject::Twist(twist));
        }
        if (pl + ph) < self.cfg.min_energy_ratio * e {
            return Err(Reject::Ratio((pl + ph) / e));
        }
        // Voiced speech carries harmonics; a keypad's sines do not.
        for (k, pk) in [(l, pl), (h, ph)] {
            let f2 = 2.0 * DTMF_HZ[k];
            // For keys 2, 6 and C the low tone's octave sits within 71 Hz of the high tone,
            // which a 12 ms block cannot separate: the check would reject the key itself.
            if f2 < 3900.0 && (f2 - DTMF_HZ[h]).abs() > 120.0 {
                let kern = &*KERNELS;
                let (re, im) = (
                    dot(&self.samples, &kern.harm_re[k]),
                    dot(&self.samples, &kern.harm_im[k]),
                );
                let p2 = 2.0 * (re * re + im * im) / n;
                if p2 > self.cfg.max_harmonic_ratio * pk {
                    return Err(Reject::Harmonic(p2 / pk));
                }
            }
        }
        let key = Digit::from_position(l, h - 4).ok_or(Reject::Silent)?;
        Ok(BlockHit {
            key,
            steady: (pl + ph) / n * SUB as f32,
        })
    }

    /// Relative frequency error of tone `k` (from the phase step between the block's halves)
    /// and its energy over the block, corrected for the window's roll-off at that offset.
    ///
    /// Measured with Hann windows: the rectangular window of the bank leaks a loud tone into
    /// the other group at −23 dB, which at 8 dB of twist moves the weak tone's apparent level
    /// by ±1.5 dB and its frequency by 1.5 %; Hann's sidelobes are 20 dB lower there.
    fn offset_and_power(&self, k: usize) -> (f32, f32) {
        let f = DTMF_HZ[k];
        let kern = &*KERNELS;
        // Two 64-sample windows 32 apart: long enough that the other group's tone falls
        // outside Hann's main lobe even for the closest pair (941/1209 Hz, 2.2 bins apart),
        // short enough that the phase step stays unambiguous to ±125 Hz.
        let (pre, pim) = (&kern.phase_re[k], &kern.phase_im[k]);
        let (a, b) = (&self.samples[..PHASE_WIN], &self.samples[PHASE_LAG..]);
        let (ar, ai) = (dot(a, pre), dot(a, pim));
        let (br, bi) = (dot(b, pre), dot(b, pim));
        let w = 2.0 * std::f32::consts::PI * f / RATE;
        let mut dphi = (bi * ar - br * ai).atan2(br * ar + bi * ai) - w * PHASE_LAG as f32;
        dphi = (dphi + std::f32::consts::PI).rem_euclid(2.0 * std::f32::consts::PI)
            - std::f32::consts::PI;
        let df = dphi * RATE / (2.0 * std::f32::consts::PI * PHASE_LAG as f32);
        let (fr, fi) = (
            dot(&self.samples, &kern.full_re[k]),
            dot(&self.samples, &kern.full_im[k]),
        );
        let amp = 2.0 * (fr * fr + fi * fi).sqrt() / kern.full_sum;
        // Hann's amplitude response δ bins off centre: sinc(δ) / (1 − δ²).
        let d = df * BLOCK as f32 / RATE;
        let x = std::f32::consts::PI * d;
        let sinc = if x.abs() < 1e-4 { 1.0 } else { x.sin() / x };
        let resp = (sinc / (1.0 - d * d).max(1e-3)).clamp(0.2, 1.0);
        let amp = amp / resp;
        (df / f, amp * amp / 2.0 * BLOCK as f32)
    }

    fn step(
        &mut self,
        block_start: u64,
        hit: Option<BlockHit>,
        on_digit: &mut dyn FnMut(DigitEvent),
    ) {
        self.state = match (self.state, hit) {
            (State::Idle, None) => State::Idle,
            (State::Idle, Some(h)) => State::Pending {
                key: h.key,
                first: block_start,
                steady: h.steady,
                missed: false,
            },
            (
                State::Pending {
                    key, first, steady, ..
                },
                Some(h),
            ) if h.key == key => State::Active {
                key,
                start: self.refine_onset(first, steady.max(h.steady)),
                last_hit: block_start,
                misses: 0,
                steady: steady.max(h.steady),
            },
            (State::Pending { .. }, Some(h)) => State::Pending {
                key: h.key,
                first: block_start,
                steady: h.steady,
                missed: false,
            },
            (
                State::Pending {
                    key,
                    first,
                    steady,
                    missed: false,
                },
                None,
            ) => State::Pending {
                key,
                first,
                steady,
                missed: true,
            },
            (State::Pending { .. }, None) => State::Idle,
            (
                State::Active {
                    key, start, steady, ..
                },
                Some(h),
            ) if h.key == key => State::Active {
                key,
                start,
                last_hit: block_start,
                misses: 0,
                steady,
            },
            (
                State::Active {
                    key,
                    start,
                    last_hit,
                    misses,
                    steady,
                },
                hit,
            ) => {
                // One missed block is a dropout bridged (Q.24: interruptions up to 10 ms);
                // two, or another key, end the tone.
                if hit.is_none() && misses == 0 {
                    State::Active {
                        key,
                        start,
                        last_hit,
                        misses: 1,
                        steady,
                    }
                } else {
                    let end = self.refine_end(last_hit, steady);
                    self.emit(key, start, end, on_digit);
                    match hit {
                        Some(h) => State::Pending {
                            key: h.key,
                            first: block_start,
                            steady: h.steady,
                            missed: false,
                        },
                        None => State::Idle,
                    }
                }
            }
        };
    }

    fn emit(&self, digit: Digit, start: u64, end: u64, on_digit: &mut dyn FnMut(DigitEvent)) {
        if end.saturating_sub(start) >= self.cfg.min_tone_samples {
            on_digit(DigitEvent { digit, start, end });
        }
    }

    fn hist_at(&self, sub: u64) -> Option<f32> {
        (sub < self.sub_index && sub + HIST as u64 >= self.sub_index)
            .then(|| self.hist[(sub % HIST as u64) as usize])
    }

    /// Energy of the 32 samples starting at sub-block `j`: long enough to hold a full beat
    /// of any two grid tones (the closest pair, 941 and 1209 Hz, beats every 30 samples).
    fn window_energy(&self, j: u64) -> Option<f32> {
        let mut e = 0.0;
        for i in j..j + 4 {
            e += self.hist_at(i)?;
        }
        Some(e)
    }

    /// First sample of the tone: walk back from inside the first matching block while the
    /// 32-sample energy holds half the tone's, then interpolate where it crossed half.
    fn refine_onset(&self, first: u64, steady: f32) -> u64 {
        let full = 4.0 * steady;
        let half = 0.5 * full;
        let mut j = first / SUB as u64 + BLOCK_SUBS as u64 - 4;
        let Some(mut wj) = self.window_energy(j) else {
            return first;
        };
        loop {
            match j.checked_sub(1).and_then(|p| self.window_energy(p)) {
                Some(w) if w >= half => {
                    j -= 1;
                    wj = w;
                }
                Some(w) => {
                    let frac = ((half - w) / (wj - w).max(1e-6)).clamp(0.0, 1.0);
                    let c = (j - 1) as f32 + frac;
                    return (c * SUB as f32 + 16.0).round().max(0.0) as u64;
                }
                None => return j * SUB as u64,
            }
        }
    }

    /// One past the tone's last sample, found forwards from the last matching block.
    fn refine_end(&self, last_hit: u64, steady: f32) -> u64 {
        let full = 4.0 * steady;
        let half = 0.5 * full;
        let mut j = last_hit / SUB as u64;
        let Some(mut wj) = self.window_energy(j) else {
            return last_hit + BLOCK as u64;
        };
        loop {
            match self.window_energy(j + 1) {
                Some(w) if w >= half => {
                    j += 1;
                    wj = w;
                }
                Some(w) => {
                    let frac = ((wj - half) / (wj - w).max(1e-6)).clamp(0.0, 1.0);
                    let c = j as f32 + frac;
                    return ((c * SUB as f32 + 16.0).round() as u64).min(self.pos);
                }
                None => return ((j + 4) * SUB as u64).min(self.pos),
            }
        }
    }

    /// Ends the stream: reports a digit still sounding at the last sample.
    pub fn finish(&mut self, on_digit: &mut dyn FnMut(DigitEvent)) {
        if let State::Active {
            key,
            start,
            last_hit,
            misses,
            steady,
        } = self.state
        {
            let end = if misses == 0 {
                self.pos
            } else {
                self.refine_end(last_hit, steady)
            };
            self.emit(key, start, end, on_digit);
        }
        self.state = State::Idle;
    }
}

/// Σ x[n]·w[n] over the shorter of the two, in eight interleaved partial sums so it
/// vectorises (float addition is not reassociated by the compiler on its own).
fn dot(x: &[i16], w: &[f32]) -> f32 {
    let n = x.len().min(w.len());
    let (x, w) = (&x[..n], &w[..n]);
    let mut acc = [0f32; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(&a, b)| f32::from(a) * b)
        .sum();
    for (a, b) in xc.zip(wc) {
        for ((s, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *s += f32::from(a) * b;
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn hann<const N: usize>() -> [f32; N] {
    let mut w = [0f32; N];
    for (n, v) in w.iter_mut().enumerate() {
        *v = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * (n as f32 + 0.5) / N as f32).cos();
    }
    w
}

/// Index of the first largest of four (the lowest index among equals), with no loop for the
/// compiler to turn into stores and reloads.
#[inline]
fn argmax4(v: [f32; 4]) -> usize {
    let (a, va) = if v[1] > v[0] { (1, v[1]) } else { (0, v[0]) };
    let (b, vb) = if v[3] > v[2] { (3, v[3]) } else { (2, v[2]) };
    if vb > va { b } else { a }
}

/// The largest of four, the value [`argmax4`] picks.
#[inline]
fn max4(v: [f32; 4]) -> f32 {
    let a = if v[1] > v[0] { v[1] } else { v[0] };
    let b = if v[3] > v[2] { v[3] } else { v[2] };
    if b > a { b } else { a }
}

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
    bank: Bank,
    /// The last three steps (a ring), frequency-major so window sums are whole-vector adds.
    win_re: [[f32; 8]; WIN_STEPS],
    win_im: [[f32; 8]; WIN_STEPS],
    win_energy: [f32; WIN_STEPS],
    /// Steps seen.
    steps: u64,
    /// Ring slot of the next step.
    slot: usize,
    pos: u64,
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
    fn finish_step(&mut self, t: &Terms) -> Step {
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
    fn take_mark(&mut self, at: u64) -> bool {
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
    fn take_marks16(&mut self, at: u64) -> u16 {
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

/// Feeds the same samples to the presence detector and the strict detector, computing each
/// 16-sample step's DFT terms once for both (DESIGN.md §4: two signals from one Goertzel
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
    use super::goertzel::step_terms_avx2;
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
        finish_both(presence, strict, &t, on_digit);
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
    t: &Terms,
    on_digit: &mut dyn FnMut(DigitEvent),
) {
    if presence.bank.in_phase_with(&strict.bank) {
        let st = presence.finish_step(t);
        strict.finish_rotated(&st, on_digit);
    } else {
        presence.finish_step(t);
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
            let t = step_terms(presence.bank.pending());
            finish_both(presence, strict, &t, on_digit);
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
    use crate::dsp::goertzel::DBM0_PEAK;

    /// A key at `dbm0` per tone for `len` samples after `lead` samples of silence, with a trail.
    fn key(d: Digit, dbm0: f32, lead: usize, len: usize, trail: usize) -> Vec<i16> {
        let (lo, hi) = d.freqs();
        let a = DBM0_PEAK * 10f32.powf(dbm0 / 20.0);
        let mut v = vec![0i16; lead];
        for i in 0..len {
            let t = i as f32 / 8000.0;
            let x = a
                * ((2.0 * std::f32::consts::PI * lo * t + 0.7).sin()
                    + (2.0 * std::f32::consts::PI * hi * t + 2.1).sin());
            v.push(x.round().clamp(-32768.0, 32767.0) as i16);
        }
        v.extend(std::iter::repeat_n(0, trail));
        v
    }

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

    #[test]
    fn strict_detector_reports_each_key_once_with_its_span() {
        let mut audio = Vec::new();
        let mut truth = Vec::new();
        for (i, &d) in Digit::ALL.iter().enumerate() {
            let lead = 320 + i * 7;
            let start = audio.len() + lead;
            audio.extend(key(d, -20.0, lead, 400 + i * 3, 0));
            truth.push((d, start as u64, audio.len() as u64));
        }
        audio.extend(std::iter::repeat_n(0, 400));
        let mut det = DtmfDetector::new(DetectorConfig::default());
        let mut got = Vec::new();
        det.process(&audio, &mut |e| got.push(e));
        det.finish(&mut |e| got.push(e));
        assert_eq!(
            got.len(),
            16,
            "{:?}",
            got.iter()
                .map(|e| (e.digit.reveal(), e.start, e.end))
                .collect::<Vec<_>>()
        );
        for (e, (d, s, t)) in got.iter().zip(truth) {
            assert_eq!(e.digit, d);
            assert!(e.start.abs_diff(s) <= 8, "{d:?}: start {} vs {s}", e.start);
            assert!(e.end.abs_diff(t) <= 8, "{d:?}: end {} vs {t}", e.end);
        }
    }

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
        assert!(
            masked > 0 && base_found.len() >= 8,
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
