//! FFT (rustfft) analysis for the auditor's `scan`: a decoder independent of the Goertzel
//! detector, and a sensitive residue scanner that reports any fragment of dual-tone energy.
//!
//! Independence is the point: the relay's detector (`dsp::dtmf`, Goertzel) is what is being
//! audited, so nothing here calls it. Both analyses are windowed, zero-padded FFT frames whose
//! buffers are planned once per call; no allocation happens per frame.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::digit::{Digit, HIGH_FREQS, LOW_FREQS};

const FS: f64 = 8000.0;
/// Peak amplitude of a 0 dBm0 sine in 16-bit linear PCM: G.711's digital milliwatt sits 3.17 dB
/// below the μ-law full-scale sine (ITU-T G.711 Table 5).
const DBM0_PEAK: f64 = 22_686.0;

/// A digit decoded by the FFT decoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FoundDigit {
    pub digit: Digit,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// A fragment of dual-tone energy on the DTMF grid, however short.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Residue {
    pub start_ms: f64,
    pub end_ms: f64,
    pub low_hz: f64,
    pub high_hz: f64,
    pub level_dbm0: f64,
}

fn dbm0(amp: f64) -> f64 {
    20.0 * (amp.max(1e-9) / DBM0_PEAK).log10()
}

#[cfg(test)]
fn amp_of(dbm0: f64) -> f64 {
    DBM0_PEAK * 10f64.powf(dbm0 / 20.0)
}

fn ms(sample: f64) -> f64 {
    sample * 1000.0 / FS
}

/// Periodic Hann window: symmetric about its centre sample, so a tone edge at the centre gives
/// exactly half the full-window magnitude (what the edge search relies on).
fn hann(len: usize) -> Vec<f32> {
    (0..len)
        .map(|n| {
            let x = std::f64::consts::PI * 2.0 * n as f64 / len as f64;
            (0.5 - 0.5 * x.cos()) as f32
        })
        .collect()
}

/// A spectral peak: interpolated frequency and the amplitude of the sine that would produce it.
#[derive(Clone, Copy, Debug)]
struct Peak {
    bin: usize,
    freq: f64,
    amp: f64,
}

/// One windowed, zero-padded FFT of a frame of audio; all buffers allocated once.
struct Analyzer {
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    window_sum: f64,
    window_sq: f64,
    buf: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    /// One-sided power spectrum, `n_fft / 2 + 1` bins.
    power: Vec<f64>,
    bin_hz: f64,
}

impl Analyzer {
    fn new(win_len: usize, n_fft: usize) -> Analyzer {
        let fft = FftPlanner::new().plan_fft_forward(n_fft);
        let window = hann(win_len);
        let window_sum = window.iter().map(|&w| f64::from(w)).sum();
        let window_sq = window.iter().map(|&w| f64::from(w) * f64::from(w)).sum();
        let scratch = vec![Complex::new(0.0, 0.0); fft.get_inplace_scratch_len()];
        Analyzer {
            fft,
            window,
            window_sum,
            window_sq,
            buf: vec![Complex::new(0.0, 0.0); n_fft],
            scratch,
            power: vec![0.0; n_fft / 2 + 1],
            bin_hz: FS / n_fft as f64,
        }
    }

    /// Spectrum of `audio[start..start + window]` (zeros past the end, mean removed so a DC
    /// offset is not counted as energy). Returns the total one-sided power.
    fn analyze(&mut self, audio: &[i16], start: usize) -> f64 {
        self.analyze_range(audio, start, start.saturating_add(self.window.len()))
    }

    /// Like [`Analyzer::analyze`] for the window starting at `start`, with samples at or after
    /// `end` taken as zeros.
    fn analyze_range(&mut self, audio: &[i16], start: usize, end: usize) -> f64 {
        let end = end
            .min(start.saturating_add(self.window.len()))
            .min(audio.len());
        let seg = audio.get(start..end).unwrap_or(&[]);
        let mean = if seg.is_empty() {
            0.0
        } else {
            seg.iter().map(|&s| f32::from(s)).sum::<f32>() / seg.len() as f32
        };
        for (i, b) in self.buf.iter_mut().enumerate() {
            let v = match (seg.get(i), self.window.get(i)) {
                (Some(&s), Some(&w)) => (f32::from(s) - mean) * w,
                _ => 0.0,
            };
            *b = Complex::new(v, 0.0);
        }
        self.fft
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        let mut total = 0.0;
        for (p, c) in self.power.iter_mut().zip(&self.buf) {
            *p = f64::from(c.norm_sqr());
            total += *p;
        }
        total
    }

