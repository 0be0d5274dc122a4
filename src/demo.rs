//! `tonewall demo`: a payment call's media path, end to end, for a newcomer to watch and hear.
//!
//! A caller speaks, then keys a test card (in-band tones, and again as RFC 4733 events) while
//! speech continues underneath; a trunk packetizes it into RTP; the relay's own `Scrubber`
//! cleans it; the auditor's independent FFT decoder listens on both sides. The demo writes the
//! audio as WAVs and a before/after spectrogram, and prints card data only masked.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::config::{Config, RouteConfig, RouteMode, ScrubMode, Transport};
use crate::net::run::{self, RunError};
use crate::net::ua::{Ending, SipUa, UaConfig, UaError};

use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::dsp::mask::MaskKind;
use crate::dsp::spectrum;
use crate::rtp::packet::RtpView;
use crate::rtp::scrubber::{ScrubbedDigit, Scrubber, ScrubberConfig, Verdict};
use crate::rtp::trunk::{KeySpan, TrunkConfig, depacketize, packetize};
use crate::spectrogram::Panel;

/// Visa test number (Luhn-valid, never issued), expiry MMYY, CVV.
/// The loop number's user part.
const LOOP_USER: &str = "pay";

const DEMO_PAN: &str = "4111111111111111";
const DEMO_EXPIRY: &str = "1230";
const DEMO_CVV: &str = "123";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write to {0}: {1}")]
    Output(PathBuf, std::io::Error),
    #[error("cannot write a WAV: {0}")]
    Wav(String),
    #[error("cannot draw the spectrogram: {0}")]
    Picture(#[from] crate::spectrogram::SpectrogramError),
    #[error("loopback network: {0}")]
    Network(std::io::Error),
    #[error("tonewall in the demo: {0}")]
    Relay(String),
    #[error("SIP: {0}")]
    Sip(#[from] UaError),
    #[error("control API: {0}")]
    Api(String),
}

/// What the demo found, for tests and the summary.
#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    pub keys_sent: usize,
    pub digits_captured_inband: usize,
    pub digits_captured_events: usize,
    pub decoded_on_caller_side: usize,
    pub decoded_on_agent_side: usize,
    pub residue_on_agent_side: usize,
    pub events_reaching_agent: usize,
    pub delay_ms: f64,
    /// Speech away from the keys that reached the agent bit-exact (SIP demo).
    pub speech_identical_pct: f64,
    /// The payment session sealed the card, one unlock returned it and a second was refused.
    pub card_sealed: bool,
    pub card_unlocked: bool,
    pub second_unlock_refused: bool,
}

/// Speech for the caller: the fixture clip when run from a checkout, else a synthetic voice.
fn caller_speech() -> (Vec<i16>, &'static str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/speech_en_hello.wav");
    match crate::wav::read_wav(&path) {
        Ok(s) if !s.is_empty() => (s, "recorded speech (fixtures/speech_en_hello.wav)"),
        _ => (
            synthetic_voice(8000 * 8),
            "a synthetic voice (fixture not found)",
        ),
    }
}

/// A buzzy vowel-like voice: harmonics of a gliding pitch, nothing like a dual tone.
fn synthetic_voice(len: usize) -> Vec<i16> {
    (0..len)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let f0 = 120.0 + 20.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            let env = (0.5 + 0.5 * (2.0 * std::f64::consts::PI * 2.5 * t).sin()).powi(2);
            let v: f64 = (1..8)
                .map(|h| (2.0 * std::f64::consts::PI * f0 * f64::from(h) * t).sin() / f64::from(h))
                .sum();
            (2500.0 * env * v) as i16
        })
        .collect()
}

/// The caller's audio: speech, the card keyed over quieter speech, speech, the card keyed
/// again, speech. Returns the audio and the keys' spans of each pass; both passes are in the
/// audio (what the caller keyed), the trunk decides which pass goes as RFC 4733 events.
fn caller_audio(speech: &[i16]) -> (Vec<i16>, Vec<KeySpan>, Vec<KeySpan>) {
    // Each field ends with #, as an IVR asks: a Visa number may be 13, 16 or 19 digits long.
    let keys = format!("{DEMO_PAN}#{DEMO_EXPIRY}#{DEMO_CVV}#");
    let (lead, between, tail) = (8000 * 2, 8000 * 3 / 2, 8000 * 2);
    let (tone_len, gap) = (560usize, 640usize); // 70 ms tones, 80 ms pauses
    let pass = keys.len() * (tone_len + gap);
    let total = lead + pass + between + pass + tail;
    let mut out = vec![0f64; total];
    let second = lead + pass + between;
    // Speech all along; quieter while the caller concentrates on the keypad.
    for (i, v) in out.iter_mut().enumerate() {
        let s = f64::from(speech.get(i % speech.len().max(1)).copied().unwrap_or(0));
        let keying = (lead..lead + pass).contains(&i) || (second..second + pass).contains(&i);
        *v = if keying { 0.3 * s } else { s };
    }
    let amp = 22_686.0 * 10f64.powf(-12.0 / 20.0); // -12 dBm0 per tone
    let mut passes = [Vec::new(), Vec::new()];
    for (p, first) in [lead, second].into_iter().enumerate() {
        for (k, c) in keys.chars().enumerate() {
            let Some(d) = Digit::from_char(c) else {
                continue;
            };
            let (lo, hi) = d.freqs();
            let start = first + k * (tone_len + gap);
            for i in 0..tone_len {
                let t = i as f64 / 8000.0;
                out[start + i] += amp
                    * ((2.0 * std::f64::consts::PI * f64::from(lo) * t).sin()
                        + (2.0 * std::f64::consts::PI * f64::from(hi) * t + 1.0).sin());
            }
            passes[p].push(KeySpan {
                digit: d,
                start: start as u64,
                end: (start + tone_len) as u64,
            });
        }
    }
    let audio = out
        .iter()
        .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    let [inband, events] = passes;
    (audio, inband, events)
}

