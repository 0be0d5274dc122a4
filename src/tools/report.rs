//! The talk-off and over-masking report behind `tonewall scan --report`: runs recordings that
//! hold no keys through the relay's own scrubber (as a trunk would send them) and through the
//! auditor's FFT decoder, and counts what either did to them: time masked, masked spans, and
//! digits that are not there. Counts only; a digit found is never named.

use std::path::{Path, PathBuf};

use super::{ScrubOptions, ToolError, scrub_audio};
use crate::dsp::spectrum;
use crate::wav::{WavError, read_wav};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Wav {
        path: PathBuf,
        #[source]
        source: WavError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no .wav files under {0}")]
    Empty(PathBuf),
    #[error(transparent)]
    Scrub(#[from] ToolError),
}

/// One recording's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileFigures {
    pub path: String,
    /// The folder the file sits in, relative to the path given (e.g. `speech`, `music`).
    pub group: String,
    pub seconds: f64,
    /// Time the agent hears something other than the caller (masking and its ramps), in ms.
    pub masked_ms: f64,
    pub masked_percent: f64,
    pub masked_spans: usize,
    /// Digits the relay's capture detector reported: every one is a false digit here.
    pub capture_digits: usize,
    /// Digits the auditor's decoder (`tonewall scan`) found in the recording as it is.
    pub scan_digits: usize,
}

/// Sums over a set of recordings.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Totals {
    pub files: usize,
    pub seconds: f64,
    pub masked_ms: f64,
    pub masked_percent: f64,
    pub masked_spans: usize,
    /// Files with more than 1 % of their time masked.
    pub files_over_1_percent: usize,
    pub worst_file: Option<String>,
    pub worst_percent: f64,
    pub capture_digits: usize,
    pub scan_digits: usize,
}

impl Totals {
    fn of<'a>(files: impl Iterator<Item = &'a FileFigures>) -> Totals {
        let mut t = Totals::default();
        for f in files {
            t.files += 1;
            t.seconds += f.seconds;
            t.masked_ms += f.masked_ms;
            t.masked_spans += f.masked_spans;
            t.capture_digits += f.capture_digits;
            t.scan_digits += f.scan_digits;
            if f.masked_percent > 1.0 {
                t.files_over_1_percent += 1;
            }
            if t.worst_file.is_none() || f.masked_percent > t.worst_percent {
                t.worst_percent = f.masked_percent;
                t.worst_file = Some(f.path.clone());
            }
        }
        t.masked_percent = percent(t.masked_ms, t.seconds);
        t
    }
}

/// The whole report: every file, each group, and all of them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TalkoffReport {
    pub files: Vec<FileFigures>,
    pub groups: Vec<(String, Totals)>,
    pub total: Totals,
}

fn percent(ms: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        ms / (seconds * 10.0)
    } else {
        0.0
    }
}

/// The `.wav` files at `paths` (folders are walked, in name order), each with its group.
pub fn collect_wavs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, ReportError> {
    let mut out = Vec::new();
    for root in paths {
        let before = out.len();
        if root.is_dir() {
            walk(root, root, &mut out)?;
        } else {
            let group = root
                .parent()
                .and_then(Path::file_name)
                .map(|g| g.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((root.clone(), group));
        }
        if out.len() == before {
            return Err(ReportError::Empty(root.clone()));
        }
    }
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, out)?;
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("wav")) {
            let group = p
                .parent()
                .and_then(|d| d.strip_prefix(root).ok())
                .map(|g| g.to_string_lossy().into_owned())
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| ".".to_string());
            out.push((p, group));
        }
    }
    Ok(())
}

/// Figures for one recording.
pub fn file_figures(
    path: &Path,
    group: &str,
    opts: &ScrubOptions,
) -> Result<FileFigures, ReportError> {
    let audio = read_wav(path).map_err(|source| ReportError::Wav {
        path: path.to_path_buf(),
        source,
    })?;
    let scrubbed = scrub_audio(&audio, opts)?;
    let scan = spectrum::fft_decode(&audio, &mut |_| {});
    let seconds = audio.len() as f64 / 8000.0;
    let masked_ms = scrubbed.masked_samples() as f64 / 8.0;
    Ok(FileFigures {
        path: path.display().to_string(),
        group: group.to_string(),
        seconds,
        masked_ms,
        masked_percent: percent(masked_ms, seconds),
        masked_spans: scrubbed.masked_spans.len(),
        capture_digits: scrubbed.digits_detected,
        scan_digits: scan.len(),
    })
}

