//! Spectrogram pictures for people: renders audio as a PNG (time across, 0–4 kHz up), with the
//! DTMF frequencies marked, so a newcomer can see the tones before scrubbing and their absence
//! after. Offline only; allocates freely.

use std::io::Write;
use std::sync::Arc;

use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

use crate::digit::{HIGH_FREQS, LOW_FREQS};

const FFT: usize = 256;
const HOP: usize = 64;
/// Pixel rows per panel: one per FFT bin up to 4 kHz.
const ROWS: usize = FFT / 2;
const GAP: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum SpectrogramError {
    #[error("cannot write the picture: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode the picture: {0}")]
    Png(#[from] png::EncodingError),
    #[error("nothing to draw: no audio")]
    Empty,
}

/// Magnitudes in dB (rows = bins low→high, columns = frames).
fn frames_db(audio: &[i16], fft: &Arc<dyn rustfft::Fft<f32>>) -> Vec<[f32; ROWS]> {
    let window: Vec<f32> = (0..FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / FFT as f32).cos())
        .collect();
    let mut out = Vec::new();
    let mut buf = vec![Complex::new(0.0f32, 0.0); FFT];
    let mut start = 0;
    while start + FFT <= audio.len().max(FFT) {
        for (i, c) in buf.iter_mut().enumerate() {
            let s = audio.get(start + i).copied().unwrap_or(0);
            *c = Complex::new(f32::from(s) / 32768.0 * window[i], 0.0);
        }
        fft.process(&mut buf);
        let mut col = [0f32; ROWS];
        for (k, v) in col.iter_mut().enumerate() {
            *v = 10.0 * (buf[k].norm_sqr() + 1e-12).log10();
        }
        out.push(col);
        start += HOP;
    }
    out
}

/// Dark-to-bright colour ramp over the 70 dB below the loudest bin of the picture.
fn colour(db: f32) -> [u8; 3] {
    let t = ((db + 70.0) / 70.0).clamp(0.0, 1.0);
    let r = (255.0 * (1.5 * t).min(1.0)) as u8;
    let g = (255.0 * (2.0 * t - 0.6).clamp(0.0, 1.0)) as u8;
    let b = (255.0 * (0.4 + 0.6 * t - 1.2 * (t - 0.5).max(0.0)).clamp(0.0, 1.0) * t.sqrt()) as u8;
    [r, g, b]
}

/// Writes one PNG with a panel per (label-less) signal, stacked top to bottom, sharing a time
/// axis. DTMF frequencies are marked with faint ticks at the left edge of each panel.
pub fn write_png(path: &std::path::Path, panels: &[&[i16]]) -> Result<(), SpectrogramError> {
    let mut planner = FftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(FFT);
    let cols: Vec<Vec<[f32; ROWS]>> = panels.iter().map(|a| frames_db(a, &fft)).collect();
    let width = cols.iter().map(Vec::len).max().unwrap_or(0);
    if width == 0 {
        return Err(SpectrogramError::Empty);
    }
    // Levels relative to the loudest bin, so the picture shows structure whatever the gain.
    let peak = cols
        .iter()
        .flatten()
        .flat_map(|c| c.iter().copied())
        .fold(f32::MIN, f32::max);
    let width = width + 8;
    let height = panels.len() * (ROWS + GAP);
    let mut img = vec![0u8; width * height * 3];
    let dtmf_rows: Vec<usize> = LOW_FREQS
        .iter()
        .chain(HIGH_FREQS.iter())
        .map(|f| (f / 4000.0 * ROWS as f32).round() as usize)
        .collect();
    for (p, frames) in cols.iter().enumerate() {
        let top = p * (ROWS + GAP);
        for row in 0..ROWS {
            let bin = ROWS - 1 - row;
            let y = top + row;
            for x in 0..width {
                let px = &mut img[(y * width + x) * 3..(y * width + x) * 3 + 3];
                if x < 8 {
                    if dtmf_rows.contains(&bin) {
                        px.copy_from_slice(&[90, 200, 255]);
                    }
                    continue;
                }
                if let Some(col) = frames.get(x - 8) {
                    px.copy_from_slice(&colour(col[bin] - peak));
                }
            }
        }
    }
    let file = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::new(file);
    {
        let mut enc = png::Encoder::new(&mut w, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&img)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_shows_as_a_bright_row_at_its_frequency() {
        let tone: Vec<i16> = (0..8000)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect();
        let silence = vec![0i16; 8000];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.png");
        write_png(&path, &[&tone, &silence]).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.height as usize, 2 * (ROWS + GAP));
        let w = info.width as usize;
        let lum =
            |y: usize, x: usize| buf[(y * w + x) * 3] as u32 + buf[(y * w + x) * 3 + 1] as u32;
        let row_1k = ROWS - 1 - (1000.0 / 4000.0 * ROWS as f32).round() as usize;
        let x = w / 2;
        assert!(
            lum(row_1k, x) > lum(row_1k - 20, x) + 100,
            "1 kHz row stands out"
        );
        assert!(lum(ROWS + GAP + row_1k, x) < 50, "silence panel is dark");
    }
}