struct Leg {
    agent: Vec<i16>,
    digits: Vec<ScrubbedDigit>,
    packets_in: usize,
    packets_out: usize,
    events_in: usize,
    events_out: usize,
    masked_spans: u64,
    delay: usize,
}

fn run_leg(audio: &[i16], spans: Option<&[KeySpan]>) -> Leg {
    let trunk = TrunkConfig {
        codec: Codec::Pcmu,
        ..TrunkConfig::default()
    };
    let packets = packetize(audio, &trunk, spans);
    let mut s = Scrubber::new(ScrubberConfig {
        mask: MaskKind::Noise,
        ..ScrubberConfig::default()
    });
    let mut out = Vec::with_capacity(packets.len());
    let mut digits = Vec::new();
    let mut buf = [0u8; 2048];
    for (i, p) in packets.iter().enumerate() {
        if let Verdict::Forward(n) = s.process(i as u64 * 20, p, &mut buf, &mut |d| digits.push(d))
        {
            out.push(buf[..n].to_vec());
        }
    }
    s.finish(&mut |d| digits.push(d));
    let is_event = |p: &Vec<u8>| {
        RtpView::parse(p).is_ok_and(|v| Some(v.payload_type()) == Some(trunk.event_pt))
    };
    let rx = depacketize(out.iter().map(|p| p.as_slice()), trunk.first_ts);
    Leg {
        agent: rx.audio,
        digits,
        packets_in: packets.len(),
        packets_out: out.len(),
        events_in: packets.iter().filter(|p| is_event(p)).count(),
        events_out: out.iter().filter(|p| is_event(p)).count(),
        masked_spans: s.stats().mask_spans,
        delay: s.delay_samples(),
    }
}

fn write_wav(path: &Path, audio: &[i16]) -> Result<(), DemoError> {
    crate::wav::write_wav_pcm16(path, audio).map_err(|e| DemoError::Wav(e.to_string()))
}