    /// Strongest local maximum between `lo_hz` and `hi_hz`; `None` when the largest value sits on
    /// a slope (the energy belongs to something outside the band).
    fn peak(&self, lo_hz: f64, hi_hz: f64) -> Option<Peak> {
        let k0 = ((lo_hz / self.bin_hz).floor() as usize).max(1);
        let k1 = ((hi_hz / self.bin_hz).ceil() as usize).min(self.power.len() - 2);
        let mut k = k0;
        for i in k0..=k1 {
            if self.power[i] > self.power[k] {
                k = i;
            }
        }
        let (l, c, r) = (self.power[k - 1], self.power[k], self.power[k + 1]);
        if c <= 0.0 || l > c || r > c {
            return None;
        }
        // Parabola through the log power: near-exact for a Hann main lobe.
        let (a, b, g) = (l.max(1e-30).ln(), c.ln(), r.max(1e-30).ln());
        let denom = a - 2.0 * b + g;
        let delta = if denom < 0.0 {
            (0.5 * (a - g) / denom).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        let ln_peak = b - 0.25 * (a - g) * delta;
        let mag = (0.5 * ln_peak).exp();
        Some(Peak {
            bin: k,
            freq: (k as f64 + delta) * self.bin_hz,
            amp: 2.0 * mag / self.window_sum,
        })
    }

    /// Power in the union of `±half` bins around the two peaks.
    fn lobes(&self, a: usize, b: usize, half: usize) -> f64 {
        let last = self.power.len() - 1;
        let (a0, a1) = (a.saturating_sub(half), (a + half).min(last));
        let (b0, b1) = (b.saturating_sub(half), (b + half).min(last));
        if a1 >= b0 {
            self.power[a0.min(b0)..=a1.max(b1)].iter().sum()
        } else {
            self.power[a0..=a1].iter().sum::<f64>() + self.power[b0..=b1].iter().sum::<f64>()
        }
    }

    /// Amplitude of the sine that would put as much power within `±band_hz` of `f` as there
    /// is (Parseval: a sine of amplitude A leaves N·A²/4·Σw² in its one-sided lobe).
    fn band_amp(&self, f: f64, band_hz: f64) -> f64 {
        let k0 = (((f - band_hz) / self.bin_hz).floor().max(0.0)) as usize;
        let k1 = (((f + band_hz) / self.bin_hz).ceil() as usize).min(self.power.len() - 1);
        let p: f64 = self.power[k0..=k1].iter().sum();
        let n = (2 * (self.power.len() - 1)) as f64;
        (4.0 * p / (n * self.window_sq)).sqrt()
    }
}

/// Nearest nominal frequency: (index, relative error).
fn nearest(freq: f64, table: &[f32; 4]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (i, &f) in table.iter().enumerate() {
        let err = (freq - f64::from(f)) / f64::from(f);
        if err.abs() < best.1.abs() {
            best = (i, err);
        }
    }
    best
}

/// What one frame holds, seen as a candidate dual tone.
#[derive(Clone, Copy, Debug)]
struct DualTone {
    row: usize,
    col: usize,
    lo: Peak,
    hi: Peak,
    err_lo: f64,
    err_hi: f64,
    /// Share of the frame's power inside the two tones' main lobes.
    frac: f64,
}

impl DualTone {
    fn twist_db(&self) -> f64 {
        20.0 * (self.hi.amp.max(1e-9) / self.lo.amp.max(1e-9)).log10()
    }
}

/// Band edges searched for peaks: the nominal groups with room for off-nominal tones.
const LOW_BAND: (f64, f64) = (640.0, 1000.0);
const HIGH_BAND: (f64, f64) = (1150.0, 1720.0);

/// Strongest peak in each group, mapped to the nearest keypad row and column.
fn dual_tone(an: &Analyzer, total: f64, lobe_half: usize) -> Option<DualTone> {
    if total <= 0.0 {
        return None;
    }
    let lo = an.peak(LOW_BAND.0, LOW_BAND.1)?;
    let hi = an.peak(HIGH_BAND.0, HIGH_BAND.1)?;
    let (row, err_lo) = nearest(lo.freq, &LOW_FREQS);
    let (col, err_hi) = nearest(hi.freq, &HIGH_FREQS);
    Some(DualTone {
        row,
        col,
        lo,
        hi,
        err_lo,
        err_hi,
        frac: an.lobes(lo.bin, hi.bin, lobe_half) / total,
    })
}

// ---------------------------------------------------------------------------------------------
// Decoder

/// Decoder frame: 25 ms Hann, 10 ms hop, zero-padded to 7.8 Hz bins.
const DEC_WIN: usize = 200;
const DEC_HOP: usize = 80;
const DEC_NFFT: usize = 1024;
/// Hann main-lobe half width: 2 bins of the unpadded window.
const DEC_LOBE: usize = 2 * DEC_NFFT / DEC_WIN;
/// Q.24-style acceptance, a little wider than the relay's own (an auditor must not miss).
const DEC_FREQ_TOL: f64 = 0.02;
const DEC_MIN_DBM0: f64 = -45.0;
const DEC_MAX_TWIST_DB: f64 = 9.0;
const DEC_MIN_FRAC: f64 = 0.80;
/// Shortest tone reported as a digit; shorter bursts are residue, not keys.
const DEC_MIN_MS: f64 = 25.0;

fn decoder_accepts(t: &DualTone) -> bool {
    t.err_lo.abs() <= DEC_FREQ_TOL
        && t.err_hi.abs() <= DEC_FREQ_TOL
        && dbm0(t.lo.amp) >= DEC_MIN_DBM0
        && dbm0(t.hi.amp) >= DEC_MIN_DBM0
        && t.twist_db().abs() <= DEC_MAX_TWIST_DB
        && t.frac >= DEC_MIN_FRAC
}

/// A run of consecutive accepted frames of one key.
#[derive(Clone, Copy, Debug)]
struct Run {
    row: usize,
    col: usize,
    first: usize,
    last: usize,
    sum_lo: f64,
    sum_hi: f64,
    frames: usize,
}

impl Run {
    fn start(i: usize, t: &DualTone) -> Run {
        Run {
            row: t.row,
            col: t.col,
            first: i,
            last: i,
            sum_lo: t.lo.freq,
            sum_hi: t.hi.freq,
            frames: 1,
        }
    }

