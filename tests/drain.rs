//! Leaving service gracefully, as an operator does it, against the real binary on 127.0.0.1:
//! `POST /v1/admin/drain` and back, and SIGTERM (what `systemctl stop` sends). The trunk and the
//! contact centre are the in-repo user agent; a load balancer's probe is a raw OPTIONS.
//!
//! It shows: while draining, OPTIONS and new INVITEs get 503 with Retry-After and the metric
//! says so, the call in progress keeps its media both ways; after SIGTERM the process exits 0
//! by itself once the last call has ended, and when a call outlives `sip.drain_s` both legs
//! are hung up (BYE) before the process exits.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use tokio::net::UdpSocket;
use tonewall::net::ua::{Call, Ending, SipUa, UaConfig, UaError};

const WAIT: Duration = Duration::from_secs(10);
const OPS: &str = "ops-token-0123456789abcdef";

/// The relay process; killed if a test fails half-way.
struct Relay {
    child: Child,
    sip: SocketAddr,
    api: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    fn start(cc: SocketAddr, media_min: u16, drain_s: u64) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, "22".repeat(32)).unwrap();
        let sip_port = free_port();
        let api = free_port();
        let config = dir.path().join("tonewall.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp"]
retry_after_s = 2
drain_s = {drain_s}
[media]
address = "127.0.0.1"
port_min = {media_min}
port_max = {media_max}
[[route]]
name = "inline"
sources = ["127.0.0.0/8"]
target = "sip:agents@{cc}"
scrub = "always"
[api]
listen = "127.0.0.1:{api}"
tokens_env = "TW_DRAIN_TEST_TOKENS"
[vault]
master_key_file = "{key}"
[log]
level = "info"
"#,
                media_max = media_min + 99,
                key = key.display(),
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tonewall"))
            .args(["run", "--config"])
            .arg(&config)
            .env("TW_DRAIN_TEST_TOKENS", format!("ops:{OPS}:admin"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tonewall run");
        let mut relay = Relay {
            child,
            sip: SocketAddr::from(([127, 0, 0, 1], sip_port)),
            api,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", api)).is_err() {
            if let Ok(Some(st)) = relay.child.try_wait() {
                panic!("tonewall run exited before listening: {st}");
            }
            assert!(Instant::now() < deadline, "tonewall run did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        relay
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// The exit status, waiting at most `within`.
    async fn exited_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if t0.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One HTTP/1.1 request with the admin token: status and body.
    fn http(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.api)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {OPS}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http("GET", "/metrics");
        body.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Sends an out-of-dialog OPTIONS, as Kamailio's dispatcher probes; the status and
    /// whether the answer carried a Retry-After.
    async fn probe(&self, n: u32) -> (u16, bool) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = sock.local_addr().unwrap();
        let req = format!(
            "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKprobe{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p{n}\r\nTo: <sip:{sip}>\r\n\
             Call-ID: probe-{n}@{me}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            sip = self.sip
        );
        sock.send_to(req.as_bytes(), self.sip).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
            .await
            .expect("an answer to OPTIONS")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let status = text[8..11].parse().unwrap();
        (status, text.contains("\r\nRetry-After: "))
    }

    /// Probes until `done` holds for the status (the shell takes a drain order
    /// asynchronously), at most [`WAIT`]; the last answer.
    async fn probe_until(&self, done: impl Fn(u16) -> bool) -> (u16, bool) {
        let t0 = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let seen = self.probe(n).await;
            if done(seen.0) || t0.elapsed() > WAIT {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ua(user: &str) -> UaConfig {
    UaConfig {
        user: user.into(),
        timeout: Duration::from_secs(5),
        ..UaConfig::default()
    }
}

/// The contact centre: answers every call and hands each over.
async fn contact_centre() -> (SocketAddr, tokio::sync::mpsc::Receiver<Call>) {
    let mut cc = SipUa::bind(ua("agents")).await.unwrap();
    let addr = cc.local_addr();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok(inc) = cc.accept().await {
            let Ok(call) = inc.answer().await else {
                continue;
            };
            if tx.send(call).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A call from the trunk through the relay, and the contact centre's end of it.
async fn place(
    trunk: &SipUa,
    relay: &Relay,
    cc: &mut tokio::sync::mpsc::Receiver<Call>,
) -> (Call, Call) {
    let a = trunk
        .call(&format!("sip:pay@{}", relay.sip), relay.sip, &[])
        .await
        .unwrap();
    let b = tokio::time::timeout(WAIT, cc.recv())
        .await
        .expect("the contact centre gets the call")
        .unwrap();
    (a, b)
}

/// Media still flows both ways: packets sent at each end arrive at the other.
async fn media_flows(a: &Call, b: &Call) {
    let (a0, b0) = (a.received_packets().len(), b.received_packets().len());
    let tone: Vec<i16> = (0..1600)
        .map(|i| (3000.0 * (f64::from(i) * 0.3).sin()) as i16)
        .collect();
    a.send_audio(&tone, None).await.unwrap();
    b.send_audio(&tone, None).await.unwrap();
    let t0 = Instant::now();
    while (a.received_packets().len() < a0 + 5 || b.received_packets().len() < b0 + 5)
        && t0.elapsed() < WAIT
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.received_packets().len() >= b0 + 5, "caller to agent");
    assert!(a.received_packets().len() >= a0 + 5, "agent to caller");
}

fn refused_with_503(r: Result<Call, UaError>) {
    match r {
        Err(UaError::Rejected { status: 503, .. }) => {}
        Err(e) => panic!("expected 503, got {e}"),
        Ok(_) => panic!("a new call was taken while draining"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_refuses_new_calls_keeps_the_call_and_resumes() {
    let (cc_addr, mut cc) = contact_centre().await;
    let relay = Relay::start(cc_addr, 52000, 300);
    let trunk = SipUa::bind(ua("trunk")).await.unwrap();
    assert_eq!(relay.probe(1).await, (200, false));
    let (a, b) = place(&trunk, &relay, &mut cc).await;

    let (st, body) = relay.http("POST", "/v1/admin/drain");
    assert_eq!(st, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["draining"], true);
    assert_eq!(v["exiting"], false);
    assert_eq!(v["calls_active"], 1);
    assert!(v["hangup_at"].is_string());
    let seen = relay.probe_until(|s| s != 200).await;
    assert_eq!(
        seen,
        (503, true),
        "a draining node's probe: 503 with Retry-After"
    );
    assert_eq!(relay.metric("tonewall_draining"), Some(1.0));
    let new = trunk
        .call(&format!("sip:pay@{}", relay.sip), relay.sip, &[])
        .await;
    refused_with_503(new);
    media_flows(&a, &b).await;

    // Back in service.
    let (st, body) = relay.http("DELETE", "/v1/admin/drain");
    assert_eq!(st, 200, "{body}");
    assert_eq!(relay.probe_until(|s| s == 200).await.0, 200);
    assert_eq!(relay.metric("tonewall_draining"), Some(0.0));
    let (mut a2, _b2) = place(&trunk, &relay, &mut cc).await;
    assert_eq!(a2.hangup().await.unwrap(), Ending::ByUs(200));
    let mut a = a;
    assert_eq!(a.hangup().await.unwrap(), Ending::ByUs(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_when_the_last_call_ends() {
    let (cc_addr, mut cc) = contact_centre().await;
    let mut relay = Relay::start(cc_addr, 52200, 300);
    let trunk = SipUa::bind(ua("trunk")).await.unwrap();
    let (mut a, b) = place(&trunk, &relay, &mut cc).await;

    relay.signal(libc::SIGTERM);
    assert_eq!(relay.probe_until(|s| s != 200).await, (503, true));
    let (st, body) = relay.http("GET", "/v1/admin/drain");
    assert_eq!(st, 200);
    assert!(body.contains("\"exiting\":true"), "{body}");
    // A signal's drain cannot be taken back from the API.
    assert_eq!(relay.http("DELETE", "/v1/admin/drain").0, 409);
    refused_with_503(
        trunk
            .call(&format!("sip:pay@{}", relay.sip), relay.sip, &[])
            .await,
    );
    // The call in progress is untouched, and the process waits for it.
    media_flows(&a, &b).await;
    assert!(
        relay
            .exited_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(a.hangup().await.unwrap(), Ending::ByUs(200));
    let st = relay
        .exited_within(WAIT)
        .await
        .expect("the process exits once its last call has ended");
    assert!(st.success(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hangs_up_calls_that_outlive_the_drain_limit() {
    let (cc_addr, mut cc) = contact_centre().await;
    let mut relay = Relay::start(cc_addr, 52400, 2);
    let trunk = SipUa::bind(ua("trunk")).await.unwrap();
    let (mut a, mut b) = place(&trunk, &relay, &mut cc).await;
    let t0 = Instant::now();
    relay.signal(libc::SIGTERM);
    // Both ends are hung up by the relay (BYE, answered) after drain_s = 2 s.
    assert_eq!(a.wait_ended(WAIT).await.unwrap(), Ending::ByPeer);
    assert_eq!(b.wait_ended(WAIT).await.unwrap(), Ending::ByPeer);
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "hung up before the limit: {:?}",
        t0.elapsed()
    );
    let st = relay.exited_within(WAIT).await.expect("exits after");
    assert!(st.success(), "{st}");
}
