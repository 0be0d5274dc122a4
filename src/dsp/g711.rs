//! G.711 μ-law and A-law ⇄ 16-bit linear PCM (ITU-T G.711).
//!
//! Owns only the companding; never allocates per call on the hot path.

/// The G.711 companding law of an audio stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// μ-law, RTP static payload type 0.
    Pcmu,
    /// A-law, RTP static payload type 8.
    Pcma,
}

impl Codec {
    /// RFC 3551 static payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Codec for a static payload type, if it is G.711.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Codec::Pcmu => ulaw_decode(byte),
            Codec::Pcma => alaw_decode(byte),
        }
    }

    /// Decodes `bytes` into the start of `out` (as many as both hold). The relay's hot path:
    /// with AVX2 sixteen bytes are expanded at once from the law's formula, which gives exactly
    /// the table's values (a test checks every code in every lane).
    pub fn decode_into(self, bytes: &[u8], out: &mut [i16]) {
        let n = bytes.len().min(out.len());
        let (bytes, out) = (&bytes[..n], &mut out[..n]);
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has just been found to support AVX2, all the function requires.
            done = unsafe { decode16_avx2(self, bytes, out) };
        }
        let table = match self {
            Codec::Pcmu => &ULAW_TABLE,
            Codec::Pcma => &ALAW_TABLE,
        };
        for (o, &b) in out[done..].iter_mut().zip(&bytes[done..]) {
            *o = table[usize::from(b)];
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Codec::Pcmu => ulaw_encode(sample),
            Codec::Pcma => alaw_encode(sample),
        }
    }
}

// ITU-T G.711 companding, written from the standard's segment tables: 8 segments of 16 steps,
// μ-law with a bias of 33 (in 14-bit units, 132 in 16-bit), A-law with its even bits inverted.

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32_635;

/// μ-law byte → linear sample (16-bit scale).
pub fn ulaw_decode(b: u8) -> i16 {
    ULAW_TABLE[b as usize]
}

/// Linear sample → μ-law byte.
pub fn ulaw_encode(s: i16) -> u8 {
    let mut v = i32::from(s);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    v = v.min(ULAW_CLIP) + ULAW_BIAS;
    // Segment = position of the highest set bit above bit 7.
    let seg = (31 - (v as u32).leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (v >> (seg + 3)) & 0x0F;
    !(sign | ((seg as i32) << 4) as u8 | mantissa as u8)
}

/// A-law byte → linear sample (16-bit scale).
pub fn alaw_decode(b: u8) -> i16 {
    ALAW_TABLE[b as usize]
}

/// Linear sample → A-law byte.
pub fn alaw_encode(s: i16) -> u8 {
    // A-law works on 13-bit magnitudes.
    let mut v = i32::from(s) >> 3;
    let sign = if v >= 0 {
        0x80
    } else {
        v = -v - 1;
        0
    };
    let v = v.min(0x0FFF);
    let code = if v < 32 {
        (v >> 1) as u8
    } else {
        let seg = 31 - (v as u32).leading_zeros() - 4; // 1..=7
        ((seg as u8) << 4) | ((v >> seg) & 0x0F) as u8
    };
    (sign | code) ^ 0x55
}

const fn ulaw_expand(b: u8) -> i16 {
    let u = !b;
    let seg = ((u >> 4) & 7) as i32;
    let mantissa = (u & 0x0F) as i32;
    let mag = (((mantissa << 3) + ULAW_BIAS) << seg) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -mag as i16
    } else {
        mag as i16
    }
}

const fn alaw_expand(b: u8) -> i16 {
    let a = b ^ 0x55;
    let seg = ((a >> 4) & 7) as i32;
    let mantissa = (a & 0x0F) as i32;
    let mag = if seg == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (seg - 1)
    };
    if a & 0x80 != 0 {
        mag as i16
    } else {
        -mag as i16
    }
}

const fn build_table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw {
            alaw_expand(i as u8)
        } else {
            ulaw_expand(i as u8)
        };
        i += 1;
    }
    t
}

