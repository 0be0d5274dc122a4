//! The Goertzel front end shared by the DTMF detectors: complex DFT terms at a fixed set of
//! frequencies over 16-sample steps, phase-referenced to the absolute sample index so that
//! steps can be summed into windows of any length and their phases compared over time.
//! Pure arithmetic: no allocation, no I/O.

/// Sample rate of everything in `dsp`.
pub const RATE: f32 = 8000.0;
/// Sub-block length (1 ms): the resolution of the energies the strict detector refines a
/// tone's edges with.
pub const SUB: usize = 8;
/// Step length (2 ms): the unit the terms are computed over and both detectors work in. The
/// presence detector tests its window every step; computing each step's terms in one go, where
/// two sub-blocks' terms were phase-referenced and summed, halves the rotations and the calls.
pub const STEP: usize = 2 * SUB;
/// The DTMF grid (ITU-T Q.23): four low-group then four high-group frequencies.
pub const DTMF_HZ: [f32; 8] = [697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0];

/// Peak amplitude of a 0 dBm0 sine in 16-bit linear PCM (G.711's digital milliwatt is
/// 3.17 dB below μ-law full scale, ITU-T G.711 Table 5).
pub const DBM0_PEAK: f32 = 22_686.0;

/// Mean power (per sample) of a sine at `dbm0`.
pub fn dbm0_power(dbm0: f32) -> f32 {
    DBM0_PEAK * DBM0_PEAK / 2.0 * 10f32.powf(dbm0 / 10.0)
}

/// Level in dBm0 of a mean per-sample power.
pub fn power_dbm0(power: f32) -> f32 {
    10.0 * (power.max(1e-9) / dbm0_power(0.0)).log10()
}

/// DFT terms of one step at the bank's frequencies, plus the energies of its two sub-blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Step {
    pub re: [f32; 8],
    pub im: [f32; 8],
    /// Sum of squared samples of each sub-block.
    pub energy: [f32; 2],
}

impl Step {
    /// Sum of squared samples of the whole step.
    pub fn energy(&self) -> f32 {
        self.energy[0] + self.energy[1]
    }
}

/// Step DFT terms before phase referencing: `c[k] = Σ x[m]·cos(ω_k m)`,
/// `s[k] = Σ x[m]·sin(ω_k m)` over the step's 16 samples, and its sub-blocks' energies. They
/// depend only on the samples, so two detectors fed the same step share one computation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Terms {
    pub c: [f32; 8],
    pub s: [f32; 8],
    pub energy: [f32; 2],
}

/// Steps after which every grid frequency is back in phase: each is a whole number of hertz
/// and a step lasts 2 ms, so e^{-jω_k·16b} repeats every 500 steps.
const PERIOD: usize = 500;
// Whole-hertz frequencies come back in phase after one second of steps.
const _: () = assert!(RATE as usize / STEP == PERIOD);

/// e^{-jω_k n0} at the start n0 = 16b of step b, one cache line per step.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Phasor {
    re: [f32; 8],
    im: [f32; 8],
}

/// The DTMF grid's cos/sin tables, laid out pair-major so the inner loop runs across the eight
/// frequencies at once, and the phase of every step of a period. A lookup replaces a running
/// complex recurrence: it is exact (no drift to correct over hours of audio), keeps no per-call
/// state, and costs a fraction of the arithmetic. One copy for the process: per-detector copies would cost cache
/// per call.
struct Tables {
    /// cos(ω_k m) and sin(ω_k m) in fixed point (`COEF_SCALE`), for pair `j` of the step's
    /// samples interleaved as [k=0: m=2j, m=2j+1; k=1: …], the layout of a multiply-add of
    /// adjacent 16-bit pairs (x86 `pmaddwd`, which `step_terms_avx2` uses).
    cos: [[i16; 16]; STEP / 2],
    sin: [[i16; 16]; STEP / 2],
    phase: [Phasor; PERIOD],
}

/// Fixed-point scale of the step coefficients (Q12, ±4095): 16 full-scale samples times the
/// largest coefficient stay inside an i32 (16 · 32768 · 4095 < 2³¹), so the sums are exact
/// integers and cannot overflow whatever the input. The coefficients' rounding (±1/8190) puts
/// an error 78 dB under the samples' own level into the terms, far below anything the
/// detectors' thresholds tell apart (the narrowest is G.711's own quantisation, ~38 dB).
const COEF_SCALE: f32 = 4095.0;