/// The demo without SIP: the media path alone, the trunk's packets fed to a `Scrubber` in
/// process (once with every key in-band, once with every key as RFC 4733 events). Prints each
/// step to `w` and writes files into `out_dir`.
pub fn run_offline(out_dir: &Path, w: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    std::fs::create_dir_all(out_dir).map_err(io)?;
    let (speech, source) = caller_speech();
    let (caller, first, second) = caller_audio(&speech);
    let spans: Vec<KeySpan> = first.into_iter().chain(second).collect();
    let mut sum = DemoSummary {
        keys_sent: spans.len(),
        ..DemoSummary::default()
    };
    let say = |w: &mut dyn Write, s: String| writeln!(w, "{s}").map_err(io);

    say(
        w,
        "tonewall demo (offline): a card payment on the caller→agent media path".into(),
    )?;
    say(
        w,
        format!(
            "  1. The caller talks ({source}), then keys the test card Visa •••• {} with expiry and CVV, twice:",
            &DEMO_PAN[12..]
        ),
    )?;
    say(
        w,
        format!(
            "     {} keys, 70 ms tones at -12 dBm0 over quieter speech, {:.1} s of audio.",
            spans.len(),
            caller.len() as f64 / 8000.0
        ),
    )?;
    let before = spectrum::fft_decode(&caller, &mut |_| {});
    sum.decoded_on_caller_side = before.len();
    say(
        w,
        format!(
            "  2. An independent FFT decoder on the caller's side hears {} digits (shown here only as •).",
            before.len()
        ),
    )?;

    let inband = run_leg(&caller, None);
    sum.delay_ms = inband.delay as f64 / 8.0;
    sum.digits_captured_inband = inband.digits.len();
    say(
        w,
        format!(
            "  3. In-band: the trunk sends {} PCMU packets; the scrubber sends {} to the agent,",
            inband.packets_in, inband.packets_out
        ),
    )?;
    say(
        w,
        format!(
            "     masks {} spans, hands {} digits to capture, adds {:.1} ms of delay.",
            inband.masked_spans,
            inband.digits.len(),
            sum.delay_ms
        ),
    )?;

    let events = run_leg(&caller, Some(&spans));
    sum.digits_captured_events = events.digits.len();
    sum.events_reaching_agent = events.events_out;
    say(
        w,
        format!(
            "  4. RFC 4733: the trunk sends the keys as {} telephone-event packets; {} reach the agent,",
            events.events_in, events.events_out
        ),
    )?;
    say(
        w,
        format!(
            "     each replaced by masking audio in sequence ({} packets in, {} out); {} digits captured.",
            events.packets_in,
            events.packets_out,
            events.digits.len()
        ),
    )?;

    let mut decoded = 0;
    let mut residue = 0;
    for leg in [&inband, &events] {
        decoded += spectrum::fft_decode(&leg.agent, &mut |_| {}).len();
        residue += spectrum::sensitive_scan(&leg.agent, &mut |_| {}).len();
    }
    sum.decoded_on_agent_side = decoded;
    sum.residue_on_agent_side = residue;
    say(
        w,
        format!(
            "  5. On the agent's side the same decoder hears {decoded} digits; the residue scanner finds {residue} dual-tone fragments."
        ),
    )?;

    write_wav(&out_dir.join("caller.wav"), &caller)?;
    write_wav(&out_dir.join("agent_inband.wav"), &inband.agent)?;
    write_wav(&out_dir.join("agent_events.wav"), &events.agent)?;
    let picture = out_dir.join("spectrogram.png");
    // Show the keying stretch, where the difference is.
    let lo = spans
        .first()
        .map_or(0, |s| s.start as usize)
        .saturating_sub(4000);
    let hi = spans
        .last()
        .map_or(caller.len(), |s| s.end as usize + 4000)
        .min(caller.len());
    let agent_hi = hi.min(inband.agent.len());
    crate::spectrogram::write_png(
        &picture,
        &[
            Panel {
                title: "caller (what the trunk sends)",
                audio: &caller[lo..hi],
                start_s: lo as f64 / 8000.0,
            },
            Panel {
                title: "agent, keys in-band (what the scrubber lets through)",
                audio: &inband.agent[lo.min(agent_hi)..agent_hi],
                start_s: lo as f64 / 8000.0,
            },
        ],
    )?;
    say(
        w,
        format!(
            "  6. Listen and look: {}/caller.wav, agent_inband.wav, agent_events.wav,",
            out_dir.display()
        ),
    )?;
    say(
        w,
        "     and spectrogram.png (top: caller, bottom: agent; DTMF frequencies marked at the right)."
            .into(),
    )?;
    let ok = decoded == 0 && residue == 0 && sum.events_reaching_agent == 0;
    say(
        w,
        if ok {
            "  Result: no digit reached the agent.".into()
        } else {
            "  Result: DIGITS REACHED THE AGENT.".into()
        },
    )?;
    Ok(sum)
}

// ---------------------------------------------------------------------------------------------
// The demo over SIP

/// Environment variables the in-process relay reads its API token and master key from
/// (`ApiState::from_config` reads both through the config's variable names).
const TOKENS_ENV: &str = "TONEWALL_DEMO_API_TOKENS";
const KEY_ENV: &str = "TONEWALL_DEMO_MASTER_KEY";
/// The agent the trunk asks for; tonewall carries the header to the contact centre.
const AGENT: &str = "7001";
/// How long any one SIP exchange may take on loopback before the demo gives up.
const SIP_TIMEOUT: Duration = Duration::from_secs(10);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A port that was free a moment ago (the relay binds it right after; a clash is retried).
fn free_port(tcp: bool) -> Result<u16, DemoError> {
    let lo = Ipv4Addr::LOCALHOST;
    let port = if tcp {
        std::net::TcpListener::bind((lo, 0)).and_then(|l| l.local_addr())
    } else {
        std::net::UdpSocket::bind((lo, 0)).and_then(|s| s.local_addr())
    };
    port.map(|a| a.port()).map_err(DemoError::Network)
}

/// The relay's config: everything on 127.0.0.1 on ports found free, so a tonewall already on
/// 5060/8080 is not disturbed; one loop route (PCI Pal model): the contact centre transfers
/// callers to `sip:pay@…` and tonewall calls the contact centre's return number back.
fn relay_config(cc: SocketAddr) -> Result<Config, DemoError> {
    let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
    let mut cfg = Config::default();
    cfg.sip.listen = SocketAddr::new(lo, free_port(false)?);
    cfg.sip.transports = vec![Transport::Udp];
    cfg.api.listen = SocketAddr::new(lo, free_port(true)?);
    cfg.api.tokens_env = TOKENS_ENV.into();
    cfg.vault.master_key_env = KEY_ENV.into();
    // 200 ports somewhere above the sample config's range; ports in use are skipped.
    let base = 40_000 + 2 * (rand::random::<u16>() % 9_800);
    cfg.media.address = lo;
    cfg.media.port_min = base;
    cfg.media.port_max = base + 199;
    cfg.routes = vec![RouteConfig {
        name: "demo".into(),
        mode: RouteMode::Loop,
        sources: vec![IpNet::from(lo)],
        user: Some(LOOP_USER.into()),
        target: format!("sip:return@{cc}"),
        target_transport: Transport::Udp,
        scrub: ScrubMode::Always,
        ..RouteConfig::default()
    }];
    cfg.validate()
        .map_err(|e| DemoError::Relay(format!("demo config: {e}")))?;
    Ok(cfg)
}

