//! The inline model end to end over sockets on 127.0.0.1: a trunk UA calls through `tonewall
//! run` to a contact-centre UA, the agent keys the payment session's locator on their own phone
//! (agent→caller direction), tonewall binds the call to the session and starts capture, and the
//! card the caller then keys is captured and sealed while the agent receives no
//! telephone-event. The call list shows the call scrubbed. The contact centre's 200 OK names the
//! agent (`X-Agent`), so that agent's desk token sees the call and another agent's does not.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonewall::config::Config;
use tonewall::digit::Digit;
use tonewall::net::ua::{SipUa, UaConfig};
use tonewall::rtp::packet::RtpView;
use tonewall::rtp::trunk::{TrunkConfig, packetize};

/// The payment integration's token (creates the session, so holds its token and PIN).
const TOKEN: &str = "inlinetest0123456789";
/// The operator's token: calls and metrics.
const OPS: &str = "inlineops01234567890";
/// Desk tokens of agent 7001 (who takes the call) and of agent 7002.
const DESK_7001: &str = "inlinedesk7001abcdef";
const DESK_7002: &str = "inlinedesk7002abcdef";
const KEYS: &str = "4111111111111111#1230123";

struct Http {
    client: reqwest::Client,
    base: String,
    token: &'static str,
}

impl Http {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token)
            .timeout(Duration::from_secs(5));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls the session until `state` (bounded).
    async fn wait_state(&self, id: &str, state: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..100 {
            let (_, v) = self
                .send(reqwest::Method::GET, &format!("/v1/sessions/{id}"), None)
                .await;
            if v["state"] == state {
                return v;
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("session never reached {state}: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keying_the_locator_binds_the_call_and_the_card_is_captured() {
    // SAFETY: the only test in this binary; set before tonewall reads them.
    unsafe {
        std::env::set_var(
            "TONEWALL_INLINE_TEST_TOKENS",
            format!(
                "pay:{TOKEN}:payment,ops:{OPS}:admin,7001:{DESK_7001}:desk,7002:{DESK_7002}:desk"
            ),
        );
        std::env::set_var("TONEWALL_INLINE_TEST_KEY", "22".repeat(32));
    }
    let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
    let ua = |user: &str| UaConfig {
        ip: lo,
        user: user.into(),
        timeout: Duration::from_secs(5),
        ..UaConfig::default()
    };
    let mut cc = SipUa::bind(ua("agents")).await.unwrap();
    let trunk = SipUa::bind(ua("caller")).await.unwrap();
    let (sip_port, api_port) = (free_port(), free_port());
    let text = format!(
        r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp"]
[media]
port_min = 43000
port_max = 43199
[[route]]
name = "desk"
target = "sip:agents@{cc}"
scrub = "on-demand"
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "TONEWALL_INLINE_TEST_TOKENS"
[vault]
master_key_env = "TONEWALL_INLINE_TEST_KEY"
"#,
        cc = cc.local_addr()
    );
    let config = Config::parse(&text).unwrap();
    let sip: SocketAddr = config.sip.listen;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(tonewall::net::run::run(config, async {
        let _ = stopped.await;
    }));
    let http = Http {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{api_port}"),
        token: TOKEN,
    };
    let ops = Http {
        token: OPS,
        client: http.client.clone(),
        base: http.base.clone(),
    };
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", api_port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "tonewall did not start");

    let (st, created) = http
        .send(
            reqwest::Method::POST,
            "/v1/sessions",
            Some(json!({"agent": "7001"})),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let locator: Vec<Digit> = created["locator"]
        .as_str()
        .unwrap()
        .chars()
        .filter_map(Digit::from_char)
        .collect();

    let target = format!("sip:5550100@{sip}");
    let (a, b) = tokio::join!(trunk.call(&target, sip, &[]), async {
        let inc = cc.accept().await?;
        inc.answer_with(&[("X-Agent", "7001")]).await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    // The agent the contact centre named sees the call on their desk; another agent does not.
    let desk = |token| Http {
        token,
        client: http.client.clone(),
        base: http.base.clone(),
    };
    let (st, mine) = desk(DESK_7001)
        .send(reqwest::Method::GET, "/v1/calls", None)
        .await;
    assert_eq!(st, 200, "{mine}");
    assert_eq!(mine["calls"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine["calls"][0]["agent"], "7001", "{mine}");
    let (_, theirs) = desk(DESK_7002)
        .send(reqwest::Method::GET, "/v1/calls", None)
        .await;
    assert_eq!(theirs["calls"], json!([]), "{theirs}");
    // On-demand route: nothing scrubbed until a session is bound.
    let (_, calls) = ops.send(reqwest::Method::GET, "/v1/calls", None).await;
    assert_eq!(calls["calls"][0]["scrubbing"], false, "{calls}");
    let call_id = calls["calls"][0]["call_id"].as_str().unwrap().to_string();

    // The agent keys the locator on their phone: tonewall binds the call and starts capture.
    b.send_keys(&locator, 70, 80).await.unwrap();
    let view = http.wait_state(&id, "capturing").await;
    assert_eq!(view["call_id"], call_id.as_str(), "{view}");
    let (_, call) = ops
        .send(reqwest::Method::GET, &format!("/v1/calls/{call_id}"), None)
        .await;
    assert_eq!(
        call["scrubbing"], true,
        "binding switched scrubbing on: {call}"
    );

    // The caller keys the card, in-band with RFC 4733 copies.
    let (sig, spans) = tones(KEYS, ToneParams::default(), 300.0, 11);
    let audio = to_i16(&sig);
    let cfg = TrunkConfig {
        codec: a.codec(),
        event_pt: a.event_pt().unwrap_or(101),
        ..TrunkConfig::default()
    };
    let packets = packetize(&audio, &cfg, Some(&spans));
    a.send_packets(&packets).await.unwrap();
    let view = http.wait_state(&id, "sealed").await;
    assert_eq!(view["fields"][0]["last4"], "1111", "{view}");
    let text = view.to_string();
    assert!(!text.contains("411111") && !text.contains("1230"), "{text}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = b
        .received_packets()
        .iter()
        .filter(|p| RtpView::parse(p).is_ok_and(|v| Some(v.payload_type()) == b.event_pt()))
        .count();
    assert_eq!(events, 0, "telephone-events reached the agent");

    // The metrics count the call, its packets and the stripped events (folded once a second),
    // never a digit.
    let mut metrics = String::new();
    for _ in 0..40 {
        metrics = http
            .client
            .get(format!("{}/metrics", http.base))
            .bearer_auth(OPS)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("tonewall_rtp_events_stripped_total ") && !l.ends_with(" 0"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("tonewall_calls_started_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tonewall_calls_active 1"), "{metrics}");
    assert!(
        metrics.contains("tonewall_rtp_packets_total{direction=\"caller_to_agent\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tonewall_rtp_events_stripped_total 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("411111") && !metrics.contains("1230123"));

    let (st, card) = http
        .send(
            reqwest::Method::POST,
            &format!("/v1/sessions/{id}/unlock"),
            Some(json!({"token": created["token"], "pin": created["pin"]})),
        )
        .await;
    assert_eq!((st, card["pan"].as_str()), (200, Some("4111111111111111")));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
