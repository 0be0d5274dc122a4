//! WAV input/output for the offline tools: 8 kHz mono PCM16 or G.711 in, PCM16 out.

use std::path::Path;

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

/// Reads an 8 kHz mono WAV (PCM16, μ-law or A-law) as linear samples.
pub fn read_wav(path: &Path) -> Result<Vec<i16>, WavError> {
    // Interim PCM16-only reader; the full reader (G.711 WAV, precise errors) replaces it.
    let r = hound::WavReader::open(path).map_err(|e| WavError::Format(e.to_string()))?;
    r.into_samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WavError::Format(e.to_string()))
}

/// Writes 8 kHz mono PCM16.
pub fn write_wav_pcm16(path: &Path, samples: &[i16]) -> Result<(), WavError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w =
        hound::WavWriter::create(path, spec).map_err(|e| WavError::Format(e.to_string()))?;
    for &s in samples {
        w.write_sample(s)
            .map_err(|e| WavError::Format(e.to_string()))?;
    }
    w.finalize().map_err(|e| WavError::Format(e.to_string()))
}

/// Writes 8 kHz stereo PCM16 (left, right); the shorter channel is padded with silence.
pub fn write_wav_stereo(path: &Path, left: &[i16], right: &[i16]) -> Result<(), WavError> {
    let _ = (path, left, right);
    Err(WavError::Unsupported("not implemented".into()))
}
