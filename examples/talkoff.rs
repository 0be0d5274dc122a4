//! Talk-off measurement: runs the strict detector and the presence (masking) detector over
//! recordings that contain no DTMF and reports false digits and falsely masked time.
//!
//! cargo run --release --example talkoff -- fixtures/*.wav   (or any 8 kHz WAV files: speech, music)

use tonewall::dsp::dtmf::{DetectorConfig, DtmfDetector, PresenceConfig, PresenceDetector};

fn main() {
    let mut total_digits = 0;
    let mut total_masked = 0usize;
    let mut total_samples = 0usize;
    for path in std::env::args().skip(1) {
        let audio = match tonewall::wav::read_wav(std::path::Path::new(&path)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let mut dcfg = DetectorConfig::default();
        if let Some(v) = std::env::var("DRATIO")
            .ok()
            .and_then(|v| v.parse::<f32>().ok())
        {
            dcfg.min_energy_ratio = v;
        }
        let mut det = DtmfDetector::new(dcfg);
        let mut digits = Vec::new();
        det.process(&audio, &mut |d| digits.push(d));
        det.finish(&mut |d| digits.push(d));
        let mut cfg = PresenceConfig::default();
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f32>().ok());
        if let Some(v) = env("RATIO") {
            cfg.min_energy_ratio = v;
        }
        if let Some(v) = env("SHARE") {
            cfg.min_tone_share = v;
        }
        if let Some(v) = env("LEVEL") {
            cfg.min_level_dbm0 = v;
        }
        let mut pres = PresenceDetector::new(cfg);
        let mut mask = vec![false; audio.len()];
        pres.process(&audio, &mut mask);
        let masked = mask.iter().filter(|&&m| m).count();
        println!(
            "{path}: {:.1} s, {} digits, masked {:.0} ms ({:.3} %)",
            audio.len() as f64 / 8000.0,
            digits.len(),
            masked as f64 / 8.0,
            100.0 * masked as f64 / audio.len().max(1) as f64
        );
        for d in &digits {
            println!(
                "    digit at {:.3}-{:.3} s",
                d.start as f64 / 8000.0,
                d.end as f64 / 8000.0
            );
        }
        total_digits += digits.len();
        total_masked += masked;
        total_samples += audio.len();
    }
    println!(
        "total: {:.1} s, {total_digits} false digits, {:.2} s masked ({:.3} %)",
        total_samples as f64 / 8000.0,
        total_masked as f64 / 8000.0,
        100.0 * total_masked as f64 / total_samples.max(1) as f64
    );
}