static TABLES: std::sync::LazyLock<Box<Tables>> = std::sync::LazyLock::new(tables);

// Parallel fixed-size arrays indexed by frequency and sample.
#[allow(clippy::needless_range_loop)]
fn tables() -> Box<Tables> {
    let mut t = Box::new(Tables {
        cos: [[0; 16]; STEP / 2],
        sin: [[0; 16]; STEP / 2],
        phase: [Phasor {
            re: [0.0; 8],
            im: [0.0; 8],
        }; PERIOD],
    });
    for k in 0..8 {
        let hz = f64::from(DTMF_HZ[k]);
        let w = 2.0 * std::f64::consts::PI * hz / f64::from(RATE);
        for m in 0..STEP {
            let q = |v: f64| (v * f64::from(COEF_SCALE)).round() as i16;
            t.cos[m / 2][2 * k + m % 2] = q((w * m as f64).cos());
            t.sin[m / 2][2 * k + m % 2] = q((w * m as f64).sin());
        }
        for (b, p) in t.phase.iter_mut().enumerate() {
            // The angle reduced exactly (in whole cycles) before the sine, so every entry is
            // as accurate as f32 allows.
            let cycles = (hz as u64 * b as u64) % PERIOD as u64;
            let a = 2.0 * std::f64::consts::PI * cycles as f64 / PERIOD as f64;
            p.re[k] = a.cos() as f32;
            p.im[k] = -a.sin() as f32;
        }
    }
    t
}

/// Local DFT terms of one 16-sample step at the DTMF grid.
// Parallel fixed-size arrays indexed by frequency: plain indexing reads clearest here and the
// bounds are compile-time constants, so it vectorises.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
pub fn step_terms(x: &[i16; STEP]) -> Terms {
    let t = &*TABLES;
    // Integer sums: exact, so their order is free and every build (and vector width) gets the
    // same terms to the bit, and a pair of samples is one multiply-add per eight frequencies.
    let (mut c, mut s) = ([0i32; 8], [0i32; 8]);
    for (j, (cr, sr)) in t.cos.iter().zip(&t.sin).enumerate() {
        let (a, b) = (i32::from(x[2 * j]), i32::from(x[2 * j + 1]));
        for k in 0..8 {
            c[k] += a * i32::from(cr[2 * k]) + b * i32::from(cr[2 * k + 1]);
            s[k] += a * i32::from(sr[2 * k]) + b * i32::from(sr[2 * k + 1]);
        }
    }
    terms_from_sums(x, c, s)
}

/// The terms as floats, and the step's sub-block energies (which stay in floating point: the
/// detectors' level and quiet tests compare them with thresholds, and squares overflow i32).
#[inline(always)]
fn terms_from_sums(x: &[i16; STEP], c: [i32; 8], s: [i32; 8]) -> Terms {
    // Each sub-block's squares summed as a tree, halves first: whole-vector adds, where a
    // running sum is a chain of dependent ones and the samples went through scalar registers.
    let sq = x.map(|v| f32::from(v) * f32::from(v));
    let energy: [f32; 2] = std::array::from_fn(|h| {
        let b = &sq[h * SUB..h * SUB + SUB];
        let q: [f32; 4] = std::array::from_fn(|i| b[i] + b[i + 4]);
        (q[0] + q[2]) + (q[1] + q[3])
    });
    Terms {
        c: c.map(|v| v as f32 * (1.0 / COEF_SCALE)),
        s: s.map(|v| v as f32 * (1.0 / COEF_SCALE)),
        energy,
    }
}