    fn extend(&mut self, i: usize, t: &DualTone) {
        self.last = i;
        self.sum_lo += t.lo.freq;
        self.sum_hi += t.hi.freq;
        self.frames += 1;
    }

    fn freqs(&self) -> (f64, f64) {
        (
            self.sum_lo / self.frames as f64,
            self.sum_hi / self.frames as f64,
        )
    }
}

/// How often `progress` is told: about every 1 % of the work.
fn progress_every(frames: usize) -> usize {
    (frames / 100).max(1)
}

/// Decodes DTMF digits from 8 kHz audio. `progress` is called with 0.0..=1.0.
pub fn fft_decode(audio: &[i16], progress: &mut dyn FnMut(f32)) -> Vec<FoundDigit> {
    let frames = audio.len().div_ceil(DEC_HOP);
    let every = progress_every(frames);
    let mut an = Analyzer::new(DEC_WIN, DEC_NFFT);
    let mut runs = Vec::new();
    let mut run: Option<Run> = None;
    progress(0.0);
    for i in 0..frames {
        if i % every == 0 {
            progress(i as f32 / frames as f32);
        }
        let total = an.analyze(audio, i * DEC_HOP);
        let tone = dual_tone(&an, total, DEC_LOBE).filter(decoder_accepts);
        run = match (run, tone) {
            (Some(mut r), Some(t)) if r.row == t.row && r.col == t.col && r.last + 1 == i => {
                r.extend(i, &t);
                Some(r)
            }
            (prev, t) => {
                if let Some(r) = prev.filter(|r| r.frames >= 2) {
                    runs.push(r);
                }
                t.map(|t| Run::start(i, &t))
            }
        };
    }
    if let Some(r) = run.filter(|r| r.frames >= 2) {
        runs.push(r);
    }
    let mut edges = EdgeFinder::new(64);
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let (f_lo, f_hi) = r.freqs();
        let first = r.first * DEC_HOP;
        let last_end = (r.last * DEC_HOP + DEC_WIN).min(audio.len());
        let (start, end) = edges.find(
            audio,
            f_lo,
            f_hi,
            first,
            last_end,
            first.saturating_sub(DEC_WIN),
            (last_end + DEC_WIN).min(audio.len()),
        );
        if ms((end - start) as f64) < DEC_MIN_MS {
            continue;
        }
        if let Some(digit) = Digit::from_position(r.row, r.col) {
            out.push(FoundDigit {
                digit,
                start_ms: ms(start as f64),
                end_ms: ms(end as f64),
            });
        }
    }
    progress(1.0);
    out
}

/// Finds where a dual tone starts and ends to within a millisecond or so: a Hann window slides
/// one sample at a time, and an edge is where the tone's magnitude in the window passes half its
/// steady value, i.e. where the edge sits at the window's centre.
struct EdgeFinder {
    window: Vec<f64>,
    lo: Vec<Complex<f64>>,
    hi: Vec<Complex<f64>>,
}

impl EdgeFinder {
    fn new(len: usize) -> EdgeFinder {
        EdgeFinder {
            window: hann(len).into_iter().map(f64::from).collect(),
            lo: vec![Complex::new(0.0, 0.0); len],
            hi: vec![Complex::new(0.0, 0.0); len],
        }
    }

    fn tune(&mut self, f_lo: f64, f_hi: f64) {
        for (n, w) in self.window.iter().enumerate() {
            let t = -2.0 * std::f64::consts::PI * n as f64 / FS;
            self.lo[n] = Complex::from_polar(*w, t * f_lo);
            self.hi[n] = Complex::from_polar(*w, t * f_hi);
        }
    }

    /// Magnitudes of the two tones in the window starting at `m`.
    fn mags(&self, audio: &[i16], m: usize) -> (f64, f64) {
        let mut a = Complex::new(0.0, 0.0);
        let mut b = Complex::new(0.0, 0.0);
        let seg = audio.get(m..).unwrap_or(&[]);
        for ((s, l), h) in seg.iter().zip(&self.lo).zip(&self.hi) {
            let v = f64::from(*s);
            a += l * v;
            b += h * v;
        }
        (a.norm(), b.norm())
    }

