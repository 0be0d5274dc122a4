//! Spectrogram pictures for people: renders audio as a PNG chart per signal (time in seconds
//! across, 0–4 kHz up), with the DTMF row and column frequencies marked and a dB colour scale,
//! so a newcomer can see the tones before scrubbing and their absence after. Offline only;
//! allocates freely.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use plotters::coord::Shift;
use plotters::element::BitMapElement;
use plotters::prelude::*;
use plotters::style::FontStyle;
use rustfft::FftPlanner;
use rustfft::num_complex::Complex;

use crate::digit::{HIGH_FREQS, LOW_FREQS};

const FFT: usize = 256;
const HOP: usize = 64;
/// FFT bins up to 4 kHz.
const BINS: usize = FFT / 2;
const RATE: f64 = 8000.0;
const NYQUIST: f64 = RATE / 2.0;
/// The picture's width, and the height of each panel.
pub const WIDTH: u32 = 1400;
pub const PANEL_HEIGHT: u32 = 460;
/// The strip on the right that holds the colour scale and the key.
const LEGEND_WIDTH: u32 = 170;
/// Levels shown, below the loudest bin of the picture.
const RANGE_DB: f64 = 70.0;
/// Bundled so the picture's text needs no system font or fontconfig.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const ROW_COLOUR: RGBColor = RGBColor(90, 200, 255);
const COLUMN_COLOUR: RGBColor = RGBColor(255, 120, 200);

#[derive(Debug, thiserror::Error)]
pub enum SpectrogramError {
    #[error("cannot draw or write the picture: {0}")]
    Draw(String),
    #[error("the bundled font cannot be read")]
    Font,
    #[error("nothing to draw: no audio")]
    Empty,
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> SpectrogramError {
    SpectrogramError::Draw(e.to_string())
}

/// One signal to draw, under a title. `start_s` is the time of its first sample, so a panel cut
/// from the middle of a call shows the call's own clock.
#[derive(Clone, Copy, Debug)]
pub struct Panel<'a> {
    pub title: &'a str,
    pub audio: &'a [i16],
    pub start_s: f64,
}

/// Magnitudes in dB, one column of bins (low→high) per frame of `HOP` samples.
fn frames_db(audio: &[i16], fft: &Arc<dyn rustfft::Fft<f32>>) -> Vec<[f32; BINS]> {
    let window: Vec<f32> = (0..FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / FFT as f32).cos())
        .collect();
    let mut out = Vec::new();
    let mut buf = vec![Complex::new(0.0f32, 0.0); FFT];
    let mut start = 0;
    while !audio.is_empty() && start + FFT <= audio.len().max(FFT) {
        for (i, c) in buf.iter_mut().enumerate() {
            let s = audio.get(start + i).copied().unwrap_or(0);
            *c = Complex::new(f32::from(s) / 32768.0 * window[i], 0.0);
        }
        fft.process(&mut buf);
        let mut col = [0f32; BINS];
        for (k, v) in col.iter_mut().enumerate() {
            *v = 10.0 * (buf[k].norm_sqr() + 1e-12).log10();
        }
        out.push(col);
        start += HOP;
    }
    out
}

/// Dark-to-bright colour ramp over the `RANGE_DB` below the loudest bin (`db` ≤ 0).
fn colour(db: f64) -> RGBColor {
    let t = ((db + RANGE_DB) / RANGE_DB).clamp(0.0, 1.0);
    let r = (255.0 * (1.5 * t).min(1.0)) as u8;
    let g = (255.0 * (2.0 * t - 0.6).clamp(0.0, 1.0)) as u8;
    let b = (255.0 * (0.4 + 0.6 * t - 1.2 * (t - 0.5).max(0.0)).clamp(0.0, 1.0) * t.sqrt()) as u8;
    RGBColor(r, g, b)
}

fn register_font() -> Result<(), SpectrogramError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ok.then_some(()).ok_or(SpectrogramError::Font)
}

