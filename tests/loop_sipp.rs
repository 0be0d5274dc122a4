//! The loop model (PCI Pal style) end to end on loopback sockets: tonewall runs in-process
//! (`net::run::run`), a sipp UAC plays the contact centre's PBX transferring the caller to
//! tonewall's loop number, and a sipp UAS plays the contact centre's return number, which only
//! takes the call if it names the session's agent (X-Agent) and locator (X-Locator) and whose
//! SDP sends the agent's media to a socket the test reads. The payment integration's side is
//! the control API over HTTP on its own port.
//!
//! Main case: the caller keys the locator as RFC 4733 events after tonewall answers the loop
//! call, tonewall calls the agent back, and the caller keys the test card over speech (PAN
//! in-band, expiry and CVV as events). The agent's side hears speech but no event and nothing
//! the FFT decoder or residue scanner can read; the session is sealed with the PAN's last
//! four only; the integration unlocks the card once; no card digits appear in TRACE logs or
//! the metrics. Also: a locator in the Request-URI binds the call with no DTMF, and a
//! locator nobody holds is announced and hung up without calling the contact centre.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::pcap::{
    CallerMedia, KeyRun, Keys, collect_rtp, keys_over_speech, read_udp_payloads, rtp_pcap,
};
use common::{TEST_CARD, TEST_CVV, TEST_EXPIRY, free_port, g711_round_trip};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::oneshot;
use tonewall::config::Config;
use tonewall::dsp::g711::Codec;
use tonewall::dsp::spectrum;
use tonewall::rtp::trunk::depacketize;

const SIPP: &str = "/usr/bin/sipp";
const TOKENS_ENV: &str = "TONEWALL_LOOP_SIPP_TEST_TOKENS";
const TOKEN: &str = "0123456789abcdef0123";
/// The operator's token: `/metrics`.
const OPS: &str = "ops0123456789abcdef0";
/// Longest a whole sipp run may take (sipp's own -timeout is shorter).
const WAIT: Duration = Duration::from_secs(40);
/// Longest one HTTP exchange with the API may take.
const HTTP_WAIT: Duration = Duration::from_secs(5);
const AGENT: &str = "agent-e2e-7";

/// Everything tonewall logs in this test binary, at TRACE. The subscriber is global because
/// tonewall's tasks run on the runtime's worker threads; tests running at the same time share
/// it, which only adds lines to check.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            // Timestamps are digits that could match a needle by chance.
            .without_time()
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

fn sipp_available() {
    assert!(
        Path::new(SIPP).exists(),
        "sipp is needed (the test script installs it: apt-get install sip-tester)"
    );
}

/// tonewall running in-process with one loop route to a contact centre on `cc_port`.
struct Tonewall {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    sip_port: u16,
    cc_port: u16,
    /// The fallback route's port (on_failure = "fallback"), when there is one.
    fallback_port: Option<u16>,
    api: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Media ports come from `media_min`..+999: above the kernel's ephemeral range (32768-60999
/// by default) and below `free_port`'s, so sipp is never handed a port the pool may bind.
async fn start_tonewall(media_min: u16) -> Tonewall {
    start_tonewall_with(media_min, false).await
}

/// As [`start_tonewall`]; with `fallback`, a locator not found sends the call to a fallback
/// URI on another port instead of the failure announcement.
async fn start_tonewall_with(media_min: u16, fallback: bool) -> Tonewall {
    logs();
    // SAFETY: every test stores the same value before any reader in this binary runs.
    unsafe { std::env::set_var(TOKENS_ENV, format!("test:{TOKEN}:payment,ops:{OPS}:admin")) };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let key = dir.join("master.key");
    std::fs::write(&key, "22".repeat(32)).unwrap();
    let (sip_port, cc_port, api_port) = (free_port(), free_port(), free_port());
    let fallback_port = fallback.then(free_port);
    let on_failure = match fallback_port {
        Some(p) => format!("on_failure = \"fallback\"\nfallback = \"sip:queue@127.0.0.1:{p}\""),
        None => "on_failure = \"announce\"\nannounce_ms = 1000".to_owned(),
    };
    let text = format!(
        r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp", "tcp"]
[media]
address = "127.0.0.1"
port_min = {media_min}
port_max = {media_max}
inactivity_timeout_s = 30
[[route]]
name = "loop"
mode = "loop"
sources = ["127.0.0.0/8"]
user = "pay"
target = "sip:return@127.0.0.1:{cc_port}"
target_transport = "udp"
scrub = "always"
locator_from = ["ruri", "header", "dtmf"]
locator_header = "X-Locator"
agent_header = "X-Agent"
locator_timeout_s = 10
{on_failure}
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "{TOKENS_ENV}"
[vault]
master_key_file = "{key}"
[payment]
locator_len = 4
[log]
level = "trace"
"#,
        media_max = media_min + 999,
        key = key.display(),
    );
    let config = Config::parse(&text).unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonewall::net::run::run(config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    // tonewall binds the API before SIP; a TCP connect to SIP succeeds once both are up.
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", sip_port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "tonewall did not start listening on {sip_port}");
    Tonewall {
        _tmp: tmp,
        dir,
        sip_port,
        cc_port,
        fallback_port,
        api: ([127, 0, 0, 1], api_port).into(),
        stop,
        task,
    }
}

impl Tonewall {
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }

    /// One HTTP/1.1 request to the API on a fresh connection, as the payment integration:
    /// status and body.
    async fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        self.http_as(TOKEN, method, path, body).await
    }