    /// Edges of the tone known to fill `[inner_lo, inner_hi)` roughly, searched no further out
    /// than `[outer_lo, outer_hi)`. Returns sample positions (start, end).
    #[allow(clippy::too_many_arguments)]
    fn find(
        &mut self,
        audio: &[i16],
        f_lo: f64,
        f_hi: f64,
        inner_lo: usize,
        inner_hi: usize,
        outer_lo: usize,
        outer_hi: usize,
    ) -> (usize, usize) {
        self.tune(f_lo, f_hi);
        let len = self.window.len();
        let half = len / 2;
        // Steady magnitude: the strongest window inside the coarse span.
        let (mut ref_lo, mut ref_hi, mut peak_at, mut best) = (0.0f64, 0.0f64, inner_lo, 0.0);
        let last = inner_hi.saturating_sub(len).max(inner_lo);
        let mut m = inner_lo;
        while m <= last {
            let (a, b) = self.mags(audio, m);
            ref_lo = ref_lo.max(a);
            ref_hi = ref_hi.max(b);
            if a.min(b) > best {
                best = a.min(b);
                peak_at = m;
            }
            m += 4;
        }
        let level = |(a, b): (f64, f64)| (a / ref_lo.max(1e-9)).min(b / ref_hi.max(1e-9));
        // Walk outward from the strongest window until the tone falls below half.
        let mut s = peak_at;
        let mut prev = level(self.mags(audio, s));
        let start = loop {
            if s == 0 || s <= outer_lo {
                break s + half;
            }
            let g = level(self.mags(audio, s - 1));
            if g < 0.5 {
                // Interpolate the crossing between s - 1 and s.
                let frac = ((0.5 - g) / (prev - g).max(1e-9)).clamp(0.0, 1.0);
                break s + half - 1 + frac.round() as usize;
            }
            prev = g;
            s -= 1;
        };
        let mut e = peak_at;
        let mut prev = level(self.mags(audio, e));
        let end = loop {
            if e + len >= audio.len() || e + len >= outer_hi {
                break (e + half).min(audio.len());
            }
            let g = level(self.mags(audio, e + 1));
            if g < 0.5 {
                let frac = ((prev - 0.5) / (prev - g).max(1e-9)).clamp(0.0, 1.0);
                break e + half + frac.round() as usize;
            }
            prev = g;
            e += 1;
        };
        (start, end.max(start))
    }
}

// ---------------------------------------------------------------------------------------------
// Sensitive residue scan
//
// A few milliseconds of a dual tone cannot be told from a few milliseconds of a vowel by their
// spectrum: an 8 ms window does not resolve a voice's harmonics, and formants near 700 and
// 1300 Hz look like a key (on the talk-off corpus, vowels put over 90 % of a frame's power into
// two lobes on the grid hundreds of times). What tells them apart is time: a vowel continues
// around such a frame at the same frequencies, while a leaked fragment sits in silence, in quiet
// noise, or next to a masking sound that is not at its frequencies. So a run of dual-tone frames
// becomes residue only if it is *isolated*: the power at its two frequencies in 32 ms either
// side must be well below its own. On the corpus, speech runs stand at most 10.5 dB above their
// flanks (most under 6 dB); 5 ms bursts at -30 dBm0 under noise at -45 dBm0 stand at 19.5 dB.

/// Residue frame: 8 ms Hann, 0.5 ms hop, zero-padded to 31 Hz bins. Short enough that a 5 ms
/// burst fills most of a window, and with enough frames on it that one is well centred.
const RES_WIN: usize = 64;
const RES_HOP: usize = 4;
const RES_NFFT: usize = 256;
const RES_LOBE: usize = 2 * RES_NFFT / RES_WIN;
/// Q.24's reject limit: anything nearer a nominal frequency than this may be heard as the key.
const RES_FREQ_TOL: f64 = 0.035;
const RES_MIN_DBM0: f64 = -48.0;
const RES_MAX_TWIST_DB: f64 = 10.0;
const RES_MIN_FRAC: f64 = 0.90;
/// Fewest consecutive frames for a fragment (1 ms of hops); a 5 ms burst gives about ten.
const RES_MIN_FRAMES: usize = 3;

fn residue_accepts(t: &DualTone) -> bool {
    t.err_lo.abs() <= RES_FREQ_TOL
        && t.err_hi.abs() <= RES_FREQ_TOL
        && dbm0(t.lo.amp) >= RES_MIN_DBM0
        && dbm0(t.hi.amp) >= RES_MIN_DBM0
        && t.twist_db().abs() <= RES_MAX_TWIST_DB
        && t.frac >= RES_MIN_FRAC
}

/// Frames at the ends of a burst hold only part of it: its spectrum is wider and the two lobes
/// pull each other's peaks off frequency. Such frames extend a run but never start one.
const RES_LOOSE_FREQ_TOL: f64 = 0.07;
const RES_LOOSE_MIN_FRAC: f64 = 0.80;

fn residue_continues(t: &DualTone) -> bool {
    t.err_lo.abs() <= RES_LOOSE_FREQ_TOL
        && t.err_hi.abs() <= RES_LOOSE_FREQ_TOL
        && dbm0(t.lo.amp) >= RES_MIN_DBM0
        && dbm0(t.hi.amp) >= RES_MIN_DBM0
        && t.twist_db().abs() <= RES_MAX_TWIST_DB
        && t.frac >= RES_LOOSE_MIN_FRAC
}

/// Flank windows either side of a fragment: 32 ms, 1 ms clear of the frames that saw it.
const FLANK_WIN: usize = 256;
const FLANK_GUARD: usize = 8;
/// Half width of the band searched around each tone in the flanks.
const FLANK_BAND_HZ: f64 = 150.0;
const RES_MIN_ISOLATION_DB: f64 = 15.0;

/// Adjacent residue frames. Keys may differ from frame to frame at the ends of a burst, where a
/// window holds only part of it and the two lobes pull on each other; the best frame decides.
#[derive(Clone, Copy, Debug)]
struct ResidueRun {
    first: usize,
    last: usize,
    frames: usize,
    /// Best frame that passed the strict test, if any did.
    best: Option<DualTone>,
    best_score: f64,
    max_lo: f64,
    max_hi: f64,
    /// Sums of the frames' frequencies weighted by score⁴, so the well-filled frames decide.
    weight: f64,
    sum_lo: f64,
    sum_hi: f64,
}

