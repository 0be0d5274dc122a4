//! Small numeric helpers written so the compiler vectorises them, shared by both detectors.

/// Σ x[n]·w[n] over the shorter of the two, in eight interleaved partial sums so it
/// vectorises (float addition is not reassociated by the compiler on its own).
pub(super) fn dot(x: &[i16], w: &[f32]) -> f32 {
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

/// compiler to turn into stores and reloads.
#[inline]
pub(super) fn argmax4(v: [f32; 4]) -> usize {
    let (a, va) = if v[1] > v[0] { (1, v[1]) } else { (0, v[0]) };
    let (b, vb) = if v[3] > v[2] { (3, v[3]) } else { (2, v[2]) };
    if vb > va { b } else { a }
}

/// The largest of four, the value [`argmax4`] picks.
#[inline]
pub(super) fn max4(v: [f32; 4]) -> f32 {
    let a = if v[1] > v[0] { v[1] } else { v[0] };
    let b = if v[3] > v[2] { v[3] } else { v[2] };
    if b > a { b } else { a }
}
