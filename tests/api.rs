//! The control API end to end over its axum router (tower `oneshot`, no sockets except the
//! `serve` test on 127.0.0.1:0): bearer auth, sessions and locators, the digit feed from the
//! media path, masked progress over SSE, the one-time unlock with PIN tries, TTLs on tokio's
//! paused clock, and a leak check over every log line, error body, SSE event and the metrics.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tonewall::digit::{Digit, DigitSource};
use tonewall::ids::CallId;
use tonewall::net::api::{ApiState, ApiTokens, router, serve};
use tonewall::net::clock::Clock;
use tonewall::payment::desk::DeskError;
use tower::ServiceExt;

const DESK: &str = "dddddddddddddddddddddddd";
const PAY: &str = "pppppppppppppppppppppppp";
const OPS: &str = "oooooooooooooooooooooooo";
/// 2026-06-01T09:00:00Z: the test card's 12/30 expiry is in the future.
const T0: u64 = 1_780_304_400_000;
const PAN: &str = "4111111111111111";
const KEYS: &str = "4111111111111111#1230123";

struct Api {
    state: ApiState,
    router: Router,
}

struct Reply {
    status: StatusCode,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Api {
    fn new() -> Api {
        let tokens = ApiTokens::parse(&format!(
            "desk:{DESK}:desk,pay:{PAY}:payment,ops:{OPS}:admin"
        ))
        .unwrap();
        let state = ApiState::in_memory(tokens, Clock::starting_at(T0));
        Api {
            router: router(state.clone()),
            state,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        Reply {
            status,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Some(DESK), None).await
    }

    async fn admin_get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Some(OPS), None).await
    }

    /// The payment integration takes a desk session's token and PIN (once).
    async fn credentials(&self, id: &str) -> (String, String) {
        let r = self
            .call(
                Method::POST,
                &format!("/v1/sessions/{id}/credentials"),
                Some(PAY),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let j = r.json();
        (
            j["token"].as_str().unwrap().to_string(),
            j["pin"].as_str().unwrap().to_string(),
        )
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(DESK), Some(&body.to_string()))
            .await
    }

