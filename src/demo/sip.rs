//! The demo over SIP: tonewall's `run()` in process between a trunk UA and a contact-centre UA.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use super::analysis::{CallOutcome, analyse};
use super::api::{Api, Created, DeskCreated, Unlocked, brand_name, error_code, follow};
use super::{
    AGENT, DEMO_PAN, DemoError, DemoSummary, LOOP_USER, SIP_TIMEOUT, caller_audio, caller_speech,
    chain, hex, synthetic_voice,
};
use crate::config::{Config, RouteConfig, RouteMode, ScrubMode, Transport};
use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::net::run::{self, RunError};
use crate::net::ua::{Call, Ending, SipUa, UaConfig, UaError};
use crate::rtp::packet::RtpView;
use crate::rtp::trunk::{KeySpan, TrunkConfig, depacketize, packetize};

/// Environment variables the in-process relay reads its API token and master key from
/// (`ApiState::from_config` reads both through the config's variable names).
const TOKENS_ENV: &str = "TONEWALL_DEMO_API_TOKENS";
const KEY_ENV: &str = "TONEWALL_DEMO_MASTER_KEY";

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
        target_transport: Some(Transport::Udp),
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
///
/// With `pause`, it waits for Enter (on standard input) before the caller is transferred and
/// before it shuts down, so that someone can log in to the agent's desk page (its address and
/// desk token are printed) and watch the payment there.
pub fn run(out_dir: &Path, w: &mut dyn Write, pause: bool) -> Result<DemoSummary, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    std::fs::create_dir_all(out_dir).map_err(io)?;
    let tokens = Tokens {
        payment: Zeroizing::new(hex(&rand::random::<[u8; 16]>())),
        desk: Zeroizing::new(hex(&rand::random::<[u8; 16]>())),
    };
    let key = Zeroizing::new(hex(&rand::random::<[u8; 32]>()));
    // SAFETY: set before this function starts its runtime; the CLI calls it from `main` with
    // no other thread running, so nothing reads the environment concurrently.
    unsafe {
        // The demo plays the agent's desk (a desk token named after the agent: it opens the
        // session and follows it, and logs in to the desk page) and the payment integration,
        // which takes the session's token and PIN once and unlocks the card.
        std::env::set_var(
            TOKENS_ENV,
            format!(
                "demo:{}:payment,{AGENT}:{}:desk",
                tokens.payment.as_str(),
                tokens.desk.as_str()
            ),
        );
        std::env::set_var(KEY_ENV, key.as_str());
    }
    drop(key);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DemoError::Network)?;
    rt.block_on(sip_demo(out_dir, w, &tokens, pause))
}

/// The demo's API tokens: the payment integration's and the agent's desk.
struct Tokens {
    payment: Zeroizing<String>,
    desk: Zeroizing<String>,
}

/// Waits for a line on standard input (or its end).
async fn wait_for_enter() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
}

/// Seconds of 8 kHz audio.
fn secs(samples: u64) -> f64 {
    samples as f64 / 8000.0
}

/// Whether an RTP packet carries payload type `pt` (the call's telephone-event type).
fn is_event(p: &[u8], pt: Option<u8>) -> bool {
    RtpView::parse(p).is_ok_and(|v| Some(v.payload_type()) == pt)
}

/// The caller's side of the call as the demo scripted it.
struct Script<'a> {
    caller: &'a [i16],
    inband: &'a [KeySpan],
    events: &'a [KeySpan],
    source: &'a str,
}

async fn sip_demo(
    out_dir: &Path,
    w: &mut dyn Write,
    tokens: &Tokens,
    pause: bool,
) -> Result<DemoSummary, DemoError> {
    let token = tokens.payment.as_str();
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

    writeln!(
        w,
        "     The agent's desk page: http://{}/desk (log in with the desk token {}, agent {AGENT}).",
        cfg.api.listen,
        tokens.desk.as_str()
    )
    .map_err(io)?;

    let api = Api::new(cfg.api.listen, token)?;
    let desk = Api::new(cfg.api.listen, tokens.desk.as_str())?;
    let created = open_session(out_dir, w, (&desk, &api)).await?;
    if pause {
        writeln!(
            w,
            "     Paused: open the desk page, log in and open the payment under \"Recent payments\"; press Enter to go on."
        )
        .map_err(io)?;
        wait_for_enter().await;
    }
    let (mut a, mut b) = loop_call(out_dir, w, (&trunk, &mut cc), &cfg, &created).await?;
    let script = Script {
        caller: &caller,
        inband: &inband,
        events: &events,
        source,
    };
    let follow_api = Api::new(cfg.api.listen, token)?;
    let legs = (&a, &b);
    let outcome = stream_media(
        out_dir,
        w,
        (follow_api, &created.id),
        legs,
        &script,
        &mut sum,
    )
    .await?;
    teardown(out_dir, w, &mut a, &mut b).await?;
    unlock_twice(out_dir, w, &api, &created, &mut sum).await?;
    if pause {
        writeln!(
            w,
            "     Paused: the desk page shows how the payment ended; press Enter to stop tonewall."
        )
        .map_err(io)?;
        wait_for_enter().await;
    }
    relay.stop().await?;

    analyse(out_dir, w, &caller, &inband, &events, &outcome, &mut sum)?;
    Ok(sum)
}