/// [`step_terms`] with AVX2: each pair of samples is broadcast and multiplied into the eight
/// frequencies' sums by one `pmaddwd` for the cosines and one for the sines, which the
/// compiler does not find on its own. Integer sums are exact, so the terms are those of
/// [`step_terms`] to the bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn step_terms_avx2(x: &[i16; STEP]) -> Terms {
    use std::arch::x86_64::{
        __m128, __m256, __m256i, _mm_add_ps, _mm_add_ss, _mm_movehl_ps, _mm_setr_epi16,
        _mm_shuffle_ps, _mm256_add_epi32, _mm256_castps256_ps128, _mm256_cvtepi16_epi32,
        _mm256_cvtepi32_ps, _mm256_extractf128_ps, _mm256_madd_epi16, _mm256_mul_ps,
        _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_si256,
    };
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load(v: &[i16; 16]) -> __m256i {
        std::arch::x86_64::_mm256_setr_epi16(
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13],
            v[14], v[15],
        )
    }
    /// Σ of a sub-block's squares in [`terms_from_sums`]'s order: halves, then pairs.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn energy(x: &[i16]) -> f32 {
        let v = _mm_setr_epi16(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]);
        let f = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(v));
        let sq = _mm256_mul_ps(f, f);
        let q: __m128 = _mm_add_ps(_mm256_castps256_ps128(sq), _mm256_extractf128_ps::<1>(sq));
        let r = _mm_add_ps(q, _mm_movehl_ps(q, q));
        std::arch::x86_64::_mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps::<1>(r, r)))
    }
    let t = &*TABLES;
    let (mut c, mut s) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for (j, (cr, sr)) in t.cos.iter().zip(&t.sin).enumerate() {
        // Samples 2j and 2j + 1 (one 32-bit lane) in every lane.
        let pair = (u32::from(x[2 * j] as u16) | u32::from(x[2 * j + 1] as u16) << 16) as i32;
        let pair = _mm256_set1_epi32(pair);
        c = _mm256_add_epi32(c, _mm256_madd_epi16(pair, load(cr)));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(pair, load(sr)));
    }
    let scale = _mm256_set1_ps(1.0 / COEF_SCALE);
    let (c, s): (__m256, __m256) = (
        _mm256_mul_ps(_mm256_cvtepi32_ps(c), scale),
        _mm256_mul_ps(_mm256_cvtepi32_ps(s), scale),
    );
    Terms {
        // SAFETY: __m256 and [f32; 8] have the same size, and any bits are a valid f32.
        c: unsafe { std::mem::transmute::<__m256, [f32; 8]>(c) },
        // SAFETY: as above.
        s: unsafe { std::mem::transmute::<__m256, [f32; 8]>(s) },
        energy: [energy(&x[..SUB]), energy(&x[SUB..])],
    }
}

/// Complex DFT terms at the eight DTMF frequencies over consecutive 16-sample steps.
///
/// Term k of a step starting at absolute sample n0 is Σ x[n]·e^{-jω_k n} over the step's
/// samples, so summing consecutive steps gives the DFT term of the longer window with a
/// consistent phase reference.
#[derive(Clone, Debug)]
pub struct Bank {
    buf: [i16; STEP],
    fill: usize,
    steps: u64,
    /// `steps` modulo the phase period: the current step's row of the phase table.
    phase: usize,
}

impl Default for Bank {
    fn default() -> Self {
        Bank::new()
    }
}

impl Bank {
    pub fn new() -> Bank {
        Bank {
            buf: [0; STEP],
            fill: 0,
            steps: 0,
            phase: 0,
        }
    }

    /// Index of the next step to complete.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Samples of the current step received so far (0..16).
    pub fn fill(&self) -> usize {
        self.fill
    }

    /// Feeds one sample; returns the step it completes, if any.
    #[inline]
    pub fn push(&mut self, x: i16) -> Option<Step> {
        if self.stage(x) {
            let t = step_terms(&self.buf);
            Some(self.rotate(&t))
        } else {
            None
        }
    }

    /// Buffers one sample; true when it completes a step, whose samples are then in
    /// [`Bank::pending`] until the next call and must be turned into terms and [`Bank::rotate`]d.
    #[inline]
    pub fn stage(&mut self, x: i16) -> bool {
        // `fill` is always below STEP here; the mask keeps the index provably in range.
        self.buf[self.fill & (STEP - 1)] = x;
        self.fill += 1;
        if self.fill < STEP {
            return false;
        }
        self.fill = 0;
        true
    }

    /// The samples of the step just completed by [`Bank::stage`].
    pub fn pending(&self) -> &[i16; STEP] {
        &self.buf
    }