/// tonewall running in this process.
struct Relay {
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Relay {
    /// Starts `run()` and waits for its API to accept connections; a port taken in between
    /// is retried with other ports.
    async fn start(cc: SocketAddr) -> Result<Relay, DemoError> {
        let mut last = String::new();
        for _ in 0..3 {
            let config = relay_config(cc)?;
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(run::run(config.clone(), async move {
                let _ = rx.await;
            }));
            let t0 = tokio::time::Instant::now();
            loop {
                if task.is_finished() {
                    match task.await {
                        Ok(Err(e @ RunError::Bind { .. })) => last = chain(&e),
                        Ok(Err(e)) => return Err(DemoError::Relay(chain(&e))),
                        Ok(Ok(())) => last = "stopped at once".into(),
                        Err(e) => return Err(DemoError::Relay(e.to_string())),
                    }
                    break;
                }
                if tokio::net::TcpStream::connect(config.api.listen)
                    .await
                    .is_ok()
                {
                    return Ok(Relay {
                        config,
                        stop: Some(tx),
                        task,
                    });
                }
                if t0.elapsed() > SIP_TIMEOUT {
                    return Err(DemoError::Relay("did not start in time".into()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err(DemoError::Relay(last))
    }

    /// Shuts tonewall down and waits for it.
    async fn stop(mut self) -> Result<(), DemoError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(SIP_TIMEOUT, &mut self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(DemoError::Relay(chain(&e))),
            Ok(Err(e)) => Err(DemoError::Relay(e.to_string())),
            Err(_) => {
                self.task.abort();
                Err(DemoError::Relay("did not stop in time".into()))
            }
        }
    }
}

/// What the call produced, for the analysis.
struct CallOutcome {
    agent: Vec<i16>,
    packets_sent: usize,
    events_sent: usize,
    packets_received: usize,
    events_received: usize,
}

/// Prints lines that concurrent parts of the demo send, as they come.
async fn printer(
    w: &mut dyn Write,
    mut rx: mpsc::UnboundedReceiver<String>,
) -> std::io::Result<()> {
    while let Some(line) = rx.recv().await {
        writeln!(w, "{line}")?;
        w.flush()?;
    }
    Ok(())
}

/// Runs the demo over SIP on loopback: tonewall's `run()` in process between a trunk UA and a
/// contact-centre UA, a call in which the caller keys a test card (in-band, then as RFC 4733
/// events) over speech, then the decoders on both sides. Prints each step to `w` as it
/// happens and writes the audio and a spectrogram into `out_dir`.
///
/// It puts a fresh API token and vault master key for the in-process relay into the process
/// environment (`TONEWALL_DEMO_API_TOKENS`, `TONEWALL_DEMO_MASTER_KEY`), because `run()` reads
/// them from there; call it before the process starts other threads (the CLI does).
pub fn run(out_dir: &Path, w: &mut dyn Write) -> Result<DemoSummary, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    std::fs::create_dir_all(out_dir).map_err(io)?;
    let token = Zeroizing::new(hex(&rand::random::<[u8; 16]>()));
    let key = Zeroizing::new(hex(&rand::random::<[u8; 32]>()));
    // SAFETY: set before this function starts its runtime; the CLI calls it from `main` with
    // no other thread running, so nothing reads the environment concurrently.
    unsafe {
        // The demo plays the payment integration, which creates the session and so holds the
        // token and PIN (a desk token's create answer carries neither).
        std::env::set_var(TOKENS_ENV, format!("demo:{}:payment", token.as_str()));
        std::env::set_var(KEY_ENV, key.as_str());
    }
    drop(key);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DemoError::Network)?;
    rt.block_on(sip_demo(out_dir, w, &token))
}

async fn sip_demo(
    out_dir: &Path,
    w: &mut dyn Write,
    token: &str,
) -> Result<DemoSummary, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    let (speech, source) = caller_speech();
    let (caller, inband, events) = caller_audio(&speech);
    let mut sum = DemoSummary {
        keys_sent: inband.len() + events.len(),
        ..DemoSummary::default()
    };
    let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
    let ua = |user: &str| UaConfig {
        ip: lo,
        user: user.into(),
        timeout: SIP_TIMEOUT,
        ..UaConfig::default()
    };
    let mut cc = SipUa::bind(ua("agents")).await?;
    let trunk = SipUa::bind(ua("caller")).await?;
    let relay = Relay::start(cc.local_addr()).await?;
    let cfg = relay.config.clone();
    sum.delay_ms = cfg.media.delay_ms;
    writeln!(
        w,
        "tonewall demo: a card payment through tonewall over SIP on loopback"
    )
    .map_err(io)?;
    writeln!(
        w,
        "  1. tonewall runs in this process: SIP on {} (UDP), media on ports {}-{}, control API on http://{}.",
        cfg.sip.listen, cfg.media.port_min, cfg.media.port_max, cfg.api.listen
    )
    .map_err(io)?;
    writeln!(
        w,
        "     Its vault master key and API token were generated for this run (ephemeral, never written)."
    )
    .map_err(io)?;

    // The payment integration opens a session for the agent.
    let api = Api::new(cfg.api.listen, token)?;
    let created = api
        .expect(
            "/v1/sessions",
            &serde_json::json!({"agent": AGENT, "amount": "GBP 42.00", "reference": "demo-order-1"}),
            201,
        )
        .await?;
    let created: Created = serde_json::from_slice(&created)
        .map_err(|e| DemoError::Api(format!("session body: {e}")))?;
    writeln!(
        w,
        "  2. The payment integration creates a session for agent {AGENT} (POST /v1/sessions): {}, locator {}.",
        created.id, created.locator
    )
    .map_err(io)?;
    writeln!(
        w,
        "     It keeps the retrieval token and PIN it was given (not shown) to unlock the card later."
    )
    .map_err(io)?;

    // The loop: the contact centre's PBX transfers the caller to tonewall's loop number and
    // keys the locator once tonewall answers; tonewall calls the agent back.
    writeln!(
        w,
        "  3. The caller is talking with agent {AGENT} and agrees to pay. The contact centre transfers the caller"
    )
    .map_err(io)?;
    let target = format!("sip:{LOOP_USER}@{}", cfg.sip.listen);
    let mut a = trunk.call(&target, cfg.sip.listen, &[]).await?;
    let seen: Vec<String> = a
        .responses()
        .iter()
        .map(|(s, r)| format!("{s} {r}"))
        .collect();
    writeln!(
        w,
        "     to tonewall's loop number: INVITE {target}. tonewall answers itself ({}) to read the locator.",
        seen.join(", ")
    )
    .map_err(io)?;
    let locator: Vec<Digit> = created
        .locator
        .chars()
        .filter_map(Digit::from_char)
        .collect();
    let cc_side = async {
        let inc = cc.accept().await?;
        let seen = (
            inc.request_uri().to_owned(),
            inc.header("X-Agent").unwrap_or("none").to_owned(),
            inc.header("X-Locator").unwrap_or("none").to_owned(),
        );
        inc.ring().await?;
        let call = inc.answer().await?;
        Ok::<_, UaError>((call, seen))
    };
    let (keyed, b) = tokio::join!(a.send_keys(&locator, 70, 80), cc_side);
    keyed?;
    let (mut b, (cc_uri, cc_agent, cc_locator)) = b?;
    writeln!(
        w,
        "     The PBX keys the locator {} as RFC 4733 telephone-events.",
        created.locator
    )
    .map_err(io)?;
    writeln!(
        w,
        "  4. tonewall finds the session, binds the call to it and starts capture, then calls the agent back:"
    )
    .map_err(io)?;
    writeln!(
        w,
        "     INVITE {cc_uri} arrives with X-Agent: {cc_agent} and X-Locator: {cc_locator}; it rings and the agent answers."
    )
    .map_err(io)?;
    writeln!(
        w,
        "     The two legs are bridged on tonewall: the caller sends to {}, the agent hears from {}.",
        a.remote_rtp(),
        b.remote_rtp()
    )
    .map_err(io)?;
    writeln!(
        w,
        "     The masked progress is followed live over SSE (GET /v1/sessions/{{id}}/events)."
    )
    .map_err(io)?;
    let base = format!("/v1/sessions/{}", created.id);

    // Media: the caller's speech and keys one way, the agent's voice the other.
    let trunk_cfg = TrunkConfig {
        codec: a.codec(),
        event_pt: a.event_pt().unwrap_or(101),
        ..TrunkConfig::default()
    };
    let packets = packetize(&caller, &trunk_cfg, Some(&events));
    let is_event =
        |p: &Vec<u8>, pt: Option<u8>| RtpView::parse(p).is_ok_and(|v| Some(v.payload_type()) == pt);
    let events_sent = packets
        .iter()
        .filter(|p| is_event(p, Some(trunk_cfg.event_pt)))
        .count();
    let agent_voice: Vec<i16> = synthetic_voice(caller.len())
        .iter()
        .map(|s| s / 2)
        .collect();
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let secs = |samples: u64| samples as f64 / 8000.0;
    let t0 = tokio::time::Instant::now();
    let mut progress = {
        let tx = tx.clone();
        let id = created.id.clone();
        let api = Api::new(cfg.api.listen, token)?;
        tokio::spawn(async move { follow(&api, &id, t0, tx).await })
    };
    let milestones = {
        let tx = tx.clone();
        let first = inband.first().map_or(0, |s| s.start);
        let second = events.first().map_or(0, |s| s.start);
        let last = events.last().map_or(0, |s| s.end);
        let (n_in, n_ev) = (inband.len(), events.len());
        async move {
            let at = |s: u64| t0 + Duration::from_millis(s / 8);
            tokio::time::sleep_until(at(first)).await;
            let _ = tx.send(format!(
                "     {:>5.1} s  the caller keys the test card Visa •••• {} with expiry and CVV in-band: {n_in} keys, 70 ms tones at -12 dBm0 over quieter speech",
                secs(first),
                &DEMO_PAN[12..]
            ));
            tokio::time::sleep_until(at(second)).await;
            let _ = tx.send(format!(
                "     {:>5.1} s  the caller keys it again, this time the phone sends RFC 4733 telephone-events: {n_ev} keys",
                secs(second)
            ));
            tokio::time::sleep_until(at(last)).await;
            let _ = tx.send(format!("     {:>5.1} s  the caller talks on", secs(last)));
        }
    };
    let _ = tx.send(format!(
        "  5. Media flows in real time ({:.1} s): the caller talks ({source}), 20 ms {} packets; the agent talks back.",
        secs(caller.len() as u64),
        match a.codec() {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    ));
    drop(tx);
    // The locator's own packets (masked) may still be crossing the bridge: let them land and
    // judge only the payment call's media.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_media = b.received_packets().len();
    let media = async {
        let r = tokio::join!(
            a.send_packets(&packets),
            b.send_audio(&agent_voice, None),
            milestones
        );
        // The capture has had the whole call; stop following if it is not done.
        let view = match tokio::time::timeout(Duration::from_secs(2), &mut progress).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => Err(DemoError::Api(e.to_string())),
            Err(_) => {
                progress.abort();
                Err(DemoError::Api("no progress from the session".into()))
            }
        };
        (r, view)
    };
    let (((sent_a, sent_b, ()), view), printed) = tokio::join!(media, printer(w, rx));
    printed.map_err(io)?;
    let view = view?;
    sum.card_sealed = view["state"] == "sealed";
    sum.digits_captured_inband = view["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["digits"].as_u64())
        .sum::<u64>() as usize;
    let (sent_a, _) = (sent_a?, sent_b?);
    // The last packets are still on their way through the relay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = b.received_packets();
    let received = all.get(before_media..).unwrap_or_default();
    let origin = received
        .first()
        .and_then(|p| RtpView::parse(p).ok())
        .map_or(0, |v| v.timestamp());
    let outcome = CallOutcome {
        agent: depacketize(received.iter().map(Vec::as_slice), origin).audio,
        packets_sent: sent_a,
        events_sent,
        packets_received: received.len(),
        events_received: received
            .iter()
            .filter(|p| is_event(p, b.event_pt()))
            .count(),
    };
    writeln!(
        w,
        "     The trunk sent {} packets ({} telephone-events); the agent received {}, of which {} telephone-events.",
        outcome.packets_sent, outcome.events_sent, outcome.packets_received, outcome.events_received
    )
    .map_err(io)?;

    // Teardown.
    let bye = a.hangup().await?;
    let cc_end = b.wait_ended(SIP_TIMEOUT).await?;
    let status = match bye {
        Ending::ByUs(s) => s.to_string(),
        Ending::ByPeer => "none (tonewall had hung up)".into(),
    };
    writeln!(
        w,
        "  6. Teardown: the trunk sends BYE and gets {status}; tonewall hangs up the contact centre ({}).",
        match cc_end {
            Ending::ByPeer => "BYE received, answered 200 OK",
            Ending::ByUs(_) => "it had hung up itself",
        }
    )
    .map_err(io)?;

    // The integration unlocks the sealed card once; a second unlock is refused.
    let unlock = serde_json::json!({
        "token": created.token.expose_secret(),
        "pin": created.pin.expose_secret(),
    });
    let (status, body) = api.post(&format!("{base}/unlock"), &unlock).await?;
    if status == 200 {
        let card: Unlocked = serde_json::from_slice(&body)
            .map_err(|e| DemoError::Api(format!("unlock body: {e}")))?;
        let pan = card.pan.expose_secret();
        let last4 = pan.get(pan.len().saturating_sub(4)..).unwrap_or("????");
        sum.card_unlocked = true;
        writeln!(
            w,
            "  7. The integration unlocks the card with its token and PIN (POST …/unlock): {} •••• {last4},",
            card.brand.as_deref().map_or("unknown brand".into(), brand_name)
        )
        .map_err(io)?;
        writeln!(
            w,
            "     with expiry and CVV (shown here only as that); tonewall forgets it at once."
        )
        .map_err(io)?;
    } else {
        writeln!(
            w,
            "  7. Unlocking the card failed: {status} {}.",
            error_code(&body)
        )
        .map_err(io)?;
    }
    drop(body);
    let (status, body) = api.post(&format!("{base}/unlock"), &unlock).await?;
    drop(unlock);
    let code = error_code(&body);
    sum.second_unlock_refused = status == 410 && code == "already_unlocked";
    writeln!(
        w,
        "     A second unlock with the same token and PIN is refused: {status} {code}."
    )
    .map_err(io)?;
    relay.stop().await?;

    analyse(out_dir, w, &caller, &inband, &events, &outcome, &mut sum)?;
    Ok(sum)
}

/// The auditor's view of the call: decoders on both sides, bit-exactness of the speech, files.
fn analyse(
    out_dir: &Path,
    w: &mut dyn Write,
    caller: &[i16],
    inband: &[KeySpan],
    events: &[KeySpan],
    call: &CallOutcome,
    sum: &mut DemoSummary,
) -> Result<(), DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    let before = spectrum::fft_decode(caller, &mut |_| {});
    sum.decoded_on_caller_side = before.len();
    let keyed: Vec<Digit> = inband.iter().chain(events).map(|s| s.digit).collect();
    let in_order = before.iter().map(|d| d.digit).eq(keyed.iter().copied());
    let agent = &call.agent;
    sum.decoded_on_agent_side = spectrum::fft_decode(agent, &mut |_| {}).len();
    sum.residue_on_agent_side = spectrum::sensitive_scan(agent, &mut |_| {}).len();
    sum.events_reaching_agent = call.events_received;
    writeln!(
        w,
        "  8. Keys masked. An independent FFT decoder on the caller's side hears {} keys{} (shown here only as •);",
        before.len(),
        if in_order { ", all of them in order" } else { "" }
    )
    .map_err(io)?;
    writeln!(
        w,
        "     on the agent's side it hears {} digits, the residue scanner finds {} dual-tone fragments, and {} of {} telephone-events arrived.",
        sum.decoded_on_agent_side,
        sum.residue_on_agent_side,
        call.events_received,
        call.events_sent
    )
    .map_err(io)?;

    // Speech away from the keys must reach the agent unchanged, D samples later (same codec).
    let d = (sum.delay_ms * 8.0).round() as usize;
    let margin = 800;
    let first = inband.first().map_or(0, |s| s.start as usize);
    let last = events.last().map_or(0, |s| s.end as usize);
    let (mut same, mut total) = (0usize, 0usize);
    for i in (0..first.saturating_sub(margin)).chain(last + margin..caller.len()) {
        if let (Some(&c), Some(&a)) = (caller.get(i), agent.get(i + d)) {
            total += 1;
            same += usize::from(Codec::Pcmu.decode(Codec::Pcmu.encode(c)) == a);
        }
    }
    sum.speech_identical_pct = if total == 0 {
        0.0
    } else {
        100.0 * same as f64 / total as f64
    };
    writeln!(
        w,
        "     Speech before and after the keys reaches the agent {:.1} ms later, {:.2} % of its samples bit-exact.",
        sum.delay_ms, sum.speech_identical_pct
    )
    .map_err(io)?;

    write_wav(&out_dir.join("caller.wav"), caller)?;
    write_wav(&out_dir.join("agent.wav"), agent)?;
    let picture = out_dir.join("spectrogram.png");
    let lo = first.saturating_sub(4000);
    let hi = (last + 4000).min(caller.len());
    let agent_lo = (lo + d).min(agent.len());
    let agent_hi = (hi + d).min(agent.len());
    // The agent's panel is shifted by the relay's delay so the two share one clock.
    crate::spectrogram::write_png(
        &picture,
        &[
            Panel {
                title: "caller (what the trunk sends)",
                audio: caller.get(lo..hi).unwrap_or_default(),
                start_s: lo as f64 / 8000.0,
            },
            Panel {
                title: "agent (what tonewall lets through)",
                audio: agent.get(agent_lo..agent_hi).unwrap_or_default(),
                start_s: lo as f64 / 8000.0,
            },
        ],
    )?;
    writeln!(
        w,
        "  9. Listen and look: {0}/caller.wav (what the caller keyed), {0}/agent.wav (what the agent heard),",
        out_dir.display()
    )
    .map_err(io)?;
    writeln!(
        w,
        "     and {}/spectrogram.png (top: caller, bottom: agent; DTMF frequencies marked at the right).",
        out_dir.display()
    )
    .map_err(io)?;
    let ok = sum.decoded_on_agent_side == 0
        && sum.residue_on_agent_side == 0
        && sum.events_reaching_agent == 0
        && call.packets_received > 0;
    let paid = sum.card_sealed && sum.card_unlocked && sum.second_unlock_refused;
    writeln!(
        w,
        "{}",
        match (ok, paid) {
            (true, true) => {
                "  Result: no digit reached the agent; the card reached the payment integration, once, through the vault."
            }
            (true, false) => "  Result: no digit reached the agent, but THE PAYMENT DID NOT COMPLETE.",
            (false, _) => "  Result: DIGITS REACHED THE AGENT (or no media arrived).",
        }
    )
    .map_err(io)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The payment integration's side: the control API over HTTP on loopback

/// A bearer-token client of tonewall's control API (docs/openapi.yaml).
struct Api {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
}

/// What `POST /v1/sessions` returns; the retrieval token and PIN are secrets.
#[derive(serde::Deserialize)]
struct Created {
    id: String,
    locator: String,
    token: secrecy::SecretString,
    pin: secrecy::SecretString,
}

/// What an unlock returns: only the brand and the PAN are read (to print the last four).
#[derive(serde::Deserialize)]
struct Unlocked {
    pan: secrecy::SecretString,
    brand: Option<String>,
}

fn api_err(e: reqwest::Error) -> DemoError {
    DemoError::Api(chain(&e))
}

impl Api {
    fn new(listen: SocketAddr, token: &str) -> Result<Api, DemoError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(SIP_TIMEOUT)
            .build()
            .map_err(api_err)?;
        Ok(Api {
            http,
            base: format!("http://{listen}"),
            token: Zeroizing::new(token.to_owned()),
        })
    }

    /// POSTs JSON; returns the status and the body (kept in a zeroizing buffer).
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), DemoError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token.as_str())
            .json(body)
            .send()
            .await
            .map_err(api_err)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(api_err)?;
        Ok((status, Zeroizing::new(bytes.to_vec())))
    }

    /// POSTs and expects `want`; anything else is an error naming the API's error code.
    async fn expect(
        &self,
        path: &str,
        body: &serde_json::Value,
        want: u16,
    ) -> Result<Zeroizing<Vec<u8>>, DemoError> {
        let (status, bytes) = self.post(path, body).await?;
        if status != want {
            return Err(DemoError::Api(format!(
                "POST {path}: {status} {}",
                error_code(&bytes)
            )));
        }
        Ok(bytes)
    }
}