/// Figures for every file, on `threads` threads; files keep their order.
pub fn talkoff_report(
    files: &[(PathBuf, String)],
    opts: &ScrubOptions,
    threads: usize,
) -> Result<TalkoffReport, ReportError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Vec<(usize, Result<FileFigures, ReportError>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((path, group)) = files.get(i) else {
                            return done;
                        };
                        done.push((i, file_figures(path, group, opts)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut slots: Vec<Option<Result<FileFigures, ReportError>>> =
        (0..files.len()).map(|_| None).collect();
    for (i, r) in results.into_iter().flatten() {
        slots[i] = Some(r);
    }
    let mut figures = Vec::with_capacity(files.len());
    for (slot, (path, _)) in slots.into_iter().zip(files) {
        match slot {
            Some(r) => figures.push(r?),
            None => {
                return Err(ReportError::Io {
                    path: path.clone(),
                    source: std::io::Error::other("worker thread failed"),
                });
            }
        }
    }
    let mut names: Vec<String> = figures.iter().map(|f| f.group.clone()).collect();
    names.sort();
    names.dedup();
    let groups = names
        .into_iter()
        .map(|g| {
            let t = Totals::of(figures.iter().filter(|f| f.group == g));
            (g, t)
        })
        .collect();
    let total = Totals::of(figures.iter());
    Ok(TalkoffReport {
        files: figures,
        groups,
        total,
    })
}

impl TalkoffReport {
    /// The report as a person reads it: a line per file, then each group and the total.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>8} {:>8} {:>6} {:>7} {:>7}  file",
            "seconds", "masked%", "spans", "capture", "scan"
        );
        for f in &self.files {
            let _ = writeln!(
                s,
                "{:>8.1} {:>8.3} {:>6} {:>7} {:>7}  {}",
                f.seconds,
                f.masked_percent,
                f.masked_spans,
                f.capture_digits,
                f.scan_digits,
                f.path
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<10} {:>5} {:>8} {:>8} {:>6} {:>6} {:>8} {:>7} {:>5}",
            "group", "files", "minutes", "masked%", "spans", ">1%", "worst%", "capture", "scan"
        );
        let line = |s: &mut String, name: &str, t: &Totals| {
            let _ = writeln!(
                s,
                "{:<10} {:>5} {:>8.1} {:>8.3} {:>6} {:>6} {:>8.3} {:>7} {:>5}",
                name,
                t.files,
                t.seconds / 60.0,
                t.masked_percent,
                t.masked_spans,
                t.files_over_1_percent,
                t.worst_percent,
                t.capture_digits,
                t.scan_digits
            );
        };
        for (g, t) in &self.groups {
            line(&mut s, g, t);
        }
        line(&mut s, "total", &self.total);
        if let Some(w) = &self.total.worst_file {
            let _ = writeln!(s, "worst file: {w}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digit::Digit;
    use crate::wav::write_wav_pcm16;

    fn sine(hz: &[f64], amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f64 / 8000.0;
                hz.iter()
                    .map(|f| amp * (2.0 * std::f64::consts::PI * f * t).sin())
                    .sum::<f64>() as i16
            })
            .collect()
    }

    #[test]
    fn a_key_in_a_recording_is_counted_by_both_detectors_and_masked() {
        let dir = tempfile::tempdir().unwrap();
        let speech = dir.path().join("speech");
        std::fs::create_dir(&speech).unwrap();
        let (lo, hi) = Digit::ALL[4].freqs();
        let mut keyed = vec![0i16; 4000];
        keyed.extend(sine(&[f64::from(lo), f64::from(hi)], 4000.0, 800));
        keyed.extend(vec![0i16; 4000]);
        write_wav_pcm16(&speech.join("keyed.wav"), &keyed).unwrap();
        write_wav_pcm16(&speech.join("hum.wav"), &sine(&[150.0], 3000.0, 16000)).unwrap();

        let files = collect_wavs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|(_, g)| g == "speech"));
        let r = talkoff_report(&files, &ScrubOptions::default(), 2).unwrap();
        let hum = &r.files[0];
        assert!(hum.path.ends_with("hum.wav"));
        assert_eq!(
            (hum.masked_spans, hum.capture_digits, hum.scan_digits),
            (0, 0, 0)
        );
        let key = &r.files[1];
        assert_eq!((key.capture_digits, key.scan_digits), (1, 1));
        assert_eq!(key.masked_spans, 1);
        // The 100 ms key and its guard zones, over 1.1 s.
        assert!(
            key.masked_ms >= 100.0 && key.masked_ms < 130.0,
            "{}",
            key.masked_ms
        );
        assert_eq!(r.total.files, 2);
        assert_eq!(r.total.capture_digits, 1);
        assert_eq!(r.total.worst_file.as_deref(), Some(key.path.as_str()));
        assert_eq!(r.groups.len(), 1);
        let text = r.to_text();
        assert!(
            text.contains("keyed.wav") && text.contains("total"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["total"]["files"], 2);
    }

    #[test]
    fn an_empty_folder_is_an_error_not_an_empty_report() {
        let dir = tempfile::tempdir().unwrap();
        let e = collect_wavs(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(e.to_string().contains("no .wav files"), "{e}");
    }
}