/// Writes one PNG of `WIDTH` × `PANEL_HEIGHT`·panels pixels: a spectrogram per panel, stacked
/// top to bottom on one time span, levels relative to the loudest bin of the whole picture.
pub fn write_png(path: &Path, panels: &[Panel<'_>]) -> Result<(), SpectrogramError> {
    let longest = panels.iter().map(|p| p.audio.len()).max().unwrap_or(0);
    if longest == 0 {
        return Err(SpectrogramError::Empty);
    }
    register_font()?;
    let mut planner = FftPlanner::<f32>::new();
    let fft = planner.plan_fft_forward(FFT);
    let frames: Vec<Vec<[f32; BINS]>> = panels.iter().map(|p| frames_db(p.audio, &fft)).collect();
    // Levels relative to the loudest bin, so the picture shows structure whatever the gain.
    let peak = frames
        .iter()
        .flatten()
        .flat_map(|c| c.iter().copied())
        .fold(f32::MIN, f32::max);

    let height = PANEL_HEIGHT * panels.len() as u32;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (charts, legend) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let span = longest as f64 / RATE;
    for ((panel, frames), area) in panels
        .iter()
        .zip(&frames)
        .zip(charts.split_evenly((panels.len(), 1)))
    {
        draw_panel(&root, &area, panel, frames, peak, span)?;
    }
    draw_legend(&legend)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

/// One titled chart: axes in seconds and Hz, the spectrogram as a bitmap in the plotting
/// area, and the DTMF frequencies as faint lines labelled at the right.
fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    panel: &Panel<'_>,
    frames: &[[f32; BINS]],
    peak: f32,
    span: f64,
) -> Result<(), SpectrogramError>
where
    DB::ErrorType: 'static,
{
    let (t0, t1) = (panel.start_s, panel.start_s + span);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FAMILY, 20))
        .margin(10)
        .margin_right(80)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(t0..t1, 0f64..NYQUIST)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("time (s)")
        .y_desc("frequency (Hz)")
        .x_label_formatter(&|t| format!("{t:.1}"))
        .y_labels(9)
        .y_label_formatter(&|f| format!("{f:.0}"))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .draw()
        .map_err(draw_err)?;

    let (w, h) = chart.plotting_area().dim_in_pixel();
    let buf = heat_pixels(frames, panel.audio.len(), span, peak, w, h);
    if let Some(image) = BitMapElement::<_>::with_owned_buffer((t0, NYQUIST), (w, h), buf) {
        chart.plotting_area().draw(&image).map_err(draw_err)?;
    }

    let marks = LOW_FREQS
        .iter()
        .map(|&f| (f, ROW_COLOUR))
        .chain(HIGH_FREQS.iter().map(|&f| (f, COLUMN_COLOUR)));
    for (i, (f, c)) in marks.enumerate() {
        let f = f64::from(f);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(t0, f), (t1, f)],
                c.mix(0.45).stroke_width(1),
            )))
            .map_err(draw_err)?;
        // Two columns of labels: neighbouring row frequencies are closer than a line of text.
        let (x, y) = chart.backend_coord(&(t1, f));
        let dx = if i % 2 == 0 { 6 } else { 40 };
        root.draw(&Text::new(
            format!("{f:.0}"),
            (x + dx, y - 6),
            (FAMILY, 12).into_font().color(&c),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// The spectrogram resampled to the plotting area's `w` × `h` pixels (RGB, rows top down).
/// Time beyond this panel's audio stays black.
fn heat_pixels(
    frames: &[[f32; BINS]],
    samples: usize,
    span: f64,
    peak: f32,
    w: u32,
    h: u32,
) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    let mut buf = vec![0u8; w * h * 3];
    for x in 0..w {
        // The frame whose window is centred nearest this pixel column's time.
        let sample = (x as f64 + 0.5) / w as f64 * span * RATE;
        if sample >= samples as f64 {
            continue;
        }
        let frame = (sample as usize).saturating_sub(FFT / 2) / HOP;
        let Some(col) = frames.get(frame).or(frames.last()) else {
            continue;
        };
        for y in 0..h {
            let hz = NYQUIST * (1.0 - (y as f64 + 0.5) / h as f64);
            let bin = ((hz / NYQUIST * BINS as f64) as usize).min(BINS - 1);
            let RGBColor(r, g, b) = colour(f64::from(col[bin] - peak));
            let at = (y * w + x) * 3;
            buf[at..at + 3].copy_from_slice(&[r, g, b]);
        }
    }
    buf
}

/// The colour scale in dB below the peak, and what the coloured lines mean.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>) -> Result<(), SpectrogramError>
where
    DB::ErrorType: 'static,
{
    let mut bar = ChartBuilder::on(area)
        .caption("level (dB)", (FAMILY, 15))
        .margin_top(30)
        .margin_bottom(110)
        .margin_left(10)
        .margin_right(80)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..1f64, -RANGE_DB..0f64)
        .map_err(draw_err)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(8)
        .y_label_formatter(&|d| format!("{d:.0}"))
        .label_style((FAMILY, 12))
        .draw()
        .map_err(draw_err)?;
    let steps = (RANGE_DB * 2.0) as usize;
    bar.draw_series((0..steps).map(|i| {
        let lo = -RANGE_DB + i as f64 * 0.5;
        Rectangle::new([(0.0, lo), (1.0, lo + 0.5)], colour(lo + 0.25).filled())
    }))
    .map_err(draw_err)?;

    let (_, h) = area.dim_in_pixel();
    let key_top = h as i32 - 95;
    for (i, (text, c)) in [
        ("0 dB: the loudest bin", BLACK),
        ("DTMF row (Hz)", ROW_COLOUR),
        ("DTMF column (Hz)", COLUMN_COLOUR),
    ]
    .into_iter()
    .enumerate()
    {
        let y = key_top + 22 * i as i32;
        if i > 0 {
            area.draw(&PathElement::new(
                vec![(10, y + 7), (30, y + 7)],
                c.stroke_width(2),
            ))
            .map_err(draw_err)?;
        }
        let x = if i > 0 { 36 } else { 10 };
        area.draw(&Text::new(text, (x, y), (FAMILY, 12).into_font().color(&c)))
            .map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info, buf)
    }

    #[test]
    fn a_tone_panel_has_a_bright_row_and_a_silent_one_none() {
        let tone: Vec<i16> = (0..8000)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect();
        let silence = vec![0i16; 8000];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.png");
        let panels = [
            Panel {
                title: "caller",
                audio: &tone,
                start_s: 2.0,
            },
            Panel {
                title: "agent",
                audio: &silence,
                start_s: 2.0,
            },
        ];
        write_png(&path, &panels).unwrap();
        let (info, buf) = decode(&path);
        assert_eq!((info.width, info.height), (WIDTH, 2 * PANEL_HEIGHT));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        // The top of the colour ramp is yellow: red and green high, blue low (white is not).
        let w = info.width as usize;
        let hot = |y: usize, x: usize| {
            let p = &buf[(y * w + x) * 3..(y * w + x) * 3 + 3];
            p[0] > 200 && p[1] > 150 && p[2] < 180
        };
        let x = (WIDTH - LEGEND_WIDTH) as usize / 2;
        let ph = PANEL_HEIGHT as usize;
        let hot_rows: Vec<usize> = (0..ph).filter(|&y| hot(y, x)).collect();
        assert!(!hot_rows.is_empty(), "the 1 kHz tone shows");
        assert!(hot_rows.len() < 20, "only around its row: {hot_rows:?}");
        assert!(!(ph..2 * ph).any(|y| hot(y, x)), "silence stays dark");
    }

    #[test]
    fn no_audio_is_an_error_not_an_empty_picture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.png");
        let panels = [Panel {
            title: "nothing",
            audio: &[],
            start_s: 0.0,
        }];
        assert!(matches!(
            write_png(&path, &panels),
            Err(SpectrogramError::Empty)
        ));
        assert!(!path.exists());
    }
}
