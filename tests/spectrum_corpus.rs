//! Talk-off of the auditor's FFT decoder and residue scanner on a corpus of real recordings
//! (speech, music, telephony tones) that holds no DTMF: every report is a false detection.
//!
//! The corpus is not in the repository (licences, size). Point `TONEWALL_CORPUS` at a directory
//! of 8 kHz mono WAVs, searched recursively, and run
//! `TONEWALL_CORPUS=/path/to/corpus cargo test --test spectrum_corpus -- --ignored --nocapture`.

use std::path::{Path, PathBuf};

use tonewall::dsp::spectrum;

fn wavs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            wavs(&p, out);
        } else if p.extension().is_some_and(|e| e == "wav") {
            out.push(p);
        }
    }
}

#[test]
#[ignore = "needs TONEWALL_CORPUS pointing at a directory of real recordings"]
fn no_digit_and_no_residue_on_real_recordings() {
    let dir = std::env::var("TONEWALL_CORPUS").expect("set TONEWALL_CORPUS");
    let mut files = Vec::new();
    wavs(Path::new(&dir), &mut files);
    assert!(!files.is_empty(), "no WAV files under {dir}");
    let (mut seconds, mut digits, mut fragments) = (0.0, 0, 0);
    for f in &files {
        let audio = tonewall::wav::read_wav(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        seconds += audio.len() as f64 / 8000.0;
        let d = spectrum::fft_decode(&audio, &mut |_| {});
        let r = spectrum::sensitive_scan(&audio, &mut |_| {});
        println!(
            "{}: {} digits, {} residue fragments",
            f.display(),
            d.len(),
            r.len()
        );
        for x in &r {
            println!(
                "    {:9.1} ms {:5.1} ms  {:4.0} + {:4.0} Hz  {:5.1} dBm0",
                x.start_ms,
                x.end_ms - x.start_ms,
                x.low_hz,
                x.high_hz,
                x.level_dbm0
            );
        }
        digits += d.len();
        fragments += r.len();
    }
    println!(
        "{} files, {:.1} min: {digits} digits, {fragments} residue fragments",
        files.len(),
        seconds / 60.0
    );
    assert_eq!((digits, fragments), (0, 0));
}
