//! WAV input/output for the offline tools: 8 kHz mono PCM16 or G.711 in, PCM16 out.
//!
//! Well-formed PCM16 files are read with `hound`. `hound` does not read G.711 (format tags 6 and
//! 7) and refuses damaged files that are common in the field (a LIST chunk of odd length with or
//! without its pad byte, a data chunk cut short by a crashed recorder), so a small RIFF chunk
//! walker of our own reads those and explains precisely why a file is refused. Owns no audio
//! policy: it only turns files into linear samples and back.

use std::io::Cursor;
use std::path::Path;

use crate::dsp::g711::Codec;

/// The only sample rate the relay and its tools work at (G.711 narrowband).
const RATE: u32 = 8000;

/// WAVE format tags (RFC 2361 appendix A) this module decodes.
const TAG_PCM: u16 = 0x0001;
const TAG_ALAW: u16 = 0x0006;
const TAG_MULAW: u16 = 0x0007;
/// WAVE_FORMAT_EXTENSIBLE: the real tag is the first two bytes of the sub-format GUID.
const TAG_EXTENSIBLE: u16 = 0xFFFE;

/// Why a WAV file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a WAV file: {0}")]
    Format(String),
    #[error("unsupported WAV: {0}")]
    Unsupported(String),
}

/// What the fmt chunk says, reduced to what decides whether we can read the samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    tag: u16,
    channels: u16,
    rate: u32,
    bits: u16,
}

/// Reads an 8 kHz mono WAV (PCM16, μ-law or A-law) as linear samples.
///
/// A data chunk that claims more bytes than the file holds yields the samples present (a
/// recorder that died mid-call still leaves an auditable file).
pub fn read_wav(path: &Path) -> Result<Vec<i16>, WavError> {
    let bytes = std::fs::read(path)?;
    if let Some(samples) = read_with_hound(&bytes, path)? {
        return Ok(samples);
    }
    let (layout, data) = walk_riff(&bytes)?;
    check_layout(layout, path)?;
    Ok(match layout.tag {
        TAG_PCM => data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
        TAG_ALAW => data.iter().map(|&b| Codec::Pcma.decode(b)).collect(),
        // check_layout admits only the three tags above.
        _ => data.iter().map(|&b| Codec::Pcmu.decode(b)).collect(),
    })
}

/// The common case through `hound`. `Ok(None)` means hound could not read the file whole (G.711,
/// odd chunk padding, truncation), and the chunk walker should decide; `Err` is a file hound
/// read fine but whose format we refuse.
fn read_with_hound(bytes: &[u8], path: &Path) -> Result<Option<Vec<i16>>, WavError> {
    let Ok(mut reader) = hound::WavReader::new(Cursor::new(bytes)) else {
        return Ok(None);
    };
    let spec = reader.spec();
    let layout = Layout {
        tag: match spec.sample_format {
            hound::SampleFormat::Int => TAG_PCM,
            hound::SampleFormat::Float => 0x0003,
        },
        channels: spec.channels,
        rate: spec.sample_rate,
        bits: spec.bits_per_sample,
    };
    check_layout(layout, path)?;
    let samples: Result<Vec<i16>, _> = reader.samples::<i16>().collect();
    Ok(samples.ok())
}

/// Walks the RIFF chunks (fmt, fact, LIST, data, anything else) and returns the format and the
/// data bytes present in the file.
fn walk_riff(bytes: &[u8]) -> Result<(Layout, &[u8]), WavError> {
    let head = bytes.get(..12).ok_or_else(|| {
        WavError::Format(format!(
            "file is {} bytes, too short for a header",
            bytes.len()
        ))
    })?;
    match &head[..4] {
        b"RIFF" => {}
        b"RIFX" => {
            return Err(WavError::Unsupported(
                "big-endian RIFX files are not supported".into(),
            ));
        }
        b"RF64" => {
            return Err(WavError::Unsupported(
                "RF64 (files over 4 GB) is not supported".into(),
            ));
        }
        _ => return Err(WavError::Format("no RIFF header".into())),
    }
    if &head[8..12] != b"WAVE" {
        return Err(WavError::Format("RIFF file is not of type WAVE".into()));
    }

    let mut layout = None;
    let mut data = None;
    let mut pos = 12usize;
    while let Some(hdr) = bytes.get(pos..pos.saturating_add(8)) {
        let id = [hdr[0], hdr[1], hdr[2], hdr[3]];
        let size = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let start = pos + 8;
        // A chunk running past the end of the file is cut to what is there.
        let end = if size == u32::MAX {
            // Streaming writers that never patch the size leave all ones.
            bytes.len()
        } else {
            start.saturating_add(size as usize).min(bytes.len())
        };
        let body = &bytes[start..end];
        match &id {
            b"fmt " => layout = Some(parse_fmt(body)?),
            b"data" => {
                data = Some(body);
                if layout.is_some() {
                    break;
                }
            }
            _ => {}
        }
        pos = next_chunk(bytes, end, size);
    }
    let layout = layout.ok_or_else(|| WavError::Format("no fmt chunk".into()))?;
    let data = data.ok_or_else(|| WavError::Format("no data chunk".into()))?;
    Ok((layout, data))
}