impl ResidueRun {
    fn score(t: &DualTone) -> f64 {
        t.frac * t.lo.amp.min(t.hi.amp)
    }

    fn start(i: usize, t: DualTone, strict: bool) -> ResidueRun {
        ResidueRun {
            first: i,
            last: i,
            frames: 1,
            best: strict.then_some(t),
            best_score: if strict { Self::score(&t) } else { 0.0 },
            max_lo: t.lo.amp,
            max_hi: t.hi.amp,
            weight: Self::score(&t).powi(4),
            sum_lo: Self::score(&t).powi(4) * t.lo.freq,
            sum_hi: Self::score(&t).powi(4) * t.hi.freq,
        }
    }

    fn extend(&mut self, i: usize, t: DualTone, strict: bool) {
        self.last = i;
        self.frames += 1;
        let w = Self::score(&t).powi(4);
        self.weight += w;
        self.sum_lo += w * t.lo.freq;
        self.sum_hi += w * t.hi.freq;
        self.max_lo = self.max_lo.max(t.lo.amp);
        self.max_hi = self.max_hi.max(t.hi.amp);
        if strict && Self::score(&t) > self.best_score {
            self.best_score = Self::score(&t);
            self.best = Some(t);
        }
    }

    fn freqs(&self) -> (f64, f64) {
        let w = self.weight.max(1e-30);
        (self.sum_lo / w, self.sum_hi / w)
    }

    /// Enough frames, one of them clean, and on the grid as a whole: a steady off-grid pair
    /// passes the loose test all along, and its ragged first frame must not make it residue.
    fn is_fragment(&self) -> bool {
        let (lo, hi) = self.freqs();
        self.best.is_some()
            && self.frames >= RES_MIN_FRAMES
            && nearest(lo, &LOW_FREQS).1.abs() <= RES_FREQ_TOL
            && nearest(hi, &HIGH_FREQS).1.abs() <= RES_FREQ_TOL
    }
}

/// A run of residue frames with its edges and how far it stands out from its surroundings.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    residue: Residue,
    /// Tone level over the strongest same-frequency level in the flanks, weaker tone, worse side.
    isolation_db: f64,
}

fn candidate(
    audio: &[i16],
    r: &ResidueRun,
    edges: &mut EdgeFinder,
    flank: &mut Analyzer,
) -> Candidate {
    let (f_lo, f_hi) = r.freqs();
    let first = r.first * RES_HOP;
    let last_end = (r.last * RES_HOP + RES_WIN).min(audio.len());
    let (start, end) = edges.find(audio, f_lo, f_hi, first, last_end, first, last_end);
    // The flanks sit outside every window that saw the fragment: a tone reaching into them would
    // have made the neighbouring frames accept too.
    let before_end = first.saturating_sub(FLANK_GUARD);
    let before_start = before_end.saturating_sub(FLANK_WIN);
    let after_start = last_end + FLANK_GUARD;
    let mut isolation_db = f64::INFINITY;
    for (a, b) in [
        (before_start, before_end),
        (after_start, after_start + FLANK_WIN),
    ] {
        flank.analyze_range(audio, a, b);
        for (f, amp) in [(f_lo, r.max_lo), (f_hi, r.max_hi)] {
            let around = flank.band_amp(f, FLANK_BAND_HZ);
            isolation_db = isolation_db.min(20.0 * (amp / around.max(1e-3)).log10());
        }
    }
    Candidate {
        residue: Residue {
            start_ms: ms(start as f64),
            end_ms: ms(end as f64),
            low_hz: f_lo,
            high_hz: f_hi,
            level_dbm0: dbm0(r.max_lo.max(r.max_hi)),
        },
        isolation_db,
    }
}

/// Reports every fragment of dual-tone energy. `progress` is called with 0.0..=1.0.
pub fn sensitive_scan(audio: &[i16], progress: &mut dyn FnMut(f32)) -> Vec<Residue> {
    residue_candidates(audio, progress)
        .into_iter()
        .filter(|c| c.isolation_db >= RES_MIN_ISOLATION_DB)
        .map(|c| c.residue)
        .collect()
}

