//! The strict detector against ITU-T Q.24's accept and reject figures and beyond, and talk-off
//! on the real speech and music clips in `fixtures/` (issue 2, checks 1-3).

mod common;

use common::*;
use tonewall::digit::Digit;
use tonewall::dsp::dtmf::{DetectorConfig, DigitEvent, DtmfDetector};
use tonewall::dsp::g711::Codec;

fn detect(audio: &[i16]) -> Vec<DigitEvent> {
    let mut det = DtmfDetector::new(DetectorConfig::default());
    let mut out = Vec::new();
    // Packet-sized chunks, as the relay feeds it.
    for c in audio.chunks(160) {
        det.process(c, &mut |e| out.push(e));
    }
    det.finish(&mut |e| out.push(e));
    out
}

fn all_keys() -> String {
    Digit::ALL.iter().map(|d| d.reveal()).collect()
}

fn keys_of(found: &[DigitEvent]) -> String {
    found.iter().map(|e| e.digit.reveal()).collect()
}

#[test]
fn accepts_all_keys_across_the_q24_matrix() {
    let mut cases = 0;
    for level in [0.0, -12.0, -24.0, -36.0] {
        for twist in [-8.0, -4.0, 0.0, 2.0, 4.0] {
            for offset in [-0.015, 0.0, 0.015] {
                for codec in [None, Some(Codec::Pcmu), Some(Codec::Pcma)] {
                    let p = ToneParams {
                        level_dbm0: level,
                        twist_db: twist,
                        offset,
                        tone_ms: 40.0,
                        pause_ms: 40.0,
                    };
                    let (sig, spans) = tones(&all_keys(), p, 100.0, cases);
                    let mut audio = to_i16(&sig);
                    if let Some(c) = codec {
                        audio = g711_round_trip(&audio, c);
                    }
                    let found = detect(&audio);
                    let label = format!("{level} dBm0, twist {twist}, offset {offset}, {codec:?}");
                    assert_eq!(keys_of(&found), all_keys(), "{label}");
                    for (f, s) in found.iter().zip(&spans) {
                        assert!(f.start.abs_diff(s.start) <= 16, "{label}: start");
                        assert!(f.end.abs_diff(s.end) <= 16, "{label}: end");
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 180);
}

#[test]
fn accepts_keys_in_white_noise_at_15_db_snr() {
    for (i, level) in [-6.0, -20.0, -30.0].into_iter().enumerate() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let p = ToneParams {
                level_dbm0: level,
                tone_ms: 40.0,
                pause_ms: 40.0,
                ..ToneParams::default()
            };
            let (mut sig, spans) = tones(&all_keys(), p, 100.0, 50 + i as u64);
            add_noise(&mut sig, &spans, 15.0, 7 + i as u64);
            let audio = g711_round_trip(&to_i16(&sig), codec);
            assert_eq!(
                keys_of(&detect(&audio)),
                all_keys(),
                "{level} dBm0 in noise, {codec:?}"
            );
        }
    }
}

#[test]
fn rejects_what_q24_says_is_not_a_digit() {
    let reject = |label: &str, p: ToneParams| {
        let (sig, _) = tones(&all_keys(), p, 100.0, 9);
        for codec in [None, Some(Codec::Pcmu), Some(Codec::Pcma)] {
            let mut audio = to_i16(&sig);
            if let Some(c) = codec {
                audio = g711_round_trip(&audio, c);
            }
            let found = detect(&audio);
            assert!(
                found.is_empty(),
                "{label} {codec:?}: {} digits",
                found.len()
            );
        }
    };
    for offset in [-0.035, 0.035, -0.05, 0.05] {
        reject(
            &format!("offset {offset}"),
            ToneParams {
                offset,
                level_dbm0: -10.0,
                ..ToneParams::default()
            },
        );
    }
    for ms in [10.0, 20.0, 23.0] {
        reject(
            &format!("{ms} ms tones"),
            ToneParams {
                tone_ms: ms,
                pause_ms: 60.0,
                ..ToneParams::default()
            },
        );
    }
    for level in [-55.0, -60.0] {
        reject(
            &format!("{level} dBm0"),
            ToneParams {
                level_dbm0: level,
                ..ToneParams::default()
            },
        );
    }
}

/// `freqs` summed for `ms`, each at `dbm0`.
fn steady(freqs: &[f64], dbm0: f64, ms: f64) -> Vec<i16> {
    let a = DBM0_PEAK * 10f64.powf(dbm0 / 20.0);
    let n = (ms * RATE / 1000.0) as usize;
    let sig: Vec<f64> = (0..n)
        .map(|i| {
            freqs
                .iter()
                .map(|f| a * (2.0 * std::f64::consts::PI * f * i as f64 / RATE + 0.3).sin())
                .sum()
        })
        .collect();
    to_i16(&sig)
}

#[test]
fn rejects_single_tones_dial_tone_and_off_grid_pairs() {
    let mut cases: Vec<(String, Vec<f64>)> = Vec::new();
    for f in [
        697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0, 1000.0,
    ] {
        cases.push((format!("single {f}"), vec![f]));
    }
    cases.push(("dial tone 350+440".into(), vec![350.0, 440.0]));
    cases.push(("UK dial tone 350+450".into(), vec![350.0, 450.0]));
    cases.push(("ringback 440+480".into(), vec![440.0, 480.0]));
    cases.push(("off grid 600+1000".into(), vec![600.0, 1000.0]));
    cases.push(("off grid 650+1100".into(), vec![650.0, 1100.0]));
    cases.push(("off grid 1000+1800".into(), vec![1000.0, 1800.0]));
    cases.push(("between rows 733+1272".into(), vec![733.0, 1272.0]));
    for (label, f) in cases {
        for level in [-5.0, -20.0] {
            let audio = steady(&f, level, 500.0);
            let found = detect(&audio);
            assert!(
                found.is_empty(),
                "{label} at {level}: {} digits",
                found.len()
            );
        }
    }
}

#[test]
fn talk_off_no_digit_in_real_speech_and_music() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut clips = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wav") {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let audio = fixture(&name);
            let found = detect(&audio);
            assert!(found.is_empty(), "{name}: {} false digits", found.len());
            clips += 1;
        }
    }
    assert!(
        clips >= 2,
        "talk-off needs speech and music clips in fixtures/"
    );
}
