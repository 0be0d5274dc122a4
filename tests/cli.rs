//! The tools as a user runs them: `tonewall demo` (over SIP on loopback, and offline), and
//! `tonewall scrub` and `tonewall scan` on WAV files.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn tonewall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tonewall"))
        .args(args)
        .output()
        .expect("run tonewall")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Caller audio: the test card keyed in-band over quiet speech.
fn write_caller(path: &Path) -> usize {
    let (mut sig, spans) = tones(&card_keys(), ToneParams::default(), 800.0, 11);
    sig.extend(std::iter::repeat_n(0.0, 8000));
    mix_under(&mut sig, &fixture("speech_en_hello.wav"), -8.0);
    tonewall::wav::write_wav_pcm16(path, &to_i16(&sig)).unwrap();
    spans.len()
}

#[test]
fn scan_finds_the_card_in_the_caller_audio_with_times() {
    let dir = tempfile::tempdir().unwrap();
    let caller = dir.path().join("caller.wav");
    let n = write_caller(&caller);
    let o = tonewall(&["scan", caller.to_str().unwrap(), "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "scan exits 1 when it finds DTMF: {}",
        text(&o)
    );
    let found: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), n);
    let keys: String = found.iter().map(|d| d["digit"].as_str().unwrap()).collect();
    assert_eq!(keys, card_keys());
    // First key starts after the 800 ms lead-in and lasts about 60 ms.
    let start = found[0]["start_ms"].as_f64().unwrap();
    let end = found[0]["end_ms"].as_f64().unwrap();
    assert!((start - 800.0).abs() < 15.0, "start {start}");
    assert!(
        (end - start - 60.0).abs() < 20.0,
        "duration {}",
        end - start
    );
}

