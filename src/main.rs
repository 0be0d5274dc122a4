//! The `tonewall` command line: parses arguments, loads input and starts the tools and shells.
//! This is the binary edge, the only place `anyhow` is used.

//!
//! The offline subcommands (`demo`, `scrub`, `scan`) exist only with the `tools` feature; a
//! relay built without it has `run` alone.

#[cfg(feature = "tools")]
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
#[cfg(feature = "tools")]
use clap::ValueEnum;
use clap::{Parser, Subcommand};
#[cfg(feature = "tools")]
use tonewall::{
    dsp::{g711::Codec, mask::MaskKind, spectrum},
    tools::{ScrubOptions, scrub_audio},
    wav,
};

#[derive(Parser)]
#[command(
    name = "tonewall",
    version,
    about = "SIP/RTP relay that keeps card digits out of the contact centre"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: SIP on the configured address, media relayed and scrubbed, control API.
    Run {
        /// Config file (TOML); without it the built-in defaults, same as config/tonewall.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    #[cfg(feature = "tools")]
    /// Run a payment call through tonewall over SIP on loopback and show that no digit reaches the agent.
    Demo {
        /// Folder for the audio and the spectrogram.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        /// Only the media path, in process, without SIP or sockets.
        #[arg(long)]
        offline: bool,
    },
    #[cfg(feature = "tools")]
    /// Run a recording through the relay's scrubber as a trunk would send it; write what the agent hears.
    Scrub {
        /// Caller audio: 8 kHz mono WAV, PCM16 or G.711.
        input: PathBuf,
        /// Agent-side audio to write (8 kHz mono PCM16 WAV).
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = CodecArg::Pcmu)]
        codec: CodecArg,
        #[arg(long, value_enum, default_value_t = MaskArg::Noise)]
        mask: MaskArg,
        /// Delay line in ms (look-ahead for masking); default is the detector's (10 ms).
        #[arg(long)]
        delay_ms: Option<f64>,
        /// Packet duration in ms.
        #[arg(long, default_value_t = 20)]
        ptime: usize,
        /// Send keys as RFC 4733 telephone-events instead of in-band tones.
        #[arg(long)]
        events: bool,
    },
    #[cfg(feature = "tools")]
    /// Audit a recording for DTMF: digits with start and end times, or any dual-tone residue.
    /// With --report: talk-off and over-masking of recordings that hold no keys.
    Scan {
        /// The recording (8 kHz mono WAV); with --report, any number of files and folders.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Look for any fragment of dual-tone energy, however short (FFT analysis).
        #[arg(long, conflicts_with = "report")]
        sensitive: bool,
        /// Run every file through the scrubber (as `tonewall scrub` does, default settings) and
        /// the decoder, and report masked time, masked spans and false digits per file, per
        /// folder and in total. Every digit found is a false one: the recordings hold no keys.
        #[arg(long)]
        report: bool,
    },
}

#[cfg(feature = "tools")]
#[derive(Clone, Copy, ValueEnum)]
enum CodecArg {
    Pcmu,
    Pcma,
}

#[cfg(feature = "tools")]
#[derive(Clone, Copy, ValueEnum)]
enum MaskArg {
    Silence,
    Noise,
    Tone,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        #[cfg(feature = "tools")]
        Command::Demo { out, offline } => demo(out, offline),
        #[cfg(feature = "tools")]
        Command::Scrub {
            input,
            output,
            codec,
            mask,
            delay_ms,
            ptime,
            events,
        } => scrub(input, output, codec, mask, delay_ms, ptime, events),
        #[cfg(feature = "tools")]
        Command::Scan {
            files,
            json,
            sensitive,
            report,
        } => {
            if report {
                return scan_report(&files, json);
            }
            let [file] = <[PathBuf; 1]>::try_from(files).map_err(|_| {
                anyhow::anyhow!(
                    "scan takes one recording; use --report for several files or folders"
                )
            })?;
            scan(file, json, sensitive)
        }
    }
}

#[cfg(feature = "tools")]
fn demo(out: PathBuf, offline: bool) -> Result<()> {
    let mut stdout = std::io::stdout();
    let summary = if offline {
        tonewall::demo::run_offline(&out, &mut stdout)?
    } else {
        // Before any other thread: the SIP demo sets its relay's token and key in the
        // environment.
        tonewall::demo::run(&out, &mut stdout)?
    };
    let paid = summary.card_sealed && summary.card_unlocked && summary.second_unlock_refused;
    if summary.decoded_on_agent_side + summary.residue_on_agent_side + summary.events_reaching_agent
        > 0
        || (!offline && !paid)
    {
        std::process::exit(1);
    }
    Ok(())
}

