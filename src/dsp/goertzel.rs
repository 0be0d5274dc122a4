//! The Goertzel front end shared by the DTMF detectors: complex DFT terms at a fixed set of
//! frequencies over 8-sample sub-blocks, phase-referenced to the absolute sample index so that
//! sub-blocks can be summed into windows of any length and their phases compared over time.
//! Pure arithmetic: no allocation, no I/O.

/// Sample rate of everything in `dsp`.
pub const RATE: f32 = 8000.0;
/// Sub-block length: the unit of time of both detectors (1 ms).
pub const SUB: usize = 8;
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

/// DFT terms of one sub-block at the bank's frequencies, plus its energy.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubBlock {
    pub re: [f32; 8],
    pub im: [f32; 8],
    /// Sum of squared samples.
    pub energy: f32,
}

/// Complex DFT terms at eight frequencies over consecutive 8-sample sub-blocks.
///
/// Term k of a sub-block starting at absolute sample n0 is Σ x[n]·e^{-jω_k n} over the
/// sub-block's samples, so summing consecutive sub-blocks gives the DFT term of the longer
/// window with a consistent phase reference.
#[derive(Clone, Debug)]
pub struct Bank {
    /// Tables laid out sample-major (`cos[m][k]`) so the inner loop runs across the eight
    /// frequencies at once and the compiler can keep them in vector registers.
    cos: [[f32; 8]; SUB],
    sin: [[f32; 8]; SUB],
    /// e^{-jω n0} for the current sub-block, kept in f64 so hours of audio do not drift.
    pr: [f64; 8],
    pi: [f64; 8],
    step_r: [f64; 8],
    step_i: [f64; 8],
    buf: [f32; SUB],
    fill: usize,
    blocks: u64,
}

impl Bank {
    pub fn new(freqs: [f32; 8]) -> Bank {
        let mut cos = [[0.0; 8]; SUB];
        let mut sin = [[0.0; 8]; SUB];
        let mut step_r = [1.0; 8];
        let mut step_i = [0.0; 8];
        for k in 0..8 {
            let w = 2.0 * std::f64::consts::PI * f64::from(freqs[k]) / f64::from(RATE);
            for m in 0..SUB {
                cos[m][k] = (w * m as f64).cos() as f32;
                sin[m][k] = (w * m as f64).sin() as f32;
            }
            step_r[k] = (w * SUB as f64).cos();
            step_i[k] = -(w * SUB as f64).sin();
        }
        Bank {
            cos,
            sin,
            pr: [1.0; 8],
            pi: [0.0; 8],
            step_r,
            step_i,
            buf: [0.0; SUB],
            fill: 0,
            blocks: 0,
        }
    }

    /// Index of the next sub-block to complete.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Feeds one sample; returns the sub-block it completes, if any.
    #[inline]
    pub fn push(&mut self, x: i16) -> Option<SubBlock> {
        self.buf[self.fill] = f32::from(x);
        self.fill += 1;
        if self.fill < SUB {
            return None;
        }
        self.fill = 0;
        Some(self.finish_block())
    }

    // Parallel fixed-size arrays indexed by frequency: plain indexing reads clearest here and
    // the bounds are compile-time constants, so it vectorises.
    #[allow(clippy::needless_range_loop)]
    fn finish_block(&mut self) -> SubBlock {
        let x = self.buf;
        let mut c = [0f32; 8];
        let mut s = [0f32; 8];
        let mut energy = 0.0;
        for m in 0..SUB {
            let v = x[m];
            energy += v * v;
            for k in 0..8 {
                c[k] += v * self.cos[m][k];
                s[k] += v * self.sin[m][k];
            }
        }
        let mut out = SubBlock {
            energy,
            ..SubBlock::default()
        };
        for k in 0..8 {
            // (pr + j·pi)(c − j·s), with pr + j·pi = e^{-jω n0}.
            let (pr, pi) = (self.pr[k] as f32, self.pi[k] as f32);
            out.re[k] = pr * c[k] + pi * s[k];
            out.im[k] = pi * c[k] - pr * s[k];
            let (a, b) = (self.pr[k], self.pi[k]);
            self.pr[k] = a * self.step_r[k] - b * self.step_i[k];
            self.pi[k] = a * self.step_i[k] + b * self.step_r[k];
        }
        self.blocks += 1;
        if self.blocks.is_multiple_of(1024) {
            for k in 0..8 {
                let n = (self.pr[k] * self.pr[k] + self.pi[k] * self.pi[k]).sqrt();
                self.pr[k] /= n;
                self.pi[k] /= n;
            }
        }
        out
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

    fn sine(f: f32, amp: f32, n: usize, phase: f32) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f32::consts::PI * f * i as f32 / RATE + phase).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn summed_sub_blocks_equal_the_direct_dft() {
        let x = sine(770.0, 8000.0, 96, 0.3);
        let mut bank = Bank::new(DTMF_HZ);
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
                (f64::from(re[k]) - dr).abs() < 1.0 + dr.abs() * 1e-4,
                "k={k}"
            );
            assert!(
                (f64::from(im[k]) - di).abs() < 1.0 + di.abs() * 1e-4,
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
        let mut bank = Bank::new(DTMF_HZ);
        let mut halves = Vec::new();
        let (mut re, mut im) = (0f32, 0f32);
        for &s in &x {
            if let Some(b) = bank.push(s) {
                re += b.re[3];
                im += b.im[3];
                if bank.blocks().is_multiple_of(6) {
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
