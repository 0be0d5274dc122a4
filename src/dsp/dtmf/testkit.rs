//! Test audio shared by the detectors' tests.

use crate::digit::Digit;
use crate::dsp::goertzel::DBM0_PEAK;

/// A key at `dbm0` per tone for `len` samples after `lead` samples of silence, with a trail.
pub(super) fn key(d: Digit, dbm0: f32, lead: usize, len: usize, trail: usize) -> Vec<i16> {
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
