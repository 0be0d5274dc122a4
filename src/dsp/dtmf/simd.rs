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

/// (Σ x[n]·a[n], Σ x[n]·b[n]) over the shortest of the three, on samples already converted
/// to floats: each sum is formed exactly as [`dot`] forms it (the same partial sums, added in
/// the same order), so results are bit-identical; one pass reads the samples once for both.
///
/// Kept out of line, and compiled for AVX2 where the CPU has it: inlined into the loops over
/// the eight grid frequencies, the compiler vectorised across frequencies instead (a
/// broadcast and gathered inserts per sample), which counted four times the instructions.
#[inline(never)]
pub(super) fn dot2(x: &[f32], a: &[f32], b: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been found to support AVX2, all the function requires.
        return unsafe { dot2_avx2(x, a, b) };
    }
    dot2_with(x, a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot2_avx2(x: &[f32], a: &[f32], b: &[f32]) -> (f32, f32) {
    dot2_with(x, a, b)
}

#[inline(always)]
fn dot2_with(x: &[f32], a: &[f32], b: &[f32]) -> (f32, f32) {
    let n = x.len().min(a.len()).min(b.len());
    let (x, a, b) = (&x[..n], &a[..n], &b[..n]);
    let (mut sa, mut sb) = ([0f32; 8], [0f32; 8]);
    let (xc, ac, bc) = (x.chunks_exact(8), a.chunks_exact(8), b.chunks_exact(8));
    let ta: f32 = xc
        .remainder()
        .iter()
        .zip(ac.remainder())
        .map(|(v, w)| v * w)
        .sum();
    let tb: f32 = xc
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(v, w)| v * w)
        .sum();
    for ((x, a), b) in xc.zip(ac).zip(bc) {
        for ((s, &x), &w) in sa.iter_mut().zip(x).zip(a) {
            *s += x * w;
        }
        for ((s, &x), &w) in sb.iter_mut().zip(x).zip(b) {
            *s += x * w;
        }
    }
    (sa.iter().sum::<f32>() + ta, sb.iter().sum::<f32>() + tb)
}

/// Index of the largest of four, as compares and selects: written as a loop over the array it
/// was left to the compiler to turn into stores and reloads.
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
