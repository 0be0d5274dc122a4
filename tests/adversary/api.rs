//! Attacks on the api surface (see main.rs): the control API's router, driven with tower as a
//! client would reach it, by integrations holding a valid token of the *wrong* role or another
//! desk's token, and by a guesser at 127.0.0.2. Issue 18, items 3, 5 and 6.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tonewall::digit::{Digit, DigitSource};
use tonewall::ids::CallId;
use tonewall::net::api::{ApiState, ApiTokens, router};
use tonewall::net::clock::Clock;
use tower::ServiceExt;

const DESK_A: &str = "desk-a-0123456789abcdef";
const DESK_B: &str = "desk-b-0123456789abcdef";
const PAY: &str = "pay-0123456789abcdef0123";
const OPS: &str = "ops-0123456789abcdef0123";
const PROM: &str = "prom-0123456789abcdef012";
/// 2026-06-01T09:00:00Z: the test card's 12/30 expiry is in the future.
const T0: u64 = 1_780_304_400_000;
const KEYS: &str = "4111111111111111#1230123";

struct Api {
    state: ApiState,
    router: Router,
}

struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
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

fn tokens() -> String {
    // One `name:token:role` triple per integration (issue 18's format).
    format!(
        "deskA:{DESK_A}:desk,deskB:{DESK_B}:desk,pay:{PAY}:payment,ops:{OPS}:admin,prom:{PROM}:metrics"
    )
}

impl Api {
    fn new() -> Api {
        let tokens = ApiTokens::parse(&tokens()).unwrap();
        let state = ApiState::in_memory(tokens, Clock::starting_at(T0));
        Api {
            router: router(state.clone()),
            state,
        }
    }

    /// A request from `from` (as the server records the peer) with `token`.
    async fn call_from(
        &self,
        from: SocketAddr,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        req.extensions_mut().insert(ConnectInfo(from));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        Reply {
            status,
            retry_after,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let inside: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        self.call_from(inside, method, uri, token, body).await
    }

    async fn create(&self, token: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/sessions",
            Some(token),
            Some(json!({"agent": "agent-7"})),
        )
        .await
    }

    /// Desk A's session, bound to call `call` and sealed with the test card.
    async fn sealed_by_desk_a(&self, call: &str) -> String {
        let c = self.create(DESK_A).await;
        assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
        let id = c.json()["id"].as_str().unwrap().to_string();
        let b = self
            .call(
                Method::POST,
                &format!("/v1/sessions/{id}/bind"),
                Some(DESK_A),
                Some(json!({"call_id": call})),
            )
            .await;
        assert_eq!(b.status, StatusCode::OK, "{}", b.text);
        for (i, c) in KEYS.chars().enumerate() {
            self.state
                .feed_digit(
                    call.parse().unwrap(),
                    Digit::from_char(c).unwrap(),
                    DigitSource::Rfc4733,
                    1_000 + 200 * i as u64,
                )
                .await
                .unwrap();
        }
        id
    }

    /// The payment integration's one hand-out of a desk session's token and PIN.
    async fn credentials(&self, id: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{id}/credentials"),
            Some(PAY),
            None,
        )
        .await
    }

    async fn unlock(&self, who: &str, id: &str, token: &str, pin: &str) -> Reply {
        self.call(
            Method::POST,
            &format!("/v1/sessions/{id}/unlock"),
            Some(who),
            Some(json!({"token": token, "pin": pin})),
        )
        .await
    }
}

#[tokio::test]
async fn the_desks_create_answer_carries_nothing_that_unlocks() {
    let api = Api::new();
    let c = api.create(DESK_A).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
    let j = c.json();
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["expires_at", "id", "locator"], "{}", c.text);
    let id = j["id"].as_str().unwrap();
    // Nor can the desk fetch them afterwards; the payment integration can, once.
    let r = api
        .call(
            Method::POST,
            &format!("/v1/sessions/{id}/credentials"),
            Some(DESK_A),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let first = api.credentials(id).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.json()["token"].as_str().unwrap().len(), 64);
    let again = api.credentials(id).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::GONE, "credentials_taken".into())
    );
    // A payment-scoped create still gets them in its own answer.
    let p = api.create(PAY).await;
    assert!(p.json()["token"].is_string() && p.json()["pin"].is_string());
}