    async fn create(&self) -> Value {
        let r = self
            .post(
                "/v1/sessions",
                json!({"agent": "agent-7", "amount": "12.50 GBP"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()
    }

    async fn bind(&self, id: &str, call: &str) -> Reply {
        self.post(&format!("/v1/sessions/{id}/bind"), json!({"call_id": call}))
            .await
    }

    async fn key(&self, call: &str, keys: &str, start_ms: u64) {
        for (i, c) in keys.chars().enumerate() {
            self.state
                .feed_digit(
                    call.parse().unwrap(),
                    Digit::from_char(c).unwrap(),
                    DigitSource::Rfc4733,
                    start_ms + 200 * i as u64,
                )
                .await
                .unwrap();
        }
    }

    async fn unlock(&self, id: &str, token: &str, pin: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{id}/unlock"),
            Some(PAY),
            Some(&json!({"token": token, "pin": pin}).to_string()),
        )
        .await
    }

    /// A session bound to `call` with the test card keyed and sealed.
    async fn sealed(&self, call: &str) -> (String, String, String) {
        let c = self.create().await;
        let id = c["id"].as_str().unwrap().to_string();
        assert_eq!(self.bind(&id, call).await.status, StatusCode::OK);
        self.key(call, KEYS, 1_000).await;
        assert_eq!(
            self.get(&format!("/v1/sessions/{id}")).await.json()["state"],
            "sealed"
        );
        let (token, pin) = self.credentials(&id).await;
        (id, token, pin)
    }
}

/// A PIN of the same length that is not `pin`.
fn wrong(pin: &str) -> String {
    pin.bytes()
        .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
        .collect()
}

/// What must never appear outside the one unlock response: the PAN whole or in part, and the
/// expiry and CVV as values of their fields.
fn assert_clean(what: &str, text: &str) {
    for needle in [
        PAN,
        "411111",
        "11111111",
        "\"cvv\":\"123\"",
        "\"expiry\":\"1230\"",
        "cvv=123",
        "expiry=1230",
        "12/30",
    ] {
        assert!(!text.contains(needle), "{what} contains {needle:?}: {text}");
    }
}

#[tokio::test]
async fn requests_need_a_valid_bearer_token() {
    let api = Api::new();
    let body = json!({"agent": "a"}).to_string();
    let none = api
        .call(Method::POST, "/v1/sessions", None, Some(&body))
        .await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let bad = api
        .call(
            Method::POST,
            "/v1/sessions",
            Some("dddddddddddddddddddddddx"),
            Some(&body),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let r = api.call(Method::GET, "/v1/locators/1234", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Liveness is open (docs/openapi.yaml `security: []`); metrics need admin or metrics.
    let h = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (h.status, h.json()["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    assert_eq!(
        api.call(Method::GET, "/metrics", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api.admin_get("/metrics").await.status, StatusCode::OK);
    let ok = api
        .call(Method::POST, "/v1/sessions", Some(PAY), Some(&body))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

#[tokio::test]
async fn create_session_and_resolve_its_locator() {
    let api = Api::new();
    let c = api.create().await;
    let id = c["id"].as_str().unwrap();
    let locator = c["locator"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(locator.len() == 6 && locator.bytes().all(|b| b.is_ascii_digit()));
    // The desk's answer carries nothing that unlocks; the payment integration takes that once.
    assert!(c.get("pin").is_none() && c.get("token").is_none(), "{c}");
    let (token, pin) = api.credentials(id).await;
    assert_eq!((token.len(), pin.len()), (64, 6));
    // Default TTL 900 s from T0.
    assert_eq!(c["expires_at"], "2026-06-01T09:15:00.000Z");

    let l = api.get(&format!("/v1/locators/{locator}")).await;
    assert_eq!(l.status, StatusCode::OK);
    assert_eq!(
        (l.json()["session_id"].as_str(), l.json()["agent"].as_str()),
        (Some(id), Some("agent-7"))
    );
    let other = if locator == "000000" {
        "000001"
    } else {
        "000000"
    };
    assert_eq!(
        api.get(&format!("/v1/locators/{other}")).await.code(),
        "not_found"
    );
    assert_eq!(
        api.get("/v1/locators/12ab").await.status,
        StatusCode::NOT_FOUND
    );

    let s = api.get(&format!("/v1/sessions/{id}")).await.json();
    assert_eq!(s["state"], "pending");
    assert_eq!(s["amount"], "12.50 GBP");
    let fields: Vec<&str> = s["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["pan", "expiry", "cvv"]);
    // The token and PIN are shown once: never on reads.
    let text = api.get(&format!("/v1/sessions/{id}")).await.text;
    assert!(!text.contains(&token) && !text.contains("\"pin\""));

    let bad = api
        .post("/v1/sessions", json!({"agent": "a", "ttl_s": 5}))
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let bad = api
        .post("/v1/sessions", json!({"agent": "a", "fields": ["expiry"]}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/v1/sessions/nothex").await.code(), "not_found");
}

#[tokio::test]
async fn keys_only_count_while_capturing_and_the_agent_can_reset() {
    let api = Api::new();
    let c = api.create().await;
    let id = c["id"].as_str().unwrap();
    let one = Digit::from_char('4').unwrap();
    // No call is bound to it yet: a key on the call it will get is no session's.
    let e = api
        .state
        .feed_digit(CallId(9), one, DigitSource::InBand, 10)
        .await
        .unwrap_err();
    assert_eq!(e, DeskError::NoSession);
    let b = api
        .post(
            &format!("/v1/sessions/{id}/bind"),
            json!({"call_id": "9", "start": false}),
        )
        .await;
    assert_eq!(b.json()["state"], "bound");
    assert_eq!(
        api.state
            .feed_digit(CallId(9), one, DigitSource::InBand, 20)
            .await,
        Err(DeskError::NotCapturing)
    );
    let s = api
        .post(&format!("/v1/sessions/{id}/start"), json!({}))
        .await;
    assert_eq!(s.json()["state"], "capturing");
    assert_eq!(s.json()["call_id"], "9");
    api.key("9", "41111", 100).await;
    let pan = &api.get(&format!("/v1/sessions/{id}")).await.json()["fields"][0];
    assert_eq!(
        (pan["digits"].clone(), pan["brand"].clone()),
        (json!(5), json!("visa"))
    );
    let r = api
        .post(&format!("/v1/sessions/{id}/reset"), json!({}))
        .await;
    assert_eq!(r.json()["fields"][0]["digits"], 0);
    api.key("9", "4111111111111111#12", 5_000).await;
    let r = api
        .post(&format!("/v1/sessions/{id}/fields/pan/request"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["fields"][0]["state"], "waiting");
    let r = api
        .post(
            &format!("/v1/sessions/{id}/request-field"),
            json!({"field": "postcode"}),
        )
        .await;
    assert_eq!(r.code(), "bad_request");
    // A second session cannot take the same call.
    let c2 = api.create().await;
    assert_eq!(
        api.bind(c2["id"].as_str().unwrap(), "9").await.code(),
        "conflict"
    );
    // Cancel: gone for the locator, state cancelled.
    let d = api
        .call(
            Method::DELETE,
            &format!("/v1/sessions/{id}"),
            Some(DESK),
            None,
        )
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get(&format!("/v1/sessions/{id}")).await.json()["state"],
        "cancelled"
    );
    let loc = c["locator"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v1/locators/{loc}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn wrong_pins_run_out_and_destroy_the_record() {
    let api = Api::new();
    let (id, token, pin) = api.sealed("1").await;
    let bad = wrong(&pin);
    let r = api.unlock(&id, &token, &bad).await;
    assert_eq!(
        (r.status, r.code(), r.json()["error"]["tries_left"].clone()),
        (StatusCode::FORBIDDEN, "wrong_pin".into(), json!(2))
    );
    // A wrong retrieval token costs no try.
    let r = api.unlock(&id, &"0".repeat(64), &pin).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    assert_eq!(
        api.unlock(&id, &token, &bad).await.json()["error"]["tries_left"],
        1
    );
    let r = api.unlock(&id, &token, &bad).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::GONE, "tries_exhausted".into())
    );
    let r = api.unlock(&id, &token, &pin).await;
    assert_eq!(r.code(), "tries_exhausted", "the right PIN is too late");
    assert_eq!(
        api.get(&format!("/v1/sessions/{id}")).await.json()["state"],
        "failed"
    );
    let m = api.admin_get("/metrics").await.text;
    assert!(
        m.contains("tonewall_payment_unlocks_total{outcome=\"wrong_pin\"} 2"),
        "{m}"
    );
    assert!(m.contains("tonewall_payment_sessions_ended_total{outcome=\"tries_exhausted\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn ttls_end_sessions_and_records() {
    let api = Api::new();
    let r = api
        .post("/v1/sessions", json!({"agent": "a", "ttl_s": 30}))
        .await;
    let c = r.json();
    let id = c["id"].as_str().unwrap();
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert_eq!(
        api.get(&format!("/v1/sessions/{id}")).await.json()["state"],
        "pending"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        api.get(&format!("/v1/sessions/{id}")).await.json()["state"],
        "expired"
    );
    let loc = c["locator"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v1/locators/{loc}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.bind(id, "1").await.code(), "expired");

    // A sealed record lives the vault TTL (120 s) from sealing, then is gone.
    let (id, token, pin) = api.sealed("2").await;
    tokio::time::advance(Duration::from_secs(120)).await;
    let r = api.unlock(&id, &token, &pin).await;
    assert_eq!((r.status, r.code()), (StatusCode::GONE, "expired".into()));
    assert_eq!(
        api.get(&format!("/v1/sessions/{id}")).await.json()["state"],
        "expired"
    );
    let m = api.admin_get("/metrics").await.text;
    assert!(
        m.contains("tonewall_payment_sessions_ended_total{outcome=\"expired\"} 2"),
        "{m}"
    );
}

/// Everything the tracing subscriber writes, at TRACE.
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

#[tokio::test]
async fn a_whole_payment_leaks_no_card_data() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Everything that is not the one unlock response.
    let mut seen: Vec<(String, String)> = Vec::new();

    let api = Api::new();
    let c = api.create().await;
    let id = c["id"].as_str().unwrap().to_string();
    let (token, pin) = api.credentials(&id).await;
    let (token, pin) = (token.as_str(), pin.as_str());

    // Subscribe to progress before anything happens.
    let req = Request::get(format!("/v1/sessions/{id}/events"))
        .header(header::AUTHORIZATION, format!("Bearer {DESK}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut sse = resp.into_body().into_data_stream();

    assert_eq!(api.bind(&id, "11").await.json()["state"], "capturing");
    api.key("11", "41111111", 1_000).await;
    let mid = api.get(&format!("/v1/sessions/{id}")).await;
    let pan = &mid.json()["fields"][0];
    assert_eq!(
        (pan["digits"].clone(), pan["state"].clone()),
        (json!(8), json!("capturing"))
    );
    assert!(
        pan.get("last4").is_none(),
        "no last four before the PAN is complete"
    );
    seen.push(("session".into(), mid.text));
    api.key("11", "11111111", 2_600).await;
    let s = api.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(s.json()["fields"][0]["state"], "valid");
    assert!(s.json()["fields"][0].get("last4").is_none());
    seen.push(("session".into(), s.text));
    api.key("11", "#1230123", 4_200).await;
    let s = api.get(&format!("/v1/sessions/{id}")).await;
    let j = s.json();
    assert_eq!(
        (j["state"].clone(), j["capture"].clone()),
        (json!("sealed"), json!("complete"))
    );
    assert_eq!(j["fields"][0]["last4"], "1111");
    assert_eq!(j["fields"][1]["digits"], 4);
    assert_eq!(j["fields"][2]["digits"], 3);
    seen.push(("session".into(), s.text));

    // Error bodies, including a body that quotes card digits back at serde.
    let bad = api
        .call(
            Method::POST,
            "/v1/sessions",
            Some(DESK),
            Some("{\"agent\": 4111111111111111, \"cvv\": \"123\"}"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    seen.push(("error".into(), bad.text));
    let bad = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/unlock"),
            Some(PAY),
            Some(&format!("{{\"token\":\"{token}\",\"pin\":\"{PAN}x\"}}")),
        )
        .await;
    assert_eq!(bad.code(), "bad_request");
    seen.push(("error".into(), bad.text));
    let w = api.unlock(&id, token, &wrong(pin)).await;
    assert_eq!(w.code(), "wrong_pin");
    seen.push(("error".into(), w.text));

    let card = api.unlock(&id, token, pin).await;
    assert_eq!(card.status, StatusCode::OK, "{}", card.text);
    assert_eq!(
        card.json(),
        json!({"pan": PAN, "expiry": "1230", "cvv": "123", "brand": "visa"})
    );
    let again = api.unlock(&id, token, pin).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::GONE, "already_unlocked".into())
    );
    seen.push(("error".into(), again.text));
    let s = api.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(s.json()["state"], "unlocked");
    seen.push(("session".into(), s.text));

    // The stream ends with the session; every event is a masked progress snapshot.
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = sse.next().await {
            raw.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    })
    .await
    .expect("the SSE stream ends when the session does");
    let events: Vec<Value> = raw
        .split("\n\n")
        .filter(|e| e.contains("data:"))
        .map(|e| {
            assert!(e.starts_with("event: progress\n"), "{e}");
            let data: String = e.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            serde_json::from_str(&data).unwrap()
        })
        .collect();
    assert!(events.len() >= 20, "{} events", events.len());
    assert_eq!(events.first().unwrap()["state"], "pending");
    assert_eq!(events.last().unwrap()["state"], "unlocked");
    let counts: Vec<u64> = events
        .iter()
        .map(|e| e["fields"][0]["digits"].as_u64().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(counts.contains(&1) && counts.contains(&16));
    for e in &events {
        let pan = &e["fields"][0];
        if pan["state"] != "complete" {
            assert!(pan.get("last4").is_none(), "{e}");
        }
    }
    seen.push(("sse".into(), raw));

    let m = api.admin_get("/metrics").await;
    assert!(
        m.text.contains("tonewall_payment_digits_captured_total 23"),
        "{}",
        m.text
    );
    assert!(
        m.text
            .contains("tonewall_payment_unlocks_total{outcome=\"ok\"} 1")
    );
    assert!(
        m.text
            .contains("tonewall_payment_unlocks_total{outcome=\"already_unlocked\"} 1")
    );
    assert!(
        m.text
            .contains("tonewall_payment_sessions_ended_total{outcome=\"unlocked\"} 1")
    );
    seen.push(("metrics".into(), m.text));

    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    // The audit trail: one line per unlock outcome, with the integration and no PIN.
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tonewall::audit") && l.contains(" unlock"))
        .collect();
    assert_eq!(audit.len(), 4, "{log}");
    for (line, outcome) in audit
        .iter()
        .zip(["bad_request", "wrong_pin", "ok", "already_unlocked"])
    {
        assert!(
            line.contains(&format!("outcome=\"{outcome}\""))
                || line.contains(&format!("outcome={outcome}")),
            "{line}"
        );
        assert!(
            line.contains("integration=pay") || line.contains("integration=\"pay\""),
            "{line}"
        );
        assert!(!line.contains(pin) && !line.contains(token), "{line}");
    }
    assert!(
        log.contains("key fed to capture"),
        "TRACE lines are captured"
    );
    assert!(!log.contains(pin) && !log.contains(token));
    seen.push(("logs".into(), log));

    for (what, text) in &seen {
        assert_clean(what, text);
    }
}

/// One HTTP/1.1 request on a fresh loopback connection; reads until the server closes.
async fn raw(addr: std::net::SocketAddr, req: String) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

async fn read_all(mut s: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serve_answers_on_loopback_and_shutdown_closes_sse_streams() {
    let tokens = ApiTokens::parse(&format!("desk:{DESK}:desk")).unwrap();
    let state = ApiState::in_memory(tokens, Clock::system());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    let t = Duration::from_secs(5);
    let health = tokio::time::timeout(t, async {
        read_all(
            raw(
                addr,
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
            )
            .await,
        )
        .await
    })
    .await
    .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("{\"status\":\"ok\"}"), "{health}");

    let body = r#"{"agent":"agent-1"}"#;
    let created = tokio::time::timeout(t, async {
        read_all(raw(addr, format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DESK}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )).await).await
    })
    .await
    .unwrap();
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let json: Value = serde_json::from_str(created.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let id = json["id"].as_str().unwrap();

    // An open progress stream must not hold the graceful shutdown up.
    let sse = raw(addr, format!(
        "GET /v1/sessions/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DESK}\r\n\r\n"
    ))
    .await;
    let mut sse = tokio::io::BufReader::new(sse);
    let first = tokio::time::timeout(t, async {
        use tokio::io::AsyncBufReadExt;
        let mut seen = String::new();
        while !seen.contains("\"state\"") {
            if sse.read_line(&mut seen).await.unwrap() == 0 {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    assert!(
        first.contains("text/event-stream") && first.contains("\"state\":\"pending\""),
        "{first}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(t, server)
        .await
        .expect("shutdown ends")
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_inter_digit_timeout_ends_a_field_on_the_api_clock() {
    let api = Api::new();
    let c = api.create().await;
    let id = c["id"].as_str().unwrap();
    api.bind(id, "1").await;
    // The media clock starts near zero, far from the API's UNIX clock: the timeout must
    // still be measured from the last key (15 keys later: 3 000 ms on the media clock).
    api.key("1", PAN, 0).await;
    api.state.tick().await;
    let pan = |r: Reply| r.json()["fields"][0].clone();
    assert_eq!(
        pan(api.get(&format!("/v1/sessions/{id}")).await)["state"],
        "valid"
    );
    // Default inter-digit timeout 6 s after the last key, which the media path placed 3 s
    // after the first (fed at T0).
    tokio::time::advance(Duration::from_millis(8_999)).await;
    api.state.tick().await;
    assert_eq!(
        pan(api.get(&format!("/v1/sessions/{id}")).await)["state"],
        "valid"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    api.state.tick().await;
    let p = pan(api.get(&format!("/v1/sessions/{id}")).await);
    assert_eq!(
        (p["state"].clone(), p["last4"].clone()),
        (json!("complete"), json!("1111"))
    );
    // A partial expiry times out too and costs an attempt.
    api.key("1", "12", 9_000).await;
    tokio::time::advance(Duration::from_secs(7)).await;
    api.state.tick().await;
    let s = api.get(&format!("/v1/sessions/{id}")).await.json();
    let e = &s["fields"][1];
    assert_eq!(
        (
            e["state"].clone(),
            e["reason"].clone(),
            e["attempts"].clone()
        ),
        (json!("invalid"), json!("timeout"), json!(1))
    );
}

/// Every path and method in docs/openapi.yaml reaches a handler (not the JSON 404 fallback),
/// except the scrub switch, which belongs to the media shell.
#[tokio::test]
async fn every_documented_route_is_served() {
    let api = Api::new();
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let mut path = None;
    let mut checked = 0;
    for line in yaml.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            path = Some(format!("/{p}"));
            continue;
        }
        let Some(p) = &path else { continue };
        let method = match line.trim_end() {
            "    get:" => Method::GET,
            "    post:" => Method::POST,
            "    put:" => Method::PUT,
            "    delete:" => Method::DELETE,
            _ => continue,
        };
        let uri = p
            .replace("{id}", &"0".repeat(32))
            .replace("{field}", "pan")
            .replace("{locator}", "1234")
            .replace("{call_id}", "7");
        // Each route answers its own role (desk for sessions, payment for unlock, admin for
        // calls and metrics); a route reached with another role answers 403, not 404/405.
        let r = api.call(method.clone(), &uri, Some(DESK), Some("{}")).await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert!(
            !r.text.contains("no such endpoint"),
            "{method} {uri}: {}",
            r.text
        );
        checked += 1;
    }
    assert!(checked >= 16, "{checked}");
    let r = api.get("/v1/nothing").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
}

#[tokio::test]
async fn calls_are_listed_and_binding_switches_scrubbing_on() {
    use tonewall::net::calls::CallInfo;
    use tonewall::net::media::MediaControl;

    let api = Api::new();
    let calls = api.state.calls();
    calls.attach();
    calls.started(
        CallId(41),
        CallInfo {
            route: "desk".into(),
            mode: "inline",
            from: "447700900123".into(),
            to: "sales".into(),
            started_ms: T0,
        },
        false,
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    calls.media(
        CallId(41),
        tonewall::net::media::ControlSender::unattached(tx),
        false,
    );

    let r = api.admin_get("/v1/calls").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.json();
    assert_eq!(list["calls"][0]["call_id"], "41");
    assert_eq!(list["calls"][0]["route"], "desk");
    assert_eq!(list["calls"][0]["scrubbing"], false);

    // On-demand: on and off from the API reach the relay.
    async fn scrub(api: &Api, on: bool) -> Reply {
        let body = json!({ "on": on }).to_string();
        api.call(Method::PUT, "/v1/calls/41/scrub", Some(OPS), Some(&body))
            .await
    }
    let put = |on| scrub(&api, on);
    let r = put(true).await;
    assert_eq!(
        (r.status, r.json()["scrubbing"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_eq!(rx.try_recv(), Ok(MediaControl::Scrub(true)));
    assert_eq!(put(false).await.status, StatusCode::OK);
    assert_eq!(rx.try_recv(), Ok(MediaControl::Scrub(false)));

    // Binding needs a live call, and turns scrubbing on for it.
    let c = api.create().await;
    let id = c["id"].as_str().unwrap();
    let r = api.bind(id, "99").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    assert_eq!(api.bind(id, "41").await.status, StatusCode::OK);
    assert_eq!(rx.try_recv(), Ok(MediaControl::Scrub(true)));
    assert_eq!(
        api.admin_get("/v1/calls/41").await.json()["scrubbing"],
        true
    );
    // While a session is bound, the agent cannot switch scrubbing off.
    let r = put(false).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "conflict".into())
    );
    assert!(rx.try_recv().is_err());

    // The loop model's look-up, and the end of the call failing the session.
    let (sid, agent) = api
        .state
        .locate(c["locator"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!((sid.to_string().as_str(), agent.as_str()), (id, "agent-7"));
    api.state.call_ended(CallId(41));
    assert_eq!(
        api.admin_get("/v1/calls/41").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/v1/sessions/{id}")).await.json()["state"],
        "failed"
    );
    assert!(
        api.state
            .locate(c["locator"].as_str().unwrap())
            .await
            .is_none()
    );
}