    /// [`Self::http`] with another token (the operator's, for `/metrics`).
    async fn http_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let body = body.map(Value::to_string).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: tonewall\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let text = tokio::time::timeout(HTTP_WAIT, async {
            let mut s = tokio::net::TcpStream::connect(self.api).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).into_owned()
        })
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"));
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: not HTTP: {text}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    async fn json(&self, method: &str, path: &str, body: Option<&Value>, want: u16) -> Value {
        let (status, text) = self.http(method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// A payment session for `agent`, as the payment integration creates it (its answer
    /// carries the retrieval token and PIN; a desk's would not).
    async fn create_session(&self, agent: &str) -> Session {
        let v = self
            .json(
                "POST",
                "/v1/sessions",
                Some(&json!({ "agent": agent })),
                201,
            )
            .await;
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("no {k}: {v}"))
                .to_owned()
        };
        Session {
            id: s("id"),
            locator: s("locator"),
            token: s("token"),
            pin: s("pin"),
        }
    }

    async fn session(&self, id: &str) -> (Value, String) {
        let (status, text) = self.http("GET", &format!("/v1/sessions/{id}"), None).await;
        assert_eq!(status, 200, "GET session: {text}");
        (serde_json::from_str(&text).unwrap(), text)
    }
}

struct Session {
    id: String,
    locator: String,
    token: String,
    pin: String,
}

fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Pcmu => "PCMU",
        Codec::Pcma => "PCMA",
    }
}