/// Step 2: the agent's desk opens a session; the payment integration takes its token and PIN.
async fn open_session(
    out_dir: &Path,
    w: &mut dyn Write,
    (desk, api): (&Api, &Api),
) -> Result<Created, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    let opened = desk
        .expect(
            "/v1/sessions",
            &serde_json::json!({"agent": AGENT, "amount": "GBP 42.00", "reference": "demo-order-1"}),
            201,
        )
        .await?;
    let opened: DeskCreated = serde_json::from_slice(&opened)
        .map_err(|e| DemoError::Api(format!("session body: {e}")))?;
    writeln!(
        w,
        "  2. Agent {AGENT}'s desk opens a payment session (POST /v1/sessions): {}, locator {}.",
        opened.id, opened.locator
    )
    .map_err(io)?;
    let creds = api
        .expect(
            &format!("/v1/sessions/{}/credentials", opened.id),
            &serde_json::json!({}),
            200,
        )
        .await?;
    let mut created: Created = serde_json::from_slice(&creds)
        .map_err(|e| DemoError::Api(format!("credentials body: {e}")))?;
    created.locator = opened.locator;
    writeln!(
        w,
        "     The payment integration takes the session's retrieval token and PIN once (POST …/credentials, not shown)"
    )
    .map_err(io)?;
    writeln!(
        w,
        "     to unlock the card later; the desk never holds them."
    )
    .map_err(io)?;

    Ok(created)
}

/// Steps 3 and 4: the contact centre's PBX transfers the caller to tonewall's loop number and
/// keys the locator once tonewall answers; tonewall calls the agent back.
async fn loop_call(
    out_dir: &Path,
    w: &mut dyn Write,
    (trunk, cc): (&SipUa, &mut SipUa),
    cfg: &Config,
    created: &Created,
) -> Result<(Call, Call), DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    writeln!(
        w,
        "  3. The caller is talking with agent {AGENT} and agrees to pay. The contact centre transfers the caller"
    )
    .map_err(io)?;
    let target = format!("sip:{LOOP_USER}@{}", cfg.sip.listen);
    let a = trunk.call(&target, cfg.sip.listen, &[]).await?;
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
    let (b, (cc_uri, cc_agent, cc_locator)) = b?;
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
    Ok((a, b))
}

/// Step 5: the caller's speech and keys one way, the agent's voice the other, in real time,
/// while the session's masked progress is followed over SSE and printed as it comes.
async fn stream_media(
    out_dir: &Path,
    w: &mut dyn Write,
    (follow_api, id): (Api, &str),
    (a, b): (&Call, &Call),
    script: &Script<'_>,
    sum: &mut DemoSummary,
) -> Result<CallOutcome, DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    let trunk_cfg = TrunkConfig {
        codec: a.codec(),
        event_pt: a.event_pt().unwrap_or(101),
        ..TrunkConfig::default()
    };
    let packets = packetize(script.caller, &trunk_cfg, Some(script.events));
    let events_sent = packets
        .iter()
        .filter(|p| is_event(p, Some(trunk_cfg.event_pt)))
        .count();
    let agent_voice: Vec<i16> = synthetic_voice(script.caller.len())
        .iter()
        .map(|s| s / 2)
        .collect();
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let t0 = tokio::time::Instant::now();
    let mut progress = {
        let (tx, id) = (tx.clone(), id.to_owned());
        tokio::spawn(async move { follow(&follow_api, &id, t0, tx).await })
    };
    let milestones = milestones(tx.clone(), t0, script);
    let _ = tx.send(format!(
        "  5. Media flows in real time ({:.1} s): the caller talks ({}), 20 ms {} packets; the agent talks back.",
        secs(script.caller.len() as u64),
        script.source,
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
    let flows = async {
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
    let (((sent_a, sent_b, ()), view), printed) = tokio::join!(flows, printer(w, rx));
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
    let outcome = outcome(b, before_media, sent_a, events_sent);
    writeln!(
        w,
        "     The trunk sent {} packets ({} telephone-events); the agent received {}, of which {} telephone-events.",
        outcome.packets_sent, outcome.events_sent, outcome.packets_received, outcome.events_received
    )
    .map_err(io)?;
    Ok(outcome)
}

/// Prints when the caller starts keying each pass and when the keys are done, as the audio
/// reaches those points.
fn milestones(
    tx: mpsc::UnboundedSender<String>,
    t0: tokio::time::Instant,
    script: &Script<'_>,
) -> impl Future<Output = ()> + use<> {
    let first = script.inband.first().map_or(0, |s| s.start);
    let second = script.events.first().map_or(0, |s| s.start);
    let last = script.events.last().map_or(0, |s| s.end);
    let (n_in, n_ev) = (script.inband.len(), script.events.len());
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
}

/// What the agent's side received of the payment call's media (after `before_media` packets).
fn outcome(b: &Call, before_media: usize, sent: usize, events_sent: usize) -> CallOutcome {
    let all = b.received_packets();
    let received = all.get(before_media..).unwrap_or_default();
    let origin = received
        .first()
        .and_then(|p| RtpView::parse(p).ok())
        .map_or(0, |v| v.timestamp());
    CallOutcome {
        agent: depacketize(received.iter().map(Vec::as_slice), origin).audio,
        packets_sent: sent,
        events_sent,
        packets_received: received.len(),
        events_received: received
            .iter()
            .filter(|p| is_event(p, b.event_pt()))
            .count(),
    }
}

/// Step 6: the trunk hangs up; tonewall hangs up the contact centre.
async fn teardown(
    out_dir: &Path,
    w: &mut dyn Write,
    a: &mut Call,
    b: &mut Call,
) -> Result<(), DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
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

    Ok(())
}

/// Step 7: the integration unlocks the sealed card once; a second unlock is refused.
async fn unlock_twice(
    out_dir: &Path,
    w: &mut dyn Write,
    api: &Api,
    created: &Created,
    sum: &mut DemoSummary,
) -> Result<(), DemoError> {
    let io = |e| DemoError::Output(out_dir.to_path_buf(), e);
    let base = format!("/v1/sessions/{}", created.id);
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
    Ok(())
}