/// [`Codec::decode_into`] for whole groups of sixteen; returns how many samples it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode16_avx2(codec: Codec, bytes: &[u8], out: &mut [i16]) -> usize {
    use std::arch::x86_64::{
        __m256i, _mm_setr_epi8, _mm256_add_epi16, _mm256_and_si256, _mm256_cmpeq_epi16,
        _mm256_cvtepu8_epi16, _mm256_mullo_epi16, _mm256_or_si256, _mm256_set1_epi16,
        _mm256_setr_epi8, _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_srli_epi16,
        _mm256_sub_epi16, _mm256_xor_si256,
    };
    let k = _mm256_set1_epi16;
    // 2^i for a 3-bit i in each 16-bit lane's low byte (pshufb looks up per 128-bit half; an
    // index with its top bit set gives 0, which is what the lanes' high bytes get).
    let pow_mu = _mm256_setr_epi8(
        1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, -128, 0, 0,
        0, 0, 0, 0, 0, 0,
    );
    // A-law's segments 0 and 1 share a step size: 2^max(seg - 1, 0).
    let pow_a = _mm256_setr_epi8(
        1, 1, 2, 4, 8, 16, 32, 64, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 4, 8, 16, 32, 64, 0, 0, 0, 0,
        0, 0, 0, 0,
    );
    let mut done = 0;
    for (src, dst) in bytes.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
        let v = _mm_setr_epi8(
            src[0] as i8,
            src[1] as i8,
            src[2] as i8,
            src[3] as i8,
            src[4] as i8,
            src[5] as i8,
            src[6] as i8,
            src[7] as i8,
            src[8] as i8,
            src[9] as i8,
            src[10] as i8,
            src[11] as i8,
            src[12] as i8,
            src[13] as i8,
            src[14] as i8,
            src[15] as i8,
        );
        let b = _mm256_cvtepu8_epi16(v);
        let r: __m256i = match codec {
            Codec::Pcmu => {
                // ulaw_expand: |x| = ((mantissa·8 + 132) << segment) − 132, sign bit = negative.
                let u = _mm256_xor_si256(b, k(0xFF));
                let seg = _mm256_and_si256(_mm256_srli_epi16::<4>(u), k(7));
                let pow = _mm256_shuffle_epi8(pow_mu, _mm256_or_si256(seg, k(-0x8000)));
                let base = _mm256_add_epi16(
                    std::arch::x86_64::_mm256_slli_epi16::<3>(_mm256_and_si256(u, k(0x0F))),
                    k(0x84),
                );
                let mag = _mm256_sub_epi16(_mm256_mullo_epi16(base, pow), k(0x84));
                let neg = _mm256_cmpeq_epi16(_mm256_and_si256(u, k(0x80)), k(0x80));
                _mm256_sub_epi16(_mm256_xor_si256(mag, neg), neg)
            }
            Codec::Pcma => {
                // alaw_expand: |x| = mantissa·16 + 8 (+ 256 above segment 0), times the step;
                // sign bit set = positive.
                let a = _mm256_xor_si256(b, k(0x55));
                let seg = _mm256_and_si256(_mm256_srli_epi16::<4>(a), k(7));
                let pow = _mm256_shuffle_epi8(pow_a, _mm256_or_si256(seg, k(-0x8000)));
                let above0 =
                    _mm256_xor_si256(_mm256_cmpeq_epi16(seg, _mm256_setzero_si256()), k(-1));
                let base = _mm256_add_epi16(
                    std::arch::x86_64::_mm256_slli_epi16::<4>(_mm256_and_si256(a, k(0x0F))),
                    _mm256_add_epi16(k(8), _mm256_and_si256(above0, k(0x100))),
                );
                let mag = _mm256_mullo_epi16(base, pow);
                let neg = _mm256_cmpeq_epi16(_mm256_and_si256(a, k(0x80)), _mm256_setzero_si256());
                _mm256_sub_epi16(_mm256_xor_si256(mag, neg), neg)
            }
        };
        // SAFETY: __m256i and [i16; 16] have the same size, and any bits are a valid i16.
        dst.copy_from_slice(&unsafe { std::mem::transmute::<__m256i, [i16; 16]>(r) });
        done += 16;
    }
    done
}

static ULAW_TABLE: [i16; 256] = build_table(false);
static ALAW_TABLE: [i16; 256] = build_table(true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        // Silence and full scale, per G.711 Tables 1a/2a scaled to 16 bits.
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(ulaw_decode(0x80), 32_124);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32_256);
        assert_eq!(alaw_decode(0x2A), -32_256);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn decode_into_gives_the_table_for_every_code_in_every_lane() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            // Every code at every position of a 16-byte group, and a tail off the groups.
            for shift in 0..16 {
                let bytes: Vec<u8> = (0..256 + 7).map(|i| ((i + shift) % 256) as u8).collect();
                let mut out = vec![0i16; bytes.len()];
                codec.decode_into(&bytes, &mut out);
                for (&b, &o) in bytes.iter().zip(&out) {
                    assert_eq!(o, codec.decode(b), "{codec:?} {b:#04x}");
                }
            }
        }
    }

    #[test]
    fn every_code_survives_decode_encode() {
        for b in 0..=255u8 {
            let u = ulaw_decode(b);
            // μ-law has two zero codes (0x7F, 0xFF); both decode to 0, which encodes as 0xFF.
            if u != 0 {
                assert_eq!(ulaw_encode(u), b, "μ-law {b:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(b)), b, "A-law {b:#04x}");
        }
    }

    #[test]
    fn quantisation_error_stays_within_half_a_step() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            for s in (i16::MIN..=i16::MAX).step_by(7) {
                let r = codec.decode(codec.encode(s));
                let err = (i32::from(r) - i32::from(s)).abs();
                // Steps double per segment; the error is at most half a step (plus the clip).
                let mag = i32::from(s).abs();
                let bound = (mag / 16).max(16) + if mag > 32_000 { 800 } else { 0 };
                assert!(err <= bound, "{codec:?}: {s} -> {r}");
            }
        }
    }

    #[test]
    fn encoding_is_monotonic() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let mut last = i16::MIN;
            for s in (i16::MIN..=i16::MAX).step_by(3) {
                let r = codec.decode(codec.encode(s));
                assert!(r >= last, "{codec:?} not monotonic at {s}");
                last = r;
            }
        }
    }
}
