//! The strict detector: a Q.24 digit decision for capture and scan. It sums the 16-sample steps
//! into 96-sample blocks (12 ms) and measures each tone's frequency from the phase advance
//! between the block's halves, which is what lets it accept ±1.5 % and reject ±3.5 % with a
//! block far too short to resolve that by magnitude alone.

use super::simd::{argmax4, dot};
use crate::digit::Digit;
use crate::dsp::goertzel::{Bank, DTMF_HZ, RATE, STEP, SUB, Step, Terms, dbm0_power, step_terms};

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
            // Measured on 70 minutes of real speech and music in ten languages: 0.70 let 21
            // vowels through as keys, 0.85 lets 4; keys 20 dB over speech are still captured
            // exactly and Q.24's 15 dB SNR in white noise is still met.
            min_energy_ratio: 0.85,
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
    pub(super) bank: Bank,
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
    /// Where the audio was last joined out of time (see [`DtmfDetector::splice`]).
    splice_at: Option<u64>,
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
            splice_at: None,
        }
    }

    /// Says that the next sample does not follow the last one in time (a lost, late or
    /// reordered packet). The block over the join measures the jump, not a key or its absence,
    /// and could read as a neighbouring key: it neither confirms, continues nor ends one, so a
    /// key spliced from pieces is still one key.
    pub fn splice(&mut self) {
        self.splice_at = Some(self.pos);
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
    pub(super) fn stage(&mut self, x: i16) -> bool {
        let at = self.steps_in_block * STEP + self.bank.fill();
        if let Some(slot) = self.samples.get_mut(at) {
            *slot = x;
        }
        self.pos += 1;
        self.bank.stage(x)
    }

    /// Takes a whole step at once; only at a step boundary (`bank.fill() == 0`).
    #[inline]
    pub(super) fn stage_step(&mut self, x: &[i16]) {
        let at = self.steps_in_block * STEP;
        if let Some(dst) = self.samples.get_mut(at..at + STEP) {
            dst.copy_from_slice(x);
        }
        self.pos += STEP as u64;
    }

    #[inline(always)]
    pub(super) fn finish_step(&mut self, t: &Terms, on_digit: &mut dyn FnMut(DigitEvent)) {
        let st = self.bank.rotate(t);
        self.on_step(&st, on_digit);
    }

    /// The same, with the step already phase-referenced by a bank in phase with ours.
    #[inline(always)]
    pub(super) fn finish_rotated(&mut self, st: &Step, on_digit: &mut dyn FnMut(DigitEvent)) {
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
        if self
            .splice_at
            .is_some_and(|at| block_start < at && at < self.pos)
        {
            return;
        }
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

fn hann<const N: usize>() -> [f32; N] {
    let mut w = [0f32; N];
    for (n, v) in w.iter_mut().enumerate() {
        *v = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * (n as f32 + 0.5) / N as f32).cos();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::dtmf::testkit::key;

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
    fn a_key_joined_from_pieces_is_one_key() {
        // Reordered packets at a 10 ms ptime: a key's audio arrives in pieces of 80 samples,
        // two of them swapped, so three joins lie within 160 samples and the blocks over
        // them read neither this key nor silence.
        let d = Digit::from_char('7').unwrap();
        let whole = key(d, -15.0, 400, 800, 800);
        for swap_at in (480..1040).step_by(80) {
            let mut order: Vec<usize> = (0..whole.len() / 80).collect();
            order.swap(swap_at / 80, swap_at / 80 + 1);
            let mut det = DtmfDetector::new(DetectorConfig::default());
            let mut got = Vec::new();
            let mut last = None;
            for &p in &order {
                if last.is_some_and(|l| l + 1 != p) {
                    det.splice();
                }
                last = Some(p);
                det.process(&whole[p * 80..p * 80 + 80], &mut |e| got.push(e));
            }
            det.finish(&mut |e| got.push(e));
            assert_eq!(got.len(), 1, "packets {swap_at} swapped");
            assert_eq!(got[0].digit, d);
        }
    }
}