/// A brand as the API names it (`visa`), as people write it.
fn brand_name(api: &str) -> String {
    match api {
        "amex" => "American Express".into(),
        "jcb" => "JCB".into(),
        "union_pay" => "UnionPay".into(),
        other => {
            let mut c = other.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }
    }
}

/// The `error.code` of an API error body.
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(no error code)".into())
}

/// Follows `GET /v1/sessions/{id}/events` and reports the masked progress as lines: when a
/// field starts, when the brand is known, when a field completes or is rejected, and the
/// session's state. Ends when the session is sealed or ended.
async fn follow(
    api: &Api,
    id: &str,
    t0: tokio::time::Instant,
    say: mpsc::UnboundedSender<String>,
) -> Result<serde_json::Value, DemoError> {
    let mut resp = api
        .http
        .get(format!("{}/v1/sessions/{id}/events", api.base))
        .bearer_auth(api.token.as_str())
        // The stream lasts the whole capture.
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(api_err)?;
    if !resp.status().is_success() {
        return Err(DemoError::Api(format!("events: {}", resp.status())));
    }
    let mut buf = String::new();
    let mut seen: HashMap<String, (String, bool, usize)> = HashMap::new();
    let mut state = String::new();
    let mut last = serde_json::Value::Null;
    while let Some(chunk) = resp.chunk().await.map_err(api_err)? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            let Ok(view) = serde_json::from_str::<serde_json::Value>(&data) else {
                continue;
            };
            let at = t0.elapsed().as_secs_f64();
            for f in view["fields"].as_array().into_iter().flatten() {
                let name = f["field"].as_str().unwrap_or("?").to_owned();
                let fstate = f["state"].as_str().unwrap_or("?").to_owned();
                let digits = f["digits"].as_u64().unwrap_or(0) as usize;
                let brand = f["brand"].as_str().map(brand_name);
                let prev = seen
                    .entry(name.clone())
                    .or_insert_with(|| ("waiting".into(), false, 0));
                let mut line = None;
                if digits > 0 && prev.2 == 0 {
                    line = Some(format!(
                        "{name}: keys arriving (the agent hears masking noise)"
                    ));
                }
                if let (Some(b), false) = (&brand, prev.1) {
                    line = Some(format!("{name}: {digits} keys so far, brand {b}"));
                    prev.1 = true;
                }
                if fstate != prev.0 {
                    match fstate.as_str() {
                        "complete" => {
                            let detail = match (&brand, f["last4"].as_str()) {
                                (Some(b), Some(l4)) => format!("{b} •••• {l4}"),
                                _ => format!("{digits} keys, shown only as •"),
                            };
                            line = Some(format!("{name} complete: {detail}"));
                        }
                        "invalid" => {
                            line = Some(format!(
                                "{name} rejected ({})",
                                f["reason"].as_str().unwrap_or("invalid")
                            ));
                        }
                        _ => {}
                    }
                    prev.0 = fstate;
                }
                prev.2 = digits;
                if let Some(l) = line {
                    let _ = say.send(format!("     {at:>5.1} s  capture: {l}"));
                }
            }
            let now = view["state"].as_str().unwrap_or("?").to_owned();
            if now != state {
                let _ = say.send(format!("     {at:>5.1} s  payment session: {now}"));
                state = now;
            }
            let done = matches!(
                state.as_str(),
                "sealed" | "unlocked" | "failed" | "cancelled" | "expired"
            );
            last = view;
            if done {
                return Ok(last);
            }
        }
    }
    Ok(last)
}