    /// Whether `other` is at the same point of the phase period: then both reference their
    /// steps alike and one [`Bank::rotate`] serves both.
    pub fn in_phase_with(&self, other: &Bank) -> bool {
        self.phase == other.phase
    }

    /// Phase-references the local terms of the next step to the absolute sample index.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    pub fn rotate(&mut self, t: &Terms) -> Step {
        let ph = TABLES.phase.get(self.phase).copied().unwrap_or(Phasor {
            re: [1.0; 8],
            im: [0.0; 8],
        });
        let mut out = Step {
            energy: t.energy,
            ..Step::default()
        };
        for k in 0..8 {
            // (pr + j·pi)(c − j·s), with pr + j·pi = e^{-jω n0}.
            let (pr, pi) = (ph.re[k], ph.im[k]);
            out.re[k] = pr * t.c[k] + pi * t.s[k];
            out.im[k] = pi * t.c[k] - pr * t.s[k];
        }
        self.skip();
        out
    }

    /// Moves on one step without computing its terms (another bank in phase did).
    #[inline]
    pub fn skip(&mut self) {
        self.steps += 1;
        self.phase += 1;
        if self.phase == PERIOD {
            self.phase = 0;
        }
    }
}

/// Power of a single frequency over `samples` by the classic Goertzel recurrence, used for
/// the occasional check (second harmonics) that does not need a running bank.
pub fn goertzel_power(samples: &[f32], freq: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / RATE;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How far the fixed-point coefficients can move a term over `x`: each is within half a
    /// step of its true value, so the sum is within Σ|x|/2 steps (a phase rotation keeps the
    /// bound), plus a little for the float arithmetic after.
    fn quantisation_bound(x: &[i16]) -> f64 {
        let sum: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
        sum * 0.5 / f64::from(COEF_SCALE) + 1.0
    }

    #[test]
    fn fixed_point_sums_cannot_overflow() {
        // The largest |Σ x·coef| a step can reach: full-scale samples with the coefficients' signs.
        let t = &*TABLES;
        for rows in [&t.cos, &t.sin] {
            for f in 0..8 {
                let worst: i64 = rows
                    .iter()
                    .map(|r| 32768 * (i64::from(r[2 * f]).abs() + i64::from(r[2 * f + 1]).abs()))
                    .sum();
                assert!(worst <= i64::from(i32::MAX), "frequency {f}: {worst}");
            }
        }
        // Such a step, built for the 697 Hz cosine, gives the float DFT's term.
        let w = 2.0 * std::f64::consts::PI * f64::from(DTMF_HZ[0]) / 8000.0;
        let x: [i16; STEP] = std::array::from_fn(|m| {
            if (w * m as f64).cos() >= 0.0 {
                i16::MAX
            } else {
                i16::MIN
            }
        });
        let want: f64 = x
            .iter()
            .enumerate()
            .map(|(m, &v)| f64::from(v) * (w * m as f64).cos())
            .sum();
        let got = f64::from(step_terms(&x).c[0]);
        assert!(
            (got - want).abs() < quantisation_bound(&x),
            "{got} vs {want}"
        );
    }

    fn sine(f: f32, amp: f32, n: usize, phase: f32) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f32::consts::PI * f * i as f32 / RATE + phase).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn summed_steps_equal_the_direct_dft() {
        let x = sine(770.0, 8000.0, 96, 0.3);
        let mut bank = Bank::new();
        let (mut re, mut im) = ([0f32; 8], [0f32; 8]);
        for &s in &x {
            if let Some(b) = bank.push(s) {
                for k in 0..8 {
                    re[k] += b.re[k];
                    im[k] += b.im[k];
                }
            }
        }
        for k in 0..8 {
            let w = 2.0 * std::f64::consts::PI * f64::from(DTMF_HZ[k]) / 8000.0;
            let (mut dr, mut di) = (0.0f64, 0.0f64);
            for (n, &s) in x.iter().enumerate() {
                dr += f64::from(s) * (w * n as f64).cos();
                di -= f64::from(s) * (w * n as f64).sin();
            }
            assert!(
                (f64::from(re[k]) - dr).abs() < quantisation_bound(&x) + dr.abs() * 1e-4,
                "k={k}"
            );
            assert!(
                (f64::from(im[k]) - di).abs() < quantisation_bound(&x) + di.abs() * 1e-4,
                "k={k}"
            );
        }
        // A sine of amplitude a gives |X| = a·N/2 at its own frequency.
        let mag = (re[1] * re[1] + im[1] * im[1]).sqrt();
        assert!((mag / (8000.0 * 48.0) - 1.0).abs() < 0.01, "{mag}");
    }

    #[test]
    fn phase_advances_by_the_frequency_offset() {
        // A tone 1 % above 941 Hz rotates the 941 Hz term by 2π·9.41·48/8000 per 48 samples.
        let x = sine(941.0 * 1.01, 8000.0, 960, 1.0);
        let mut bank = Bank::new();
        let mut halves = Vec::new();
        let (mut re, mut im) = (0f32, 0f32);
        for &s in &x {
            if let Some(b) = bank.push(s) {
                re += b.re[3];
                im += b.im[3];
                if bank.steps().is_multiple_of(3) {
                    halves.push((re, im));
                    (re, im) = (0.0, 0.0);
                }
            }
        }
        let expect = 2.0 * std::f32::consts::PI * 9.41 * 48.0 / 8000.0;
        let mut sum = 0.0;
        for w in halves.windows(2) {
            let (a, b) = (w[0], w[1]);
            let d = (b.1 * a.0 - b.0 * a.1).atan2(b.0 * a.0 + b.1 * a.1);
            // The negative-frequency image leaks a few hundredths of a radian (about 1.5 Hz).
            assert!((d - expect).abs() < 0.08, "{d} vs {expect}");
            sum += d;
        }
        let mean = sum / (halves.len() - 1) as f32;
        assert!((mean - expect).abs() < 0.01, "{mean} vs {expect}");
    }

    #[test]
    fn phase_stays_exact_over_hours() {
        // Step b of a sine that started at sample 0, after ~3 hours (5.4 M steps): the table's
        // phase must match the direct DFT referenced to the absolute index.
        let mut bank = Bank::new();
        let skip = 5_400_123u64;
        for _ in 0..skip {
            bank.skip();
        }
        let f = DTMF_HZ[6];
        let n0 = skip * STEP as u64;
        let x: Vec<i16> = (0..STEP as u64)
            .map(|m| {
                let cyc = ((f64::from(f) * (n0 + m) as f64) / 8000.0).fract();
                (8000.0 * (2.0 * std::f64::consts::PI * cyc).cos()) as i16
            })
            .collect();
        let mut got = None;
        for &s in &x {
            got = bank.push(s).or(got);
        }
        let b = got.expect("a whole step");
        let w = 2.0 * std::f64::consts::PI * f64::from(f) / 8000.0;
        let (mut dr, mut di) = (0.0f64, 0.0f64);
        for (m, &s) in x.iter().enumerate() {
            let a = (w * (n0 + m as u64) as f64).rem_euclid(2.0 * std::f64::consts::PI);
            dr += f64::from(s) * a.cos();
            di -= f64::from(s) * a.sin();
        }
        assert!(
            (f64::from(b.re[6]) - dr).abs() < quantisation_bound(&x) + dr.abs() * 1e-4,
            "{} vs {dr}",
            b.re[6]
        );
        assert!(
            (f64::from(b.im[6]) - di).abs() < quantisation_bound(&x) + di.abs() * 1e-4,
            "{} vs {di}",
            b.im[6]
        );
    }

    #[test]
    fn goertzel_power_peaks_at_its_frequency() {
        let x: Vec<f32> = sine(1336.0, 1000.0, 96, 0.0)
            .into_iter()
            .map(f32::from)
            .collect();
        let on = goertzel_power(&x, 1336.0);
        let off = goertzel_power(&x, 1633.0);
        assert!((on.sqrt() / (1000.0 * 48.0) - 1.0).abs() < 0.02);
        assert!(off < on / 100.0);
    }

    #[test]
    fn dbm0_conversions_are_inverse() {
        for l in [-55.0, -36.0, 0.0, 3.0] {
            assert!((power_dbm0(dbm0_power(l)) - l).abs() < 1e-3);
        }
    }
}