#[tokio::test]
async fn a_desk_cannot_unlock_even_with_the_right_token_and_pin() {
    let api = Api::new();
    let id = api.sealed_by_desk_a("1").await;
    let creds = api.credentials(&id).await.json();
    let (token, pin) = (
        creds["token"].as_str().unwrap(),
        creds["pin"].as_str().unwrap(),
    );
    // Even a desk that somehow learnt both, and admin, are refused before any try is spent.
    for who in [DESK_A, DESK_B, OPS, PROM] {
        let r = api.unlock(who, &id, token, pin).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "forbidden".into()),
            "{}",
            r.text
        );
        assert!(!r.text.contains("4111"), "{}", r.text);
    }
    let r = api.unlock(PAY, &id, token, pin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["pan"], "4111111111111111");
}

#[tokio::test]
async fn another_desk_cannot_read_steer_bind_or_cancel_a_session() {
    let api = Api::new();
    let c = api.create(DESK_A).await.json();
    let id = c["id"].as_str().unwrap();
    let s = format!("/v1/sessions/{id}");
    let attempts = [
        (Method::GET, s.clone(), None),
        (Method::GET, format!("{s}/events"), None),
        (
            Method::POST,
            format!("{s}/bind"),
            Some(json!({"call_id": "31"})),
        ),
        (Method::POST, format!("{s}/start"), None),
        (Method::POST, format!("{s}/reset"), None),
        (Method::POST, format!("{s}/fields/pan/request"), None),
        (
            Method::POST,
            format!("{s}/request-field"),
            Some(json!({"field": "pan"})),
        ),
        (Method::DELETE, s.clone(), None),
    ];
    for (method, uri, body) in &attempts {
        let r = api
            .call(method.clone(), uri, Some(DESK_B), body.clone())
            .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.text
        );
    }
    // The payment integration may follow it but not steer, bind or cancel it.
    assert_eq!(
        api.call(Method::GET, &s, Some(PAY), None).await.status,
        StatusCode::OK
    );
    for (method, uri, body) in attempts.iter().skip(2) {
        let r = api.call(method.clone(), uri, Some(PAY), body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.text
        );
    }
    // Untouched for its own desk.
    let mine = api.call(Method::GET, &s, Some(DESK_A), None).await;
    assert_eq!(mine.json()["state"], "pending", "{}", mine.text);
    assert!(mine.json().get("call_id").is_none());
    // Admin may cancel it.
    let r = api.call(Method::DELETE, &s, Some(OPS), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

/// A desk lists only the calls tagged with its own agent (its token's name); payment and
/// metrics tokens list none; only admin views one call or switches scrubbing.
#[tokio::test]
async fn desks_and_payment_cannot_list_calls_or_switch_scrubbing() {
    use tonewall::net::calls::CallInfo;
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
        true,
    );
    // Another agent's call: a desk's list stays empty, whatever it tries.
    assert!(calls.assign(CallId(41), "someone-else"));
    let r = api.call(Method::GET, "/v1/calls", Some(DESK_A), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["calls"], json!([]), "{}", r.text);
    // Naming the agent of a call is the operator's (or its CTI's), not a desk's.
    let r = api
        .call(
            Method::PUT,
            "/v1/calls/41/agent",
            Some(DESK_A),
            Some(json!({"agent": "desk-a"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    for who in [PAY, PROM] {
        let r = api.call(Method::GET, "/v1/calls", Some(who), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(!r.text.contains("447700900123"), "{}", r.text);
    }
    for who in [DESK_A, PAY, PROM] {
        for (method, uri, body) in [
            (Method::GET, "/v1/calls/41", None),
            (
                Method::PUT,
                "/v1/calls/41/scrub",
                Some(json!({"on": false})),
            ),
        ] {
            let r = api.call(method.clone(), uri, Some(who), body).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {uri}: {}",
                r.text
            );
            assert!(!r.text.contains("447700900123"), "{}", r.text);
        }
    }
    let r = api.call(Method::GET, "/v1/calls/41", Some(OPS), None).await;
    assert_eq!(r.json()["scrubbing"], true, "{}", r.text);
}

#[tokio::test]
async fn one_token_cannot_fill_the_session_table() {
    let api = Api::new();
    let mut created = 0;
    let mut refused = 0;
    for _ in 0..1_000 {
        let r = api.create(DESK_A).await;
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.code(), "session_quota", "{}", r.text);
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert!(created <= 20, "{created} sessions for one token");
    assert_eq!(created + refused, 1_000);
    // The real desk still gets its session.
    let r = api.create(DESK_B).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let m = api.call(Method::GET, "/metrics", Some(OPS), None).await;
    assert!(
        m.text
            .contains("tonewall_payment_sessions_refused_total{reason=\"quota\"} 980"),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn three_hundred_locator_guesses_are_stopped_before_they_succeed() {
    let api = Api::new();
    let c = api.create(DESK_A).await.json();
    let real = c["locator"].as_str().unwrap().to_string();
    let len = real.len();
    let guesser: SocketAddr = "127.0.0.2:50000".parse().unwrap();
    let mut found = 0;
    let mut locked = 0;
    // 299 wrong guesses of the right length, then the real one as the 300th.
    let n: u64 = real.parse().unwrap();
    let space = 10u64.pow(len as u32);
    for i in 1..=300u64 {
        let guess = if i == 300 {
            real.clone()
        } else {
            format!("{:0len$}", (n + i) % space)
        };
        let r = api
            .call_from(
                guesser,
                Method::GET,
                &format!("/v1/locators/{guess}"),
                Some(DESK_B),
                None,
            )
            .await;
        match r.status {
            StatusCode::OK => found += 1,
            StatusCode::NOT_FOUND => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.code(), "locked_out", "{}", r.text);
                let secs: u64 = r.retry_after.as_deref().unwrap().parse().unwrap();
                assert!(secs >= 1, "Retry-After {secs}");
                locked += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(found, 0, "a guesser found the live locator");
    assert!(locked >= 250, "only {locked} of 300 guesses refused");
    // Another source still resolves the locator; the lockout is counted.
    let r = api
        .call(
            Method::GET,
            &format!("/v1/locators/{real}"),
            Some(DESK_A),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let m = api.call(Method::GET, "/metrics", Some(OPS), None).await;
    assert!(
        m.text.contains(&format!(
            "tonewall_locator_lookups_refused_total{{surface=\"api\"}} {locked}"
        )),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn metrics_need_an_admin_or_metrics_token() {
    let api = Api::new();
    let none = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(!none.text.contains("digits_captured"));
    for who in [DESK_A, PAY] {
        let r = api.call(Method::GET, "/metrics", Some(who), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    }
    for who in [OPS, PROM] {
        let r = api.call(Method::GET, "/metrics", Some(who), None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text.contains("tonewall_payment_digits_captured_total"));
    }
    // The scraper's token opens nothing else.
    let r = api.create(PROM).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}

#[test]
fn a_token_without_a_role_is_refused_by_name_only() {
    let secret = "a-secret-token-0123456789";
    let e = ApiTokens::parse(&format!("deskA:{DESK_A}:desk,frontdesk:{secret}")).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("frontdesk"), "{text}");
    assert!(
        !text.contains(secret) && !text.contains("0123456789"),
        "{text}"
    );
    assert!(ApiTokens::parse(&format!("x:{secret}:superuser")).is_err());
}