/// Offset of the next chunk header after a body ending at `end`. RIFF pads odd-sized chunks to
/// an even offset, but some writers forget the pad byte: take whichever offset starts with a
/// plausible chunk id.
fn next_chunk(bytes: &[u8], end: usize, size: u32) -> usize {
    if size.is_multiple_of(2) {
        return end;
    }
    let looks_like_id = |at: usize| {
        bytes
            .get(at..at.saturating_add(4))
            .is_some_and(|id| id.iter().all(|b| b.is_ascii_graphic() || *b == b' '))
    };
    if !looks_like_id(end + 1) && looks_like_id(end) {
        end
    } else {
        end + 1
    }
}

fn parse_fmt(body: &[u8]) -> Result<Layout, WavError> {
    let le16 = |at: usize| {
        body.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let (Some(tag), Some(channels), Some(bits)) = (le16(0), le16(2), le16(14)) else {
        return Err(WavError::Format(format!(
            "fmt chunk is {} bytes, needs at least 16",
            body.len()
        )));
    };
    let rate = body
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    // WAVE_FORMAT_EXTENSIBLE carries the real format tag at the start of its sub-format GUID.
    let tag = if tag == TAG_EXTENSIBLE {
        le16(24).unwrap_or(TAG_EXTENSIBLE)
    } else {
        tag
    };
    Ok(Layout {
        tag,
        channels,
        rate,
        bits,
    })
}

/// Refuses what the relay cannot take, naming every problem at once and how to fix the file.
fn check_layout(l: Layout, path: &Path) -> Result<(), WavError> {
    let mut problems = Vec::new();
    match (l.tag, l.bits) {
        (TAG_PCM, 16) | (TAG_ALAW, 8) | (TAG_MULAW, 8) => {}
        (TAG_PCM, b) => problems.push(format!("samples are {b}-bit PCM; tonewall needs 16-bit")),
        (TAG_ALAW | TAG_MULAW, b) => {
            problems.push(format!("G.711 samples are {b}-bit; G.711 is 8-bit"));
        }
        (tag, _) => problems.push(format!(
            "format tag {tag} ({}) is not PCM16 (1), A-law (6) or μ-law (7)",
            tag_name(tag)
        )),
    }
    if l.rate != RATE {
        problems.push(format!(
            "sample rate is {} Hz; tonewall needs {RATE} Hz",
            l.rate
        ));
    }
    if l.channels != 1 {
        problems.push(format!(
            "file has {} channels; tonewall needs 1 (mono)",
            l.channels
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let name = path.display().to_string();
    let input = if name.is_empty() || name.contains(char::is_whitespace) {
        "in.wav".to_string()
    } else {
        name
    };
    Err(WavError::Unsupported(format!(
        "{} (convert with: sox {input} -r 8000 -c 1 -b 16 -e signed-integer out.wav)",
        problems.join("; ")
    )))
}

/// Names of the format tags people actually meet (RFC 2361 appendix A).
fn tag_name(tag: u16) -> &'static str {
    match tag {
        0x0002 => "Microsoft ADPCM",
        0x0003 => "IEEE float",
        0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10",
        0x0040 | 0x0064 => "G.721 ADPCM",
        0x0045 => "G.726 ADPCM",
        0x0055 => "MPEG layer 3",
        0x0161 => "Windows Media Audio",
        TAG_EXTENSIBLE => "extensible, unknown sub-format",
        _ => "unknown",
    }
}

fn spec(channels: u16) -> hound::WavSpec {
    hound::WavSpec {
        channels,
        sample_rate: RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

fn hound_err(e: hound::Error) -> WavError {
    match e {
        hound::Error::IoError(e) => WavError::Io(e),
        other => WavError::Format(other.to_string()),
    }
}

/// Writes 8 kHz mono PCM16.
pub fn write_wav_pcm16(path: &Path, samples: &[i16]) -> Result<(), WavError> {
    let mut w = hound::WavWriter::create(path, spec(1)).map_err(hound_err)?;
    {
        let mut w16 = w.get_i16_writer(samples.len() as u32);
        for &s in samples {
            w16.write_sample(s);
        }
        w16.flush().map_err(hound_err)?;
    }
    w.finalize().map_err(hound_err)
}

/// Writes 8 kHz stereo PCM16 (left, right); the shorter channel is padded with silence.
pub fn write_wav_stereo(path: &Path, left: &[i16], right: &[i16]) -> Result<(), WavError> {
    let n = left.len().max(right.len());
    let mut w = hound::WavWriter::create(path, spec(2)).map_err(hound_err)?;
    {
        let mut w16 = w.get_i16_writer((2 * n) as u32);
        for i in 0..n {
            w16.write_sample(left.get(i).copied().unwrap_or(0));
            w16.write_sample(right.get(i).copied().unwrap_or(0));
        }
        w16.flush().map_err(hound_err)?;
    }
    w.finalize().map_err(hound_err)
}

/// The 44-byte header of an 8 kHz PCM16 file with `frames` frames of `channels` samples: what a
/// file streamed to disk starts with, rewritten with the final length when it ends. Lengths
/// beyond the format's 4 GiB are clamped.
pub fn pcm16_header(channels: u16, frames: u64) -> [u8; 44] {
    let block = u32::from(channels) * 2;
    let data = u32::try_from(frames.saturating_mul(u64::from(block)))
        .unwrap_or(u32::MAX - 36)
        .min(u32::MAX - 36);
    let mut h = [0u8; 44];
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = h.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(0, b"RIFF");
    put(4, &(36 + data).to_le_bytes());
    put(8, b"WAVEfmt ");
    put(16, &16u32.to_le_bytes());
    put(20, &TAG_PCM.to_le_bytes());
    put(22, &channels.to_le_bytes());
    put(24, &RATE.to_le_bytes());
    put(28, &(RATE * block).to_le_bytes());
    put(32, &(block as u16).to_le_bytes());
    put(34, &16u16.to_le_bytes());
    put(36, b"data");
    put(40, &data.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn streamed_header_reads_back_with_hound() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.wav");
        let mut bytes = pcm16_header(2, 3).to_vec();
        for s in [1i16, -1, 2, -2, 3, -3] {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        std::fs::write(&p, &bytes).unwrap();
        let mut r = hound::WavReader::open(&p).unwrap();
        assert_eq!(r.spec(), spec(2));
        let got: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(got, [1, -1, 2, -2, 3, -3]);
    }

    fn ramp(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((i as f64 * 0.37).sin() * 12000.0 + i as f64) as i16)
            .collect()
    }

    /// A RIFF/WAVE file from raw chunks, each padded to even length unless `pad` is false.
    fn riff(chunks: &[(&[u8; 4], Vec<u8>)], pad: bool) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        for (id, data) in chunks {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            if pad && data.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn fmt(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
        let align = channels * bits / 8;
        let mut f = Vec::new();
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        f.extend_from_slice(&align.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        if tag != TAG_PCM {
            f.extend_from_slice(&0u16.to_le_bytes()); // cbSize of WAVEFORMATEX
        }
        f
    }

    fn read_bytes(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.wav");
        std::fs::write(&p, bytes).unwrap();
        read_wav(&p)
    }

    fn pcm_bytes(s: &[i16]) -> Vec<u8> {
        s.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn pcm16_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        let s = ramp(12345);
        write_wav_pcm16(&p, &s).unwrap();
        assert_eq!(read_wav(&p).unwrap(), s);
        let r = hound::WavReader::open(&p).unwrap();
        assert_eq!(r.spec(), spec(1));
    }

    #[test]
    fn stereo_is_interleaved_and_the_short_side_padded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.wav");
        let (l, r) = (ramp(100), vec![7i16; 60]);
        write_wav_stereo(&p, &l, &r).unwrap();
        let mut rd = hound::WavReader::open(&p).unwrap();
        assert_eq!(rd.spec(), spec(2));
        let all: Vec<i16> = rd.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(all.len(), 200);
        for i in 0..100 {
            assert_eq!(all[2 * i], l[i]);
            assert_eq!(all[2 * i + 1], if i < 60 { 7 } else { 0 });
        }
        // The tools read mono only, and say so.
        let e = read_wav(&p).unwrap_err().to_string();
        assert!(e.contains("2 channels"), "{e}");
    }

    #[test]
    fn wrong_rate_and_channels_are_named_with_the_fix() {
        let bytes = riff(
            &[(b"fmt ", fmt(1, 2, 44_100, 16)), (b"data", vec![0; 400])],
            true,
        );
        let e = read_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("sample rate is 44100 Hz"), "{e}");
        assert!(e.contains("needs 8000 Hz"), "{e}");
        assert!(e.contains("2 channels"), "{e}");
        assert!(e.contains("sox "), "{e}");
        assert!(e.contains("-r 8000 -c 1"), "{e}");
    }

    #[test]
    fn unknown_tags_and_depths_are_named() {
        let e = read_bytes(&riff(
            &[(b"fmt ", fmt(0x55, 1, 8000, 16)), (b"data", vec![0; 10])],
            true,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("format tag 85 (MPEG layer 3)"), "{e}");

        let e = read_bytes(&riff(
            &[(b"fmt ", fmt(1, 1, 8000, 8)), (b"data", vec![0x80; 10])],
            true,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("8-bit PCM"), "{e}");

        let e = read_bytes(&riff(
            &[(b"fmt ", fmt(3, 1, 8000, 32)), (b"data", vec![0; 16])],
            true,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("IEEE float"), "{e}");

        let e = read_bytes(&riff(
            &[(b"fmt ", fmt(7, 1, 8000, 16)), (b"data", vec![0; 16])],
            true,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("G.711 samples are 16-bit"), "{e}");
    }

    #[test]
    fn broken_containers_are_format_errors() {
        let cases: [(Vec<u8>, &str); 5] = [
            (b"RIFF".to_vec(), "too short"),
            (b"OggS\0\0\0\0WAVEfmt ".to_vec(), "no RIFF header"),
            (b"RIFF\0\0\0\0AVI LIST".to_vec(), "not of type WAVE"),
            (
                riff(&[(b"fmt ", fmt(7, 1, 8000, 8))], true),
                "no data chunk",
            ),
            (riff(&[(b"data", vec![1, 2, 3, 4])], true), "no fmt chunk"),
        ];
        for (bytes, want) in cases {
            let e = read_bytes(&bytes).unwrap_err();
            assert!(matches!(e, WavError::Format(_)), "{e}");
            assert!(e.to_string().contains(want), "{e} (wanted {want})");
        }
        let e = read_bytes(&riff(&[(b"fmt ", vec![7, 0, 1, 0])], true)).unwrap_err();
        assert!(e.to_string().contains("fmt chunk is 4 bytes"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_wav(&dir.path().join("missing.wav")).unwrap_err();
        assert!(matches!(e, WavError::Io(_)), "{e}");
    }

    /// G.711 bytes that decode to every code point, in an order that is not monotonic.
    fn g711_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 37 % 256) as u8).collect()
    }

    #[test]
    fn g711_files_with_fact_list_and_odd_chunks_decode_byte_by_byte() {
        for (tag, codec) in [(TAG_MULAW, Codec::Pcmu), (TAG_ALAW, Codec::Pcma)] {
            let data = g711_bytes(1001); // odd: needs a pad byte after it
            let want: Vec<i16> = data.iter().map(|&b| codec.decode(b)).collect();
            for pad in [true, false] {
                let bytes = riff(
                    &[
                        (b"LIST", b"INFOISFT\x03\0\0\0ab\0".to_vec()), // 15 bytes, odd
                        (b"fmt ", fmt(tag, 1, 8000, 8)),
                        (b"fact", 1001u32.to_le_bytes().to_vec()),
                        (b"data", data.clone()),
                        (b"id3 ", vec![9; 7]),
                    ],
                    pad,
                );
                assert_eq!(read_bytes(&bytes).unwrap(), want, "tag {tag} pad {pad}");
            }
        }
    }

    #[test]
    fn extensible_g711_is_read() {
        let mut f = fmt(TAG_EXTENSIBLE, 1, 8000, 8);
        f.truncate(16);
        f.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        f.extend_from_slice(&8u16.to_le_bytes()); // valid bits
        f.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        f.extend_from_slice(&TAG_ALAW.to_le_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71]);
        let data = g711_bytes(300);
        let bytes = riff(&[(b"fmt ", f), (b"data", data.clone())], true);
        let want: Vec<i16> = data.iter().map(|&b| Codec::Pcma.decode(b)).collect();
        assert_eq!(read_bytes(&bytes).unwrap(), want);
    }

    #[test]
    fn truncated_data_yields_the_samples_present() {
        let s = ramp(500);
        let mut bytes = riff(
            &[(b"fmt ", fmt(1, 1, 8000, 16)), (b"data", pcm_bytes(&s))],
            true,
        );
        // The recorder died: 201.5 samples written of the 500 the header promises.
        bytes.truncate(bytes.len() - 2 * 500 + 403);
        assert_eq!(read_bytes(&bytes).unwrap(), s[..201]);

        let data = g711_bytes(80);
        let mut bytes = riff(
            &[(b"fmt ", fmt(7, 1, 8000, 8)), (b"data", data.clone())],
            true,
        );
        bytes.truncate(bytes.len() - 30);
        let want: Vec<i16> = data[..50].iter().map(|&b| Codec::Pcmu.decode(b)).collect();
        assert_eq!(read_bytes(&bytes).unwrap(), want);

        // A streaming writer that never patched the data size.
        let mut bytes = riff(
            &[(b"fmt ", fmt(1, 1, 8000, 16)), (b"data", pcm_bytes(&s))],
            true,
        );
        let at = bytes.len() - 2 * 500 - 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_bytes(&bytes).unwrap(), s);
    }

    #[test]
    fn pcm16_after_an_odd_list_chunk_is_read() {
        let s = ramp(321);
        for pad in [true, false] {
            let bytes = riff(
                &[
                    (b"fmt ", fmt(1, 1, 8000, 16)),
                    (b"LIST", b"INFOICMT\x05\0\0\0hello".to_vec()),
                    (b"data", pcm_bytes(&s)),
                ],
                pad,
            );
            assert_eq!(read_bytes(&bytes).unwrap(), s, "pad {pad}");
        }
    }

    fn sox(args: &[&str]) -> bool {
        Command::new("sox")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Files written by sox, the tool people convert recordings with: its G.711 WAVs (which
    /// carry a fact chunk) decode to the same samples as its raw G.711 bytes.
    #[test]
    fn sox_g711_wavs_match_their_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.wav");
        write_wav_pcm16(&src, &ramp(4000)).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        for (enc, codec) in [("u-law", Codec::Pcmu), ("a-law", Codec::Pcma)] {
            let wav = dir.path().join(format!("{enc}.wav"));
            let raw = dir.path().join(format!("{enc}.raw"));
            if !sox(&["-D", &s(&src), "-e", enc, &s(&wav)])
                || !sox(&["-D", &s(&src), "-t", "raw", "-e", enc, &s(&raw)])
            {
                panic!("these tests need sox (the test script installs it: apt-get install sox)");
            }
            let want: Vec<i16> = std::fs::read(&raw)
                .unwrap()
                .iter()
                .map(|&b| codec.decode(b))
                .collect();
            assert_eq!(want.len(), 4000);
            assert_eq!(read_wav(&wav).unwrap(), want, "{enc}");
        }
    }

    /// sox's own G.711 decoder as the reference for ours.
    #[test]
    fn sox_g711_wavs_decode_as_sox_decodes_them() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.wav");
        write_wav_pcm16(&src, &ramp(4000)).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        for enc in ["u-law", "a-law"] {
            let wav = dir.path().join(format!("{enc}.wav"));
            let back = dir.path().join(format!("{enc}-pcm.wav"));
            if !sox(&["-D", &s(&src), "-e", enc, &s(&wav)])
                || !sox(&[&s(&wav), "-e", "signed-integer", "-b", "16", &s(&back)])
            {
                panic!("these tests need sox (the test script installs it: apt-get install sox)");
            }
            assert_eq!(read_wav(&wav).unwrap(), read_wav(&back).unwrap(), "{enc}");
        }
    }
}