fn run(config: Option<PathBuf>) -> Result<()> {
    // First of all: the vault's key and the cards it opens will live in this process's memory.
    tonewall::process::harden().context("making the process non-dumpable")?;
    let config = match config {
        Some(path) => tonewall::config::Config::load(&path)?,
        None => tonewall::config::Config::default(),
    };
    // SAFETY: no other thread exists yet (the logger, the runtime and the relay's media
    // threads all start below), so nothing reads the environment while it changes.
    unsafe {
        tonewall::process::take_secret_env(&[
            config.vault.master_key_env.as_str(),
            config.api.tokens_env.as_str(),
        ]);
    }
    tonewall::logging::init(&config.log)?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        use futures_util::stream;
        use tokio::signal::unix::{SignalKind, signal};
        use tonewall::net::run::Stop;
        // SIGTERM (systemctl stop) drains: no new calls, the calls in progress may finish
        // within sip.drain_s. SIGINT (Ctrl-C), or a second SIGTERM, hangs up at once.
        let term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        let stops = stream::unfold((term, int), |(mut term, mut int)| async move {
            let stop = tokio::select! {
                Some(()) = term.recv() => {
                    tracing::info!("SIGTERM: draining (again: hang up at once)");
                    Stop::Drain
                }
                Some(()) = int.recv() => {
                    tracing::info!("SIGINT: hanging up and shutting down");
                    Stop::Now
                }
                else => return None,
            };
            Some((stop, (term, int)))
        });
        tonewall::net::run::run_until(config, stops)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(())
}

#[cfg(feature = "tools")]
fn scrub(
    input: PathBuf,
    output: PathBuf,
    codec: CodecArg,
    mask: MaskArg,
    delay_ms: Option<f64>,
    ptime: usize,
    events: bool,
) -> Result<()> {
    let audio = wav::read_wav(&input).with_context(|| format!("reading {}", input.display()))?;
    let delay = match delay_ms {
        Some(ms) if !(0.0..=20.0).contains(&ms) => {
            anyhow::bail!("--delay-ms must be between 0 and 20 ms, got {ms}")
        }
        Some(ms) => Some((ms * 8.0).round() as usize),
        None => None,
    };
    let opts = ScrubOptions {
        codec: match codec {
            CodecArg::Pcmu => Codec::Pcmu,
            CodecArg::Pcma => Codec::Pcma,
        },
        mask: match mask {
            MaskArg::Silence => MaskKind::Silence,
            MaskArg::Noise => MaskKind::Noise,
            MaskArg::Tone => MaskKind::Tone,
        },
        delay,
        ptime: ptime.saturating_mul(8),
        events,
    };
    let report = scrub_audio(&audio, &opts)?;
    wav::write_wav_pcm16(&output, &report.agent_audio)
        .with_context(|| format!("writing {}", output.display()))?;
    let masked_ms = report.masked_samples() as f64 / 8.0;
    println!("scrubbed {} -> {}", input.display(), output.display());
    println!(
        "  digits detected: {} ({} in-band, {} RFC 4733)",
        report.digits_detected, report.digits_inband, report.digits_rfc4733
    );
    println!(
        "  masked spans:    {} ({masked_ms:.1} ms in all)",
        report.masked_spans.len()
    );
    println!(
        "  added delay:     {:.1} ms ({} samples)",
        report.delay_samples as f64 / 8.0,
        report.delay_samples
    );
    println!(
        "  packets:         {} in, {} out, {} telephone-events reached the agent",
        report.packets_in, report.packets_out, report.events_leaked
    );
    Ok(())
}

#[cfg(feature = "tools")]
fn scan_report(paths: &[PathBuf], json: bool) -> Result<()> {
    let files = tonewall::tools::collect_wavs(paths)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = tonewall::tools::talkoff_report(&files, &ScrubOptions::default(), threads)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

#[cfg(feature = "tools")]
fn scan(file: PathBuf, json: bool, sensitive: bool) -> Result<()> {
    let audio = wav::read_wav(&file).with_context(|| format!("reading {}", file.display()))?;
    // A progress bar only where a person watches and the file is long enough to wait for.
    let bar = (std::io::stderr().is_terminal() && audio.len() > 8000 * 60).then(|| {
        let b = indicatif::ProgressBar::new(1000);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {percent}% {elapsed}/{eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut progress = |f: f32| {
        if let Some(b) = &bar {
            b.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
        }
    };
    if sensitive {
        let found = spectrum::sensitive_scan(&audio, &mut progress);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        if json {
            let items: Vec<_> = found
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "start_ms": r.start_ms,
                        "end_ms": r.end_ms,
                        "low_hz": r.low_hz,
                        "high_hz": r.high_hz,
                        "level_dbm0": r.level_dbm0,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(items));
        } else if found.is_empty() {
            println!("{}: no dual-tone residue found", file.display());
        } else {
            println!("{}: {} dual-tone fragments", file.display(), found.len());
            for r in &found {
                println!(
                    "  {:>10.1} ms - {:>10.1} ms  {:>6.0} Hz + {:>6.0} Hz  {:>6.1} dBm0",
                    r.start_ms, r.end_ms, r.low_hz, r.high_hz, r.level_dbm0
                );
            }
        }
        if !found.is_empty() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let found = spectrum::fft_decode(&audio, &mut progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if json {
        let items: Vec<_> = found
            .iter()
            .map(|d| {
                serde_json::json!({
                    "digit": d.digit.reveal().to_string(),
                    "start_ms": d.start_ms,
                    "end_ms": d.end_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
    } else if found.is_empty() {
        println!("{}: no DTMF digits found", file.display());
    } else {
        println!("{}: {} DTMF digits", file.display(), found.len());
        for d in &found {
            println!(
                "  {}  {:>10.1} ms - {:>10.1} ms",
                d.digit.reveal(),
                d.start_ms,
                d.end_ms
            );
        }
    }
    if !found.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