fn residue_candidates(audio: &[i16], progress: &mut dyn FnMut(f32)) -> Vec<Candidate> {
    let frames = audio.len().div_ceil(RES_HOP);
    let every = progress_every(frames);
    let mut an = Analyzer::new(RES_WIN, RES_NFFT);
    let mut runs = Vec::new();
    let mut run: Option<ResidueRun> = None;
    progress(0.0);
    for i in 0..frames {
        if i % every == 0 {
            progress(i as f32 / frames as f32);
        }
        let total = an.analyze(audio, i * RES_HOP);
        let tone = dual_tone(&an, total, RES_LOBE)
            .filter(residue_continues)
            .map(|t| (t, residue_accepts(&t)));
        run = match (run, tone) {
            (Some(mut r), Some((t, strict))) => {
                r.extend(i, t, strict);
                Some(r)
            }
            (prev, t) => {
                if let Some(r) = prev.filter(ResidueRun::is_fragment) {
                    runs.push(r);
                }
                t.map(|(t, strict)| ResidueRun::start(i, t, strict))
            }
        };
    }
    if let Some(r) = run.filter(ResidueRun::is_fragment) {
        runs.push(r);
    }
    let mut edges = EdgeFinder::new(RES_WIN);
    let mut flank = Analyzer::new(FLANK_WIN, 2048);
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        out.push(candidate(audio, &r, &mut edges, &mut flank));
    }
    progress(1.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift, so every signal is reproducible.
    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
        fn gauss(&mut self) -> f64 {
            let u1 = self.unit().max(1e-12);
            let u2 = self.unit();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    /// Test signal under construction, in linear units, with ground truth of what was put in.
    struct Sig {
        x: Vec<f64>,
        rng: Rng,
    }

    impl Sig {
        fn new(seed: u64) -> Sig {
            Sig {
                x: Vec::new(),
                rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            }
        }
        fn silence(&mut self, ms: f64) -> &mut Sig {
            let n = (ms * FS / 1000.0).round() as usize;
            self.x.extend(std::iter::repeat_n(0.0, n));
            self
        }
        fn tones(&mut self, freqs: &[f64], dbm0: f64, ms: f64) -> (usize, usize) {
            let parts: Vec<(f64, f64)> = freqs.iter().map(|&f| (f, dbm0)).collect();
            self.mix(&parts, ms)
        }
        /// Sines of (frequency, dBm0), random phases; returns the (start, end) sample span.
        fn mix(&mut self, parts: &[(f64, f64)], ms: f64) -> (usize, usize) {
            let n = (ms * FS / 1000.0).round() as usize;
            let phases: Vec<f64> = parts
                .iter()
                .map(|_| self.rng.unit() * std::f64::consts::TAU)
                .collect();
            let start = self.x.len();
            for i in 0..n {
                let t = i as f64 / FS;
                let v: f64 = parts
                    .iter()
                    .zip(&phases)
                    .map(|((f, l), p)| amp_of(*l) * (2.0 * std::f64::consts::PI * f * t + p).sin())
                    .sum();
                self.x.push(v);
            }
            (start, start + n)
        }
        fn key(&mut self, d: Digit, dbm0: f64, ms: f64) -> (usize, usize) {
            let (lo, hi) = d.freqs();
            self.tones(&[f64::from(lo), f64::from(hi)], dbm0, ms)
        }
        /// White noise over the whole signal at the power of a `dbm0` sine.
        fn noise(&mut self, dbm0: f64) -> &mut Sig {
            let sigma = amp_of(dbm0) / std::f64::consts::SQRT_2;
            for v in self.x.iter_mut() {
                *v += sigma * self.rng.gauss();
            }
            self
        }
        fn pcm(&self) -> Vec<i16> {
            self.x
                .iter()
                .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
                .collect()
        }
    }

    fn fixture(name: &str) -> Vec<i16> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        crate::wav::read_wav(&p).unwrap()
    }

    fn keys(found: &[FoundDigit]) -> String {
        found.iter().map(|d| d.digit.reveal()).collect()
    }

    fn decode(audio: &[i16]) -> Vec<FoundDigit> {
        fft_decode(audio, &mut |_| {})
    }

    fn scan(audio: &[i16]) -> Vec<Residue> {
        sensitive_scan(audio, &mut |_| {})
    }

    #[test]
    fn decodes_every_key_at_minus_30_dbm0_with_40_ms_tones_and_pauses() {
        let mut s = Sig::new(1);
        s.silence(200.0);
        let mut truth = Vec::new();
        for d in Digit::ALL.iter().chain(Digit::ALL.iter().rev()) {
            truth.push((*d, s.key(*d, -30.0, 40.0)));
            s.silence(40.0);
        }
        s.silence(200.0);
        let found = decode(&s.pcm());
        let want: String = truth.iter().map(|(d, _)| d.reveal()).collect();
        assert_eq!(keys(&found), want);
        for (f, (_, (a, b))) in found.iter().zip(&truth) {
            assert!((f.start_ms - ms(*a as f64)).abs() <= 5.0, "{f:?} vs {a}");
            assert!((f.end_ms - ms(*b as f64)).abs() <= 5.0, "{f:?} vs {b}");
        }
    }

    #[test]
    fn digit_edges_are_within_5_ms_across_levels_lengths_and_noise() {
        let mut worst: f64 = 0.0;
        let mut seed = 10;
        for level in [0.0, -20.0, -36.0] {
            for tone_ms in [40.0, 65.0, 150.0] {
                for noise in [None, Some(level - 20.0)] {
                    seed += 1;
                    let mut s = Sig::new(seed);
                    s.silence(100.0 + seed as f64);
                    let mut truth = Vec::new();
                    for c in ['1', '1', '9', 'D'] {
                        let d = Digit::from_char(c).unwrap();
                        truth.push(s.key(d, level, tone_ms));
                        s.silence(50.0);
                    }
                    s.silence(100.0);
                    if let Some(n) = noise {
                        s.noise(n);
                    }
                    let found = decode(&s.pcm());
                    let label = format!("{level} dBm0, {tone_ms} ms, noise {noise:?}");
                    assert_eq!(keys(&found), "119D", "{label}");
                    for (f, (a, b)) in found.iter().zip(&truth) {
                        let e = (f.start_ms - ms(*a as f64))
                            .abs()
                            .max((f.end_ms - ms(*b as f64)).abs());
                        assert!(e <= 5.0, "{label}: {f:?} vs {a}..{b}");
                        worst = worst.max(e);
                    }
                }
            }
        }
        // The edge search is sample-exact in principle; a millisecond is what noise costs.
        assert!(worst <= 3.0, "worst edge error {worst} ms");
    }

    #[test]
    fn decoder_accepts_q24_offsets_and_twist_and_skips_short_bursts() {
        let mut s = Sig::new(3);
        s.silence(100.0);
        // +1.8 % off nominal, high group 8 dB down.
        let (lo, hi) = Digit::from_char('5').unwrap().freqs();
        s.mix(
            &[
                (f64::from(lo) * 1.018, -20.0),
                (f64::from(hi) * 1.018, -28.0),
            ],
            40.0,
        );
        s.silence(100.0);
        // Too short for a key: residue, not a digit.
        s.key(Digit::from_char('3').unwrap(), -10.0, 20.0);
        s.silence(100.0);
        s.key(Digit::from_char('7').unwrap(), -10.0, 10.0);
        s.silence(100.0);
        assert_eq!(keys(&decode(&s.pcm())), "5");
    }

    /// Signals that are not DTMF: each must give no digit and no residue.
    fn not_dtmf() -> Vec<(String, Vec<i16>)> {
        let mut out = Vec::new();
        let mut seed = 100;
        let mut add = |label: String, freqs: &[f64], dbm0: f64| {
            seed += 1;
            let mut s = Sig::new(seed);
            s.silence(50.0);
            s.tones(freqs, dbm0, 400.0);
            s.silence(50.0);
            out.push((label, s.pcm()));
        };
        for f in LOW_FREQS.iter().chain(&HIGH_FREQS) {
            add(format!("single {f} Hz"), &[f64::from(*f)], -10.0);
        }
        add("dial tone 350+440".into(), &[350.0, 440.0], -13.0);
        add("off-grid 600+1000".into(), &[600.0, 1000.0], -10.0);
        add("off-grid 1000+2000".into(), &[1000.0, 2000.0], -10.0);
        add("masking tone 450".into(), &[450.0], -20.0);
        add("masking tone 1000".into(), &[1000.0], -20.0);
        add("ringback 440+480".into(), &[440.0, 480.0], -19.0);
        // 5 % off the grid in both groups: beyond Q.24's 3.5 % reject limit.
        add("1 at +5 %".into(), &[697.0 * 1.05, 1209.0 * 1.05], -10.0);
        add("0 at -5 %".into(), &[941.0 * 0.95, 1336.0 * 0.95], -10.0);
        // Both tones in one group.
        add("697+852".into(), &[697.0, 852.0], -10.0);
        add("1209+1477".into(), &[1209.0, 1477.0], -10.0);
        // Twist far beyond any keypad's.
        seed += 1;
        let mut s = Sig::new(seed);
        s.silence(50.0);
        s.mix(&[(697.0, -10.0), (1336.0, -30.0)], 300.0);
        s.silence(50.0);
        out.push(("twist 20 dB".into(), s.pcm()));
        for (i, level) in [-20.0, -45.0].into_iter().enumerate() {
            let mut s = Sig::new(900 + i as u64);
            s.silence(10_000.0);
            s.noise(level);
            out.push((format!("white noise {level} dBm0"), s.pcm()));
        }
        out.push(("silence".into(), vec![0; 8000]));
        out.push((
            "speech (linphone hello)".into(),
            fixture("speech_en_hello.wav"),
        ));
        out.push((
            "speech (codec2 talk-off clip)".into(),
            fixture("speech_en_codec2_talkoff.wav"),
        ));
        out
    }

    #[test]
    fn tones_that_are_not_dtmf_give_no_digit_and_no_residue() {
        for (label, audio) in not_dtmf() {
            let d = decode(&audio);
            assert!(d.is_empty(), "{label}: decoded {} digits", d.len());
            let r = scan(&audio);
            assert!(r.is_empty(), "{label}: residue {r:?}");
        }
    }

    #[test]
    fn sensitive_scan_finds_5_ms_bursts_of_every_key_in_silence_and_quiet_noise() {
        for (noise, seed) in [(None, 20), (Some(-50.0), 40)] {
            let mut s = Sig::new(seed);
            s.silence(100.0);
            let mut truth = Vec::new();
            for d in Digit::ALL {
                truth.push((d, s.key(d, -30.0, 5.0)));
                s.silence(120.0);
            }
            if let Some(n) = noise {
                s.noise(n);
            }
            let found = scan(&s.pcm());
            assert_eq!(found.len(), 16, "noise {noise:?}: {found:?}");
            for (r, (d, (a, b))) in found.iter().zip(&truth) {
                let (lo, hi) = d.freqs();
                assert!(
                    (r.low_hz / f64::from(lo) - 1.0).abs() <= RES_FREQ_TOL,
                    "{r:?}"
                );
                assert!(
                    (r.high_hz / f64::from(hi) - 1.0).abs() <= RES_FREQ_TOL,
                    "{r:?}"
                );
                assert!((r.start_ms - ms(*a as f64)).abs() <= 3.0, "{r:?} vs {a}");
                assert!((r.end_ms - ms(*b as f64)).abs() <= 3.0, "{r:?} vs {b}");
                assert!((-36.0..=-27.0).contains(&r.level_dbm0), "{r:?}");
            }
        }
    }

    #[test]
    fn sensitive_scan_finds_10_ms_fragments_at_minus_40_dbm0() {
        let mut s = Sig::new(5);
        s.silence(100.0);
        let mut spans = Vec::new();
        for c in ['2', '*', '#', 'C'] {
            spans.push(s.key(Digit::from_char(c).unwrap(), -40.0, 10.0));
            s.silence(150.0);
        }
        s.noise(-60.0);
        let found = scan(&s.pcm());
        assert_eq!(found.len(), 4, "{found:?}");
        for (r, (a, _)) in found.iter().zip(&spans) {
            assert!((r.start_ms - ms(*a as f64)).abs() <= 3.0, "{r:?}");
        }
        assert!(decode(&s.pcm()).is_empty(), "10 ms is not a digit");
    }

    #[test]
    fn sensitive_scan_finds_a_tail_or_onset_next_to_a_mask() {
        let d = Digit::from_char('8').unwrap();
        for (k, mask) in ["noise", "tone", "silence"].into_iter().enumerate() {
            for tail in [true, false] {
                let mut s = Sig::new(60 + k as u64);
                s.silence(100.0);
                let (a, b) = s.key(d, -20.0, 60.0);
                s.silence(100.0);
                // Mask all but 6 ms of the tone, as a scrubber that started late or stopped
                // early would.
                let (m0, m1) = if tail { (a, b - 48) } else { (a + 48, b) };
                let mut m = Sig::new(99);
                match mask {
                    "noise" => {
                        m.silence(ms((m1 - m0) as f64));
                        m.noise(-40.0);
                    }
                    "tone" => {
                        m.tones(&[450.0], -20.0, ms((m1 - m0) as f64));
                    }
                    _ => {
                        m.silence(ms((m1 - m0) as f64));
                    }
                }
                s.x[m0..m1].copy_from_slice(&m.x[..m1 - m0]);
                let found = scan(&s.pcm());
                let label = format!("{mask} mask, tail {tail}");
                assert_eq!(found.len(), 1, "{label}: {found:?}");
                let at = if tail { m1 } else { a };
                assert!(
                    (found[0].start_ms - ms(at as f64)).abs() <= 3.0,
                    "{label}: {found:?}"
                );
            }
        }
    }

    /// Unscrubbed caller audio: keys over speech, 4-16 dB above the speech's average level. The
    /// decoder finds every key with its edges; the residue scanner reports no more fragments
    /// than there are keys (its isolation test is meant for masked audio).
    #[test]
    fn keys_over_speech_are_decoded() {
        let speech = fixture("speech_en_hello.wav");
        for (gain_db, level) in [(-6.0, -10.0), (-12.0, -20.0), (-18.0, -30.0)] {
            let mut s = Sig::new(77);
            s.silence(300.0);
            let mut truth = Vec::new();
            for c in "4111111111111111".chars() {
                truth.push(s.key(Digit::from_char(c).unwrap(), level, 45.0));
                s.silence(50.0);
            }
            let g = 10f64.powf(gain_db / 20.0);
            for (i, v) in s.x.iter_mut().enumerate() {
                *v += g * f64::from(speech[i % speech.len()]);
            }
            let found = decode(&s.pcm());
            let label = format!("speech {gain_db} dB, keys {level} dBm0");
            assert_eq!(keys(&found), "4111111111111111", "{label}");
            for (f, (a, b)) in found.iter().zip(&truth) {
                assert!((f.start_ms - ms(*a as f64)).abs() <= 5.0, "{label}: {f:?}");
                assert!((f.end_ms - ms(*b as f64)).abs() <= 5.0, "{label}: {f:?}");
            }
            let r = scan(&s.pcm());
            assert!(r.len() <= 16, "{label}: {r:?}");
        }
    }

    #[test]
    fn masks_alone_leave_no_residue() {
        let mut s = Sig::new(7);
        s.silence(300.0);
        s.tones(&[450.0], -15.0, 60.0);
        s.silence(60.0);
        let n = s.x.len();
        s.silence(60.0);
        let mut m = Sig::new(8);
        m.silence(60.0);
        m.noise(-25.0);
        s.x[n..].copy_from_slice(&m.x);
        s.silence(300.0);
        assert!(scan(&s.pcm()).is_empty());
        assert!(decode(&s.pcm()).is_empty());
    }

    #[test]
    fn progress_runs_from_zero_to_one() {
        let mut s = Sig::new(9);
        s.silence(3000.0);
        s.noise(-40.0);
        let audio = s.pcm();
        for sensitive in [false, true] {
            let mut seen = Vec::new();
            let mut f = |p: f32| seen.push(p);
            if sensitive {
                sensitive_scan(&audio, &mut f);
            } else {
                fft_decode(&audio, &mut f);
            }
            assert_eq!(seen.first(), Some(&0.0));
            assert_eq!(seen.last(), Some(&1.0));
            assert!(seen.windows(2).all(|w| w[0] <= w[1]));
            assert!(seen.len() > 10 && seen.len() < 200, "{}", seen.len());
        }
        assert!(decode(&[]).is_empty() && scan(&[]).is_empty());
        assert!(decode(&[5; 10]).is_empty() && scan(&[5; 10]).is_empty());
    }
}