fn sipp(dir: &Path, args: &[String]) -> Command {
    let mut c = Command::new(SIPP);
    c.current_dir(dir)
        .args(["-nostdin", "-timeout", "25s", "-m", "1", "-i", "127.0.0.1"])
        .args(["-trace_msg", "-trace_err"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// The SIP messages sipp traced in `dir` (its `*_messages.log` files), for failure reports.
fn sipp_traces(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("_messages.log") || name.ends_with("_errors.log") {
            out.push_str(&format!("==== {name}\n"));
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

async fn finish(name: &str, dir: &Path, child: tokio::process::Child) {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish"))
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sipp_traces(dir)
    );
}

fn keys_args(codec: Codec) -> Vec<String> {
    vec![
        "-key".into(),
        "codec_pt".into(),
        codec.payload_type().to_string(),
        "-key".into(),
        "codec_name".into(),
        codec_name(codec).into(),
    ]
}

/// The scenario `name` from tests/sipp with `@AGENT@` and `@LOCATOR@` filled in, written to
/// `dir`.
fn scenario(dir: &Path, name: &str, agent: &str, locator: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp");
    let text = std::fs::read_to_string(repo.join(name)).unwrap();
    let text = text.replace("@AGENT@", agent).replace("@LOCATOR@", locator);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The contact centre's return number: sipp UAS on `cc_port` expecting `agent` and `locator`,
/// answering with media to `capture`.
async fn start_contact_centre(
    tw: &Tonewall,
    codec: Codec,
    agent: &str,
    locator: &str,
    capture: SocketAddr,
) -> tokio::process::Child {
    let xml = scenario(&tw.dir, "loop_cc_uas.xml", agent, locator);
    let mut args = vec![
        "-sf".into(),
        xml.display().to_string(),
        "-p".into(),
        tw.cc_port.to_string(),
        "-key".into(),
        "capture_ip".into(),
        capture.ip().to_string(),
        "-key".into(),
        "capture_port".into(),
        capture.port().to_string(),
    ];
    args.extend(keys_args(codec));
    let child = sipp(&tw.dir, &args).spawn().unwrap();
    // sipp binds its port at start; wait until it is taken.
    for _ in 0..200 {
        if UdpSocket::bind(("127.0.0.1", tw.cc_port)).is_err() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sipp UAS did not bind {}", tw.cc_port);
}

/// The PBX transferring the caller to `service` ("pay" or "pay*<locator>") with `scenario`,
/// playing `caller` (written to the working directory as caller.pcap); the capture as written.
fn start_pbx(
    tw: &Tonewall,
    scenario_name: &str,
    service: &str,
    codec: Codec,
    caller: &CallerMedia,
) -> (tokio::process::Child, Vec<u8>) {
    let pcap = rtp_pcap(&caller.packets, 20_000);
    std::fs::write(tw.dir.join("caller.pcap"), &pcap).unwrap();
    let xml = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(scenario_name);
    // sipp plays in the background; the pause keeps the call up until the last packet is out.
    let play_ms = caller.packets.len() as u64 * 20 + 400;
    let mut args = vec![
        "-sf".into(),
        xml.display().to_string(),
        "-s".into(),
        service.into(),
        "-d".into(),
        play_ms.to_string(),
        format!("127.0.0.1:{}", tw.sip_port),
        "-p".into(),
        free_port().to_string(),
        "-mp".into(),
        free_port().to_string(),
    ];
    args.extend(keys_args(codec));
    (sipp(&tw.dir, &args).spawn().unwrap(), pcap)
}

fn is_event(p: &[u8]) -> bool {
    p[1] & 0x7f == 101
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn decoded(found: &[spectrum::FoundDigit]) -> String {
    found.iter().map(|f| f.digit.reveal()).collect()
}

/// Card data as it must never appear outside the one unlock response. Long enough that a
/// locator, PIN, port or counter cannot match by chance.
fn assert_no_card_data(what: &str, text: &str) {
    for needle in [
        TEST_CARD,
        "411111111111",
        "4111 1111",
        "1111111111",
        &format!("{TEST_EXPIRY}{TEST_CVV}"),
        "\"expiry\":\"1230\"",
        "\"cvv\":\"123\"",
        "expiry=1230",
        "cvv=123",
        "12/30",
    ] {
        assert!(
            !text.contains(needle),
            "{what} contains {needle:?}: …{}…",
            text.find(needle)
                .and_then(|i| text.get(i.saturating_sub(300)..(i + 300).min(text.len())))
                .unwrap_or(text)
        );
    }
}

/// The session view carries progress, never values: only the documented keys (docs/openapi.yaml
/// `Session`, `FieldProgress`), so no field can hold digits besides the PAN's last four.
fn assert_view_has_no_values(v: &Value) {
    let allowed = [
        "id",
        "agent",
        "locator",
        "state",
        "outcome",
        "current_field",
        "error",
        "capture",
        "call_id",
        "amount",
        "reference",
        "fields",
        "expires_at",
    ];
    for k in v.as_object().unwrap().keys() {
        assert!(allowed.contains(&k.as_str()), "session view key {k:?}");
    }
    let field_keys = [
        "field",
        "digits",
        "state",
        "brand",
        "last4",
        "attempts",
        "attempts_left",
        "reason",
        "confirming",
    ];
    for f in v["fields"].as_array().unwrap() {
        for (k, val) in f.as_object().unwrap() {
            assert!(field_keys.contains(&k.as_str()), "field progress key {k:?}");
            if k == "last4" {
                assert_eq!(f["field"], "pan", "last four on {f}");
                assert_eq!(val.as_str().map(str::len), Some(4));
            }
        }
    }
}

/// Main case: locator keyed as RFC 4733 events after tonewall answers the loop call; the card
/// keyed after the bridge, the PAN in-band and the expiry and CVV as events, all over speech.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locator_keyed_after_answer_then_card_is_captured_and_kept_from_the_agent() {
    sipp_available();
    let codec = Codec::Pcma;
    let tw = start_tonewall(61_000).await;
    let s = tw.create_session(AGENT).await;
    assert_eq!(s.locator.len(), 4, "locator_len = 4");

    // ~1 s of speech, the locator as events, 1.5 s of speech while tonewall calls the agent
    // back (keys before the bridge are dropped by design), the PAN and `#` in-band, the expiry
    // and CVV as events, then speech.
    let pan_run = format!("{TEST_CARD}#");
    let rest_run = format!("{TEST_EXPIRY}{TEST_CVV}");
    let runs = [
        KeyRun {
            lead_ms: 1000.0,
            text: &s.locator,
            keys: Keys::Events,
        },
        KeyRun {
            lead_ms: 1500.0,
            text: &pan_run,
            keys: Keys::InBand,
        },
        KeyRun {
            lead_ms: 300.0,
            text: &rest_run,
            keys: Keys::Events,
        },
    ];
    let tail_ms = 1200.0;
    let caller = keys_over_speech(codec, &runs, tail_ms);

    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let capture_addr = capture.local_addr().unwrap();
    let uas = start_contact_centre(&tw, codec, AGENT, &s.locator, capture_addr).await;
    let collector = collect_rtp(capture);
    let (uac, pcap) = start_pbx(&tw, "loop_pbx_uac.xml", "pay", codec, &caller);
    finish("sipp UAC (PBX transfer to the loop number)", &tw.dir, uac).await;
    finish("sipp UAS (contact centre return number)", &tw.dir, uas).await;
    let heard = collector.await.unwrap();

    // Control: the caller's audio and the capture as written carry every key.
    let keyed = format!("{}{pan_run}{rest_run}", s.locator);
    let found = spectrum::fft_decode(&g711_round_trip(&caller.audio, codec), &mut |_| {});
    assert_eq!(
        decoded(&found),
        keyed,
        "control: the decoder reads the keys in the caller's audio"
    );
    let sent = read_udp_payloads(&pcap);
    assert_eq!(
        sent, caller.packets,
        "the capture carries the packets as made"
    );
    let wire = depacketize(sent.iter().map(|p| p.as_slice()), caller.trunk.first_ts);
    let events_sent = sent.iter().filter(|p| is_event(p)).count();
    assert!(
        events_sent >= s.locator.len() + rest_run.len(),
        "control: {events_sent} event packets sent"
    );
    let in_band = decoded(&spectrum::fft_decode(&wire.audio, &mut |_| {}));
    assert_eq!(
        in_band, pan_run,
        "control: the capture's audio carries the PAN in-band (events replace the rest)"
    );

    // What reached the agent: speech, no event, nothing decodable.
    let events_heard = heard.iter().filter(|p| is_event(p)).count();
    assert_eq!(
        events_heard, 0,
        "telephone-events reached the contact centre"
    );
    let pts: std::collections::BTreeSet<u8> = heard.iter().map(|p| p[1] & 0x7f).collect();
    assert_eq!(
        pts.into_iter().collect::<Vec<_>>(),
        vec![codec.payload_type()]
    );
    // Everything from the PAN on is sent after the bridge: one packet out per packet in
    // (events become masking audio), give or take loss.
    let card_start = caller.spans[s.locator.len()].start as u32;
    let card_ts = caller.trunk.first_ts.wrapping_add(card_start);
    let after_bridge = caller
        .packets
        .iter()
        .filter(|p| u32::from_be_bytes(p[4..8].try_into().unwrap()).wrapping_sub(card_ts) < 1 << 31)
        .count();
    assert!(
        heard.len() * 10 >= after_bridge * 9,
        "{} packets reached the contact centre for {after_bridge} sent after the bridge",
        heard.len()
    );
    let cc = depacketize(heard.iter().map(|p| p.as_slice()), caller.trunk.first_ts).audio;
    let found = spectrum::fft_decode(&cc, &mut |_| {});
    assert!(
        found.is_empty(),
        "the FFT decoder heard {} digits at the contact centre",
        found.len()
    );
    let residue = spectrum::sensitive_scan(&cc, &mut |_| {});
    assert!(
        residue.is_empty(),
        "{} dual-tone fragments at the contact centre, first at {:.1} ms",
        residue.len(),
        residue.first().map_or(0.0, |r| r.start_ms)
    );
    // The speech after the last key arrives unchanged behind the relay's fixed delay.
    let last_end = caller.spans.last().unwrap().end as usize;
    let tail = last_end + 1600..last_end + (tail_ms as usize - 200) * 8;
    let said = g711_round_trip(&caller.audio, codec);
    assert!(
        rms(&said[tail.clone()]) > 300.0,
        "the caller's tail is speech (RMS {:.0})",
        rms(&said[tail.clone()])
    );
    let (delay, same) = (0..=160)
        .map(|d| {
            let same = tail
                .clone()
                .filter(|&t| cc.get(t + d) == Some(&said[t]))
                .count();
            (d, same)
        })
        .max_by_key(|&(_, same)| same)
        .unwrap();
    assert!(
        same * 100 >= tail.len() * 99,
        "speech reached the contact centre altered: {same} of {} samples equal (delay {delay})",
        tail.len()
    );

    // The session: sealed, the PAN's last four and digit counts only.
    let (v, text) = tw.session(&s.id).await;
    assert_eq!(v["state"], "sealed", "{text}");
    assert_eq!(v["agent"], AGENT);
    assert_eq!(v["fields"][0]["field"], "pan", "{text}");
    assert_eq!(v["fields"][0]["last4"], "1111", "{text}");
    assert_eq!(v["fields"][0]["digits"], 16, "{text}");
    assert_eq!(v["fields"][1]["digits"], 4, "{text}");
    assert_eq!(v["fields"][2]["digits"], 3, "{text}");
    assert_no_card_data("the session view", &text);
    assert_view_has_no_values(&v);

    // The payment integration unlocks the card once.
    let unlock = json!({ "token": s.token, "pin": s.pin });
    let path = format!("/v1/sessions/{}/unlock", s.id);
    let card = tw.json("POST", &path, Some(&unlock), 200).await;
    assert_eq!(card["pan"], TEST_CARD);
    assert_eq!(card["expiry"], TEST_EXPIRY);
    assert_eq!(card["cvv"], TEST_CVV);
    let again = tw.json("POST", &path, Some(&unlock), 410).await;
    assert_eq!(again["error"]["code"], "already_unlocked", "{again}");
    assert_no_card_data("the second unlock's answer", &again.to_string());

    // Nothing outside that one answer holds card data: logs at TRACE, metrics.
    let (status, metrics) = tw.http_as(OPS, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tonewall_payment_sessions_ended_total{outcome=\"unlocked\"} 1"),
        "{metrics}"
    );
    assert_no_card_data("/metrics", &metrics);
    tw.shut_down().await;
    let log = log_text();
    assert!(
        log.contains("loop call bound to its payment session")
            && log.contains("key fed to capture"),
        "the capturing subscriber sees tonewall's logs at TRACE"
    );
    assert!(
        !log.contains(&s.token) && !log.contains(&s.pin),
        "the retrieval token or PIN is in the logs"
    );
    assert_no_card_data("the logs", &log);
}

/// The PBX dials `pay*<locator>`: tonewall resolves the locator from the Request-URI without
/// answering the caller, calls the agent back with X-Agent / X-Locator, and relays the answer.
/// The card keyed as events is captured into the session the call was bound to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locator_in_the_request_uri_binds_the_call_without_dtmf() {
    sipp_available();
    let codec = Codec::Pcmu;
    let tw = start_tonewall(62_000).await;
    let s = tw.create_session(AGENT).await;
    let card = format!("{TEST_CARD}#{TEST_EXPIRY}{TEST_CVV}");
    let caller = keys_over_speech(
        codec,
        &[KeyRun {
            lead_ms: 600.0,
            text: &card,
            keys: Keys::Events,
        }],
        500.0,
    );
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let capture_addr = capture.local_addr().unwrap();
    let uas = start_contact_centre(&tw, codec, AGENT, &s.locator, capture_addr).await;
    let collector = collect_rtp(capture);
    let service = format!("pay*{}", s.locator);
    let (uac, _) = start_pbx(&tw, "loop_pbx_uac.xml", &service, codec, &caller);
    finish("sipp UAC (PBX dialling pay*<locator>)", &tw.dir, uac).await;
    finish("sipp UAS (contact centre return number)", &tw.dir, uas).await;
    let heard = collector.await.unwrap();

    assert!(
        heard.len() * 10 >= caller.packets.len() * 9,
        "{} packets reached the contact centre for {} sent",
        heard.len(),
        caller.packets.len()
    );
    assert_eq!(
        heard.iter().filter(|p| is_event(p)).count(),
        0,
        "telephone-events reached the contact centre"
    );
    let cc = depacketize(heard.iter().map(|p| p.as_slice()), caller.trunk.first_ts).audio;
    assert!(spectrum::fft_decode(&cc, &mut |_| {}).is_empty());
    let (v, text) = tw.session(&s.id).await;
    assert_eq!(v["state"], "sealed", "{text}");
    assert!(
        v["call_id"].as_str().is_some_and(|c| !c.is_empty()),
        "the session names the call it was bound to: {text}"
    );
    assert_eq!(v["fields"][0]["last4"], "1111", "{text}");
    assert_no_card_data("the session view", &text);
    assert_view_has_no_values(&v);
    tw.shut_down().await;
}

/// A locator no session holds, keyed after tonewall answers: with on_failure = "announce" the
/// caller hears the failure tone and tonewall hangs up with a BYE; the contact centre's return
/// number is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_locator_is_announced_and_hung_up_without_calling_the_contact_centre() {
    sipp_available();
    let codec = Codec::Pcma;
    let tw = start_tonewall(63_000).await;
    let s = tw.create_session(AGENT).await;
    let wrong = format!(
        "{:04}",
        (s.locator.parse::<u32>().unwrap() + 5_003) % 10_000
    );
    assert_ne!(wrong, s.locator);
    let caller = keys_over_speech(
        codec,
        &[KeyRun {
            lead_ms: 600.0,
            text: &wrong,
            keys: Keys::Events,
        }],
        3_000.0,
    );
    // The return number's SIP port: anything tonewall sends there is a failure.
    let cc = tokio::net::UdpSocket::bind(("127.0.0.1", tw.cc_port))
        .await
        .unwrap();
    let (uac, _) = start_pbx(&tw, "loop_pbx_uac_not_found.xml", "pay", codec, &caller);
    finish(
        "sipp UAC (PBX transfer, unknown locator, expects tonewall's BYE)",
        &tw.dir,
        uac,
    )
    .await;
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_millis(500), cc.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "the contact centre was sent: {}",
        got.map(|r| String::from_utf8_lossy(&buf[..r.unwrap().0]).into_owned())
            .unwrap_or_default()
    );
    let (v, text) = tw.session(&s.id).await;
    assert_eq!(v["state"], "pending", "the session is not bound: {text}");
    let (_, metrics) = tw.http_as(OPS, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("cause=\"not_located\",side=\"trunk\"} 1"),
        "the call ended as not located: {metrics}"
    );
    tw.shut_down().await;
}

/// Control for the contact centre's scenario: a return call without the agent's header (here
/// sipp's own UAC calling it directly) fails it, so its exit status above means X-Agent and
/// X-Locator were there with the session's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contact_centre_scenario_fails_a_call_without_x_agent() {
    sipp_available();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let xml = scenario(dir, "loop_cc_uas.xml", AGENT, "1234");
    let port = free_port();
    let mut args = vec![
        "-sf".into(),
        xml.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-key".into(),
        "capture_ip".into(),
        "127.0.0.1".into(),
        "-key".into(),
        "capture_port".into(),
        free_port().to_string(),
    ];
    args.extend(keys_args(Codec::Pcmu));
    let uas = sipp(dir, &args).spawn().unwrap();
    let mut bound = false;
    for _ in 0..200 {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(bound, "sipp UAS did not bind {port}");
    let uac = sipp(
        dir,
        &[
            "-sn".into(),
            "uac".into(),
            format!("127.0.0.1:{port}"),
            "-p".into(),
            free_port().to_string(),
        ],
    )
    .spawn()
    .unwrap();
    let out = tokio::time::timeout(WAIT, uas.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "the UAS took a call without X-Agent");
    assert!(
        sipp_traces(dir).contains("header X-Agent: not found"),
        "{}",
        sipp_traces(dir)
    );
    let _ = tokio::time::timeout(WAIT, uac.wait_with_output()).await;
}

/// The same unknown locator on a route whose on_failure is "fallback": the caller, already
/// answered by tonewall, is put through to the fallback URI (scrubbed like any call) and the
/// return number is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_locator_goes_to_the_fallback_uri_when_one_is_configured() {
    sipp_available();
    let codec = Codec::Pcma;
    let tw = start_tonewall_with(64_000, true).await;
    let s = tw.create_session(AGENT).await;
    let wrong = format!(
        "{:04}",
        (s.locator.parse::<u32>().unwrap() + 5_003) % 10_000
    );
    // After the wrong locator, speech and then a key over it: the fallback queue must hear
    // the speech and not the key.
    let caller = keys_over_speech(
        codec,
        &[
            KeyRun {
                lead_ms: 600.0,
                text: &wrong,
                keys: Keys::Events,
            },
            KeyRun {
                lead_ms: 1500.0,
                text: "5",
                keys: Keys::InBand,
            },
        ],
        1_000.0,
    );
    let cc = tokio::net::UdpSocket::bind(("127.0.0.1", tw.cc_port))
        .await
        .unwrap();
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let capture_addr = capture.local_addr().unwrap();
    // The fallback queue: the inline tests' contact centre, which checks no header.
    let fb_port = tw.fallback_port.unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp");
    let queue = sipp(
        &tw.dir,
        &[
            "-sf".into(),
            repo.join("cc_uas_capture.xml").display().to_string(),
            "-p".into(),
            fb_port.to_string(),
            "-key".into(),
            "capture_ip".into(),
            "127.0.0.1".into(),
            "-key".into(),
            "capture_port".into(),
            capture_addr.port().to_string(),
        ],
    )
    .spawn()
    .unwrap();
    let mut bound = false;
    for _ in 0..200 {
        if UdpSocket::bind(("127.0.0.1", fb_port)).is_err() {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(bound, "sipp UAS did not bind {fb_port}");
    let collector = collect_rtp(capture);
    let (uac, _) = start_pbx(&tw, "loop_pbx_uac.xml", "pay", codec, &caller);
    finish("sipp UAC (PBX transfer, unknown locator)", &tw.dir, uac).await;
    finish("sipp UAS (fallback queue)", &tw.dir, queue).await;
    let heard = collector.await.unwrap();

    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_millis(500), cc.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "the return number was sent: {}",
        got.map(|r| String::from_utf8_lossy(&buf[..r.unwrap().0]).into_owned())
            .unwrap_or_default()
    );
    // Control: the key is in the caller's audio.
    let said = g711_round_trip(&caller.audio, codec);
    assert_eq!(
        decoded(&spectrum::fft_decode(&said, &mut |_| {})),
        format!("{wrong}5")
    );
    let key = caller.spans.last().unwrap();
    assert!(
        heard.len() * 10 >= (caller.packets.len() - key.start as usize / 160) * 9,
        "{} packets reached the fallback queue",
        heard.len()
    );
    assert_eq!(heard.iter().filter(|p| is_event(p)).count(), 0);
    let fb = depacketize(heard.iter().map(|p| p.as_slice()), caller.trunk.first_ts).audio;
    assert!(
        spectrum::fft_decode(&fb, &mut |_| {}).is_empty(),
        "a key reached the fallback queue"
    );
    let tail = key.end as usize + 1600..said.len() - 1600;
    assert!(
        rms(&fb[tail.clone()]) > 0.5 * rms(&said[tail]),
        "speech reached the queue"
    );
    let (v, text) = tw.session(&s.id).await;
    assert_eq!(v["state"], "pending", "the session is not bound: {text}");
    tw.shut_down().await;
}