#[test]
fn scrub_writes_agent_audio_that_scans_clean_and_prints_no_digit() {
    let dir = tempfile::tempdir().unwrap();
    let caller = dir.path().join("caller.wav");
    let n = write_caller(&caller);
    for extra in [
        &[][..],
        &["--events"][..],
        &["--codec", "pcma", "--mask", "tone"][..],
    ] {
        let agent = dir.path().join("agent.wav");
        let mut args = vec!["scrub", caller.to_str().unwrap(), agent.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = tonewall(&args);
        let out = text(&o);
        assert!(o.status.success(), "{extra:?}: {out}");
        assert!(
            out.contains(&format!("digits detected: {n}")),
            "{extra:?}: {out}"
        );
        assert!(out.contains("added delay:     10.0 ms"), "{out}");
        assert!(
            !out.contains(TEST_CARD) && !out.contains("4111"),
            "digits printed: {out}"
        );

        let o = tonewall(&["scan", agent.to_str().unwrap(), "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
        let o = tonewall(&["scan", agent.to_str().unwrap(), "--sensitive"]);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains("no dual-tone residue"));
    }
}

#[test]
fn scrub_of_audio_without_keys_reports_zeros_never_negative() {
    let dir = tempfile::tempdir().unwrap();
    let caller = dir.path().join("speech.wav");
    let mut sig = vec![0.0; 8000];
    mix_under(&mut sig, &fixture("speech_en_hello.wav"), -8.0);
    tonewall::wav::write_wav_pcm16(&caller, &to_i16(&sig)).unwrap();
    let agent = dir.path().join("agent.wav");
    let o = tonewall(&["scrub", caller.to_str().unwrap(), agent.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("digits detected: 0"), "{out}");
    assert!(out.contains("masked spans:    0 (0.0 ms in all)"), "{out}");
    assert!(!out.contains("-0"), "a negative zero in the report: {out}");
}

#[test]
fn sensitive_scan_reports_a_short_fragment_that_the_decoder_ignores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fragment.wav");
    let p = ToneParams {
        tone_ms: 10.0,
        ..ToneParams::default()
    };
    let (mut sig, _) = tones("7", p, 500.0, 5);
    sig.extend(std::iter::repeat_n(0.0, 4000));
    tonewall::wav::write_wav_pcm16(&path, &to_i16(&sig)).unwrap();
    let o = tonewall(&["scan", path.to_str().unwrap(), "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "[]",
        "10 ms is not a digit"
    );
    let o = tonewall(&["scan", path.to_str().unwrap(), "--sensitive", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let found: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = &found.as_array().unwrap()[0];
    let start = first["start_ms"].as_f64().unwrap();
    assert!((start - 500.0).abs() < 15.0, "fragment at {start} ms");
    assert!((first["low_hz"].as_f64().unwrap() - 852.0).abs() < 40.0);
    assert!((first["high_hz"].as_f64().unwrap() - 1209.0).abs() < 60.0);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = tonewall(&["scan", dir.path().join("missing.wav").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing.wav"), "{}", text(&o));

    let stereo = dir.path().join("cd.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&stereo, spec).unwrap();
    for _ in 0..1000 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let o = tonewall(&[
        "scrub",
        stereo.to_str().unwrap(),
        dir.path().join("o.wav").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(msg.contains("8000") && msg.contains("44100"), "{msg}");

    let caller = dir.path().join("caller.wav");
    write_caller(&caller);
    let o = tonewall(&[
        "scrub",
        caller.to_str().unwrap(),
        dir.path().join("o.wav").to_str().unwrap(),
        "--delay-ms",
        "50",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("delay"), "{}", text(&o));
}

/// The first number after `prefix` in `out`.
fn number_after(out: &str, prefix: &str) -> usize {
    let at = out
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in:\n{out}"))
        + prefix.len();
    out[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?}:\n{out}"))
}

#[test]
fn demo_over_sip_keeps_every_key_from_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let o = tonewall(&["demo", "--out", out_dir.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // The loop model over real SIP: tonewall answered the transferred call, read the locator,
    // called the agent back with the agent and locator headers, and both ends were hung up.
    assert!(
        out.contains("tonewall answers itself (100 Trying, 200 OK)"),
        "{out}"
    );
    let locator = out
        .split("locator ")
        .nth(1)
        .and_then(|r| r.get(..4))
        .expect("the session's locator is printed");
    assert!(locator.bytes().all(|b| b.is_ascii_digit()), "{out}");
    assert!(
        out.contains(&format!(
            "arrives with X-Agent: 7001 and X-Locator: {locator}"
        )),
        "{out}"
    );
    assert!(out.contains("the trunk sends BYE and gets 200"), "{out}");
    assert!(out.contains("BYE received, answered 200 OK"), "{out}");
    // Media crossed, the events did not.
    let sent = number_after(&out, "The trunk sent ");
    let received = number_after(&out, "the agent received ");
    let events = number_after(&out, "packets (");
    assert!(events > 0 && sent > events, "{out}");
    assert_eq!(received, sent, "one packet out for each packet in: {out}");
    assert!(
        out.contains(&format!("0 of {events} telephone-events arrived")),
        "{out}"
    );
    // The payment: captured from the call, sealed, unlocked once, refused the second time.
    for line in [
        "capture: pan complete: Visa •••• 1111",
        "payment session: sealed",
        "): Visa •••• 1111,",
        "is refused: 410 already_unlocked",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    // The decoders: every key on the caller's side, nothing on the agent's.
    let keys = format!("{TEST_CARD}#{TEST_EXPIRY}#{TEST_CVV}#");
    assert!(
        out.contains(&format!(
            "caller's side hears {} keys, all of them in order",
            2 * keys.len()
        )),
        "{out}"
    );
    assert!(
        out.contains("it hears 0 digits, the residue scanner finds 0 dual-tone fragments"),
        "{out}"
    );
    assert!(
        out.contains(
            "Result: no digit reached the agent; the card reached the payment integration"
        ),
        "{out}"
    );
    assert!(out.contains("100.00 % of its samples bit-exact"), "{out}");
    // Ports and ids are random numbers; a run of the card's digits is not.
    assert!(!out.contains("411111"), "digits printed: {out}");

    // The files are there, and the auditor's scan agrees with the demo.
    let png = std::fs::read(out_dir.join("spectrogram.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let caller = out_dir.join("caller.wav");
    let agent = out_dir.join("agent.wav");
    let o = tonewall(&["scan", caller.to_str().unwrap(), "--json"]);
    let found: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let digits: String = found
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, format!("{keys}{keys}"));
    let o = tonewall(&["scan", agent.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let heard = tonewall::wav::read_wav(&agent).unwrap();
    assert!(
        heard.len() > 8000 * 10,
        "agent audio is {} samples",
        heard.len()
    );
}

#[test]
fn offline_demo_still_runs_the_media_path() {
    let dir = tempfile::tempdir().unwrap();
    let o = tonewall(&["demo", "--offline", "--out", dir.path().to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Result: no digit reached the agent."), "{out}");
    for f in [
        "caller.wav",
        "agent_inband.wav",
        "agent_events.wav",
        "spectrogram.png",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
}
