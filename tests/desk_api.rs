//! The desk page's side of the control API over its axum router (tower `oneshot`, no
//! sockets): the page and its security headers, the login (desk tokens only, JSON from the
//! page's origin), the cookie session (HttpOnly, SameSite=Strict, the desk role only), CSRF
//! and origin checks on everything that changes state, logout, a desk's own sessions and
//! calls, and match-twice and the capture's error words through the API.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tonewall::digit::{Digit, DigitSource};
use tonewall::ids::CallId;
use tonewall::net::api::{ApiState, ApiTokens, router};
use tonewall::net::calls::CallInfo;
use tonewall::net::clock::Clock;
use tower::ServiceExt;

const DESK: &str = "desk-7001-0123456789abcdef";
const OTHER_DESK: &str = "desk-7002-0123456789abcdef";
const PAY: &str = "pay-0123456789abcdef0123";
const OPS: &str = "ops-0123456789abcdef0123";
/// 2026-06-01T09:00:00Z.
const T0: u64 = 1_780_304_400_000;
const HOST: &str = "127.0.0.1:8080";

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

struct Api {
    state: ApiState,
    router: Router,
}

/// A browser's request: the cookie, the CSRF header and the origin as given.
#[derive(Default, Clone)]
struct Browser<'a> {
    cookie: Option<&'a str>,
    csrf: Option<&'a str>,
    origin: Option<&'a str>,
    bearer: Option<&'a str>,
}

impl Api {
    fn new() -> Api {
        let tokens = ApiTokens::parse(&format!(
            "7001:{DESK}:desk,7002:{OTHER_DESK}:desk,pay:{PAY}:payment,ops:{OPS}:admin"
        ))
        .unwrap();
        let state = ApiState::in_memory(tokens, Clock::starting_at(T0));
        Api {
            router: router(state.clone()),
            state,
        }
    }

    async fn send(&self, method: Method, uri: &str, b: &Browser<'_>, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, HOST);
        if let Some(c) = b.cookie {
            req = req.header(header::COOKIE, format!("theme=dark; tonewall_desk={c}"));
        }
        if let Some(t) = b.csrf {
            req = req.header("x-tonewall-csrf", t);
        }
        if let Some(o) = b.origin {
            req = req.header(header::ORIGIN, o);
        }
        if let Some(t) = b.bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    /// Logs in with `token` from the page's origin; returns the cookie's value and the CSRF
    /// token.
    async fn login(&self, token: &str) -> (String, String) {
        let r = self
            .send(
                Method::POST,
                "/v1/desk/login",
                &Browser {
                    origin: Some("http://127.0.0.1:8080"),
                    ..Browser::default()
                },
                Some(json!({ "token": token })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let set = r.header("set-cookie");
        let value = set
            .strip_prefix("tonewall_desk=")
            .and_then(|v| v.split(';').next())
            .unwrap()
            .to_string();
        (value, r.json()["csrf"].as_str().unwrap().to_string())
    }
}

#[tokio::test]
async fn the_page_is_served_under_a_strict_policy_with_no_inline_code() {
    let api = Api::new();
    let none = Browser::default();
    let page = api.send(Method::GET, "/desk", &none, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("x-frame-options"), "DENY");
    // No inline script, style or handler: the policy would block them, so none may be relied on.
    let html = page.text.to_ascii_lowercase();
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/desk/desk.js\"").count()
    );
    assert!(
        !html.contains("style=") && !html.contains("<style"),
        "inline style"
    );
    assert!(
        !html.contains(" onclick") && !html.contains(" onload") && !html.contains("javascript:")
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external resources"
    );
    for (path, ty) in [
        ("/desk/desk.js", "text/javascript"),
        ("/desk/desk.css", "text/css"),
        ("/desk/icon.svg", "image/svg+xml"),
    ] {
        let r = api.send(Method::GET, path, &none, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(r.header("content-type").starts_with(ty), "{path}");
        assert!(
            !r.text.contains("http://") || path == "/desk/icon.svg",
            "{path}"
        );
    }
    let js = api
        .send(Method::GET, "/desk/desk.js", &none, None)
        .await
        .text;
    assert!(
        !js.contains("innerHTML") && !js.contains("eval("),
        "the page builds its DOM from text"
    );
}

#[tokio::test]
async fn only_a_desk_token_logs_in_and_the_cookie_is_httponly_and_strict() {
    let api = Api::new();
    let here = Browser {
        origin: Some("http://127.0.0.1:8080"),
        ..Browser::default()
    };
    // Payment and admin tokens open no desk login; an unknown token neither.
    for (token, want) in [
        (PAY, StatusCode::FORBIDDEN),
        (OPS, StatusCode::FORBIDDEN),
        ("not-a-token-0123456789", StatusCode::UNAUTHORIZED),
    ] {
        let r = api
            .send(
                Method::POST,
                "/v1/desk/login",
                &here,
                Some(json!({ "token": token })),
            )
            .await;
        assert_eq!(r.status, want, "{}", r.text);
        assert!(r.header("set-cookie").is_empty());
        assert!(!r.text.contains(token));
    }
    // From another site, or not as JSON: refused (no login CSRF).
    let elsewhere = Browser {
        origin: Some("https://evil.example"),
        ..Browser::default()
    };
    let r = api
        .send(
            Method::POST,
            "/v1/desk/login",
            &elsewhere,
            Some(json!({ "token": DESK })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let form = Request::builder()
        .method(Method::POST)
        .uri("/v1/desk/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={DESK}")))
        .unwrap();
    let resp = api.router.clone().oneshot(form).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let r = api
        .send(
            Method::POST,
            "/v1/desk/login",
            &here,
            Some(json!({ "token": DESK })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let set = r.header("set-cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP on loopback: no Secure flag"
    );
    assert_eq!(r.json()["agent"], "7001");
    assert!(r.header("cache-control").contains("no-store"));
    assert!(!r.text.contains(DESK), "the token is not echoed");
}

#[tokio::test]
async fn the_cookie_is_the_desk_role_and_changes_need_the_csrf_token_and_origin() {
    let api = Api::new();
    let (cookie, csrf) = api.login(DESK).await;
    let page = Browser {
        cookie: Some(&cookie),
        csrf: Some(&csrf),
        origin: Some("http://127.0.0.1:8080"),
        bearer: None,
    };
    // `me` gives the page its CSRF token back after a reload.
    let me = api
        .send(
            Method::GET,
            "/v1/desk/me",
            &Browser {
                cookie: Some(&cookie),
                ..Browser::default()
            },
            None,
        )
        .await;
    assert_eq!(
        (me.json()["agent"].clone(), me.json()["csrf"].clone()),
        (json!("7001"), json!(csrf))
    );

    // Create with the cookie: the agent defaults to the login's.
    let r = api
        .send(
            Method::POST,
            "/v1/sessions",
            &page,
            Some(json!({"amount": "GBP 42.50"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(r.json().get("token").is_none() && r.json().get("pin").is_none());
    let listed = api
        .send(Method::GET, "/v1/sessions", &page, None)
        .await
        .json();
    assert_eq!(listed["sessions"][0]["id"], id.as_str());
    assert_eq!(listed["sessions"][0]["agent"], "7001");

    // Without the CSRF token, with a wrong one, or from another origin: refused.
    let body = Some(json!({"field": "pan"}));
    let path = format!("/v1/sessions/{id}/request-field");
    for b in [
        Browser {
            csrf: None,
            ..page.clone()
        },
        Browser {
            csrf: Some("0000"),
            ..page.clone()
        },
        Browser {
            origin: Some("https://evil.example"),
            ..page.clone()
        },
    ] {
        let r = api.send(Method::POST, &path, &b, body.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    }
    let r = api
        .send(
            Method::DELETE,
            &format!("/v1/sessions/{id}"),
            &Browser {
                csrf: None,
                ..page.clone()
            },
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // With both, the capture command goes through; reading needs neither.
    let r = api.send(Method::POST, &path, &page, body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "with both: {}", r.text);
    let r = api
        .send(
            Method::POST,
            &format!("/v1/sessions/{id}/reset"),
            &page,
            None,
        )
        .await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // The cookie is the desk role: what unlocks a card stays out of reach.
    for uri in [
        format!("/v1/sessions/{id}/credentials"),
        format!("/v1/sessions/{id}/unlock"),
    ] {
        let r = api
            .send(
                Method::POST,
                &uri,
                &page,
                Some(json!({"token": "x", "pin": "1"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {}", r.text);
    }
    let r = api.send(Method::GET, "/metrics", &page, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Another desk's session is not this login's.
    let (other, other_csrf) = api.login(OTHER_DESK).await;
    let r = api
        .send(
            Method::GET,
            &format!("/v1/sessions/{id}"),
            &Browser {
                cookie: Some(&other),
                csrf: Some(&other_csrf),
                ..Browser::default()
            },
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // A bad bearer token is refused even beside a good cookie.
    let r = api
        .send(
            Method::GET,
            "/v1/sessions",
            &Browser {
                bearer: Some("wrong-0123456789abcdef"),
                ..page.clone()
            },
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Logout ends the login and clears the cookie.
    let r = api.send(Method::POST, "/v1/desk/logout", &page, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.header("set-cookie").contains("Max-Age=0"));
    let r = api.send(Method::GET, "/v1/sessions", &page, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
}

#[tokio::test]
async fn a_desk_sees_its_own_calls_and_binding_tags_the_call() {
    let api = Api::new();
    let calls = api.state.calls();
    calls.attach();
    let info = |from: &str| CallInfo {
        route: "inline".into(),
        mode: "inline",
        from: from.into(),
        to: "sales".into(),
        started_ms: T0,
    };
    calls.started(CallId(11), info("447700900111"), false);
    calls.started(CallId(12), info("447700900222"), false);
    let ops = Browser {
        bearer: Some(OPS),
        ..Browser::default()
    };
    let desk = Browser {
        bearer: Some(DESK),
        ..Browser::default()
    };
    let other = Browser {
        bearer: Some(OTHER_DESK),
        ..Browser::default()
    };
    // The CTI names the agent of call 11.
    let r = api
        .send(
            Method::PUT,
            "/v1/calls/11/agent",
            &ops,
            Some(json!({"agent": "7001"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["agent"].clone()),
        (StatusCode::OK, json!("7001"))
    );
    let mine = api.send(Method::GET, "/v1/calls", &desk, None).await;
    assert_eq!(
        mine.json()["calls"].as_array().unwrap().len(),
        1,
        "{}",
        mine.text
    );
    assert_eq!(mine.json()["calls"][0]["call_id"], "11");
    assert!(
        !mine.text.contains("447700900222"),
        "another agent's caller"
    );
    let theirs = api.send(Method::GET, "/v1/calls", &other, None).await;
    assert_eq!(theirs.json()["calls"], json!([]), "{}", theirs.text);
    // Binding a session to an untagged call tags it with the session's agent.
    let r = api
        .send(Method::POST, "/v1/sessions", &other, Some(json!({})))
        .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = api
        .send(
            Method::POST,
            &format!("/v1/sessions/{id}/bind"),
            &other,
            Some(json!({"call_id": "12"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let theirs = api.send(Method::GET, "/v1/calls", &other, None).await;
    assert_eq!(
        theirs.json()["calls"][0]["call_id"],
        "12",
        "{}",
        theirs.text
    );
    let r = api
        .send(
            Method::PUT,
            "/v1/calls/99/agent",
            &ops,
            Some(json!({"agent": "7001"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn view(api: &Api, id: &str) -> Value {
    let desk = Browser {
        bearer: Some(DESK),
        ..Browser::default()
    };
    api.send(Method::GET, &format!("/v1/sessions/{id}"), &desk, None)
        .await
        .json()
}

async fn key(api: &Api, call: u64, keys: &str, at: &mut u64) {
    for c in keys.chars() {
        *at += 200;
        api.state
            .feed_digit(
                CallId(call),
                Digit::from_char(c).unwrap(),
                DigitSource::Rfc4733,
                *at,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn match_twice_and_error_words_reach_the_desk() {
    let api = Api::new();
    let desk = Browser {
        bearer: Some(DESK),
        ..Browser::default()
    };
    // Confirming a field the session does not capture is refused up front.
    let r = api
        .send(
            Method::POST,
            "/v1/sessions",
            &desk,
            Some(json!({"fields": ["pan"], "confirm": ["cvv"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = api
        .send(
            Method::POST,
            "/v1/sessions",
            &desk,
            Some(json!({"confirm": ["cvv"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = api
        .send(
            Method::POST,
            &format!("/v1/sessions/{id}/bind"),
            &desk,
            Some(json!({"call_id": "5"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut at = 1_000;
    key(&api, 5, "4111111111111112#", &mut at).await;
    let v = view(&api, &id).await;
    assert_eq!(v["current_field"], "pan");
    assert_eq!(v["fields"][0]["reason"], "luhn_failed", "{v}");
    assert_eq!(v["fields"][0]["attempts_left"], 2);
    key(&api, 5, "4111111111111111#1230123", &mut at).await;
    let v = view(&api, &id).await;
    assert_eq!(v["current_field"], "cvv");
    assert_eq!(v["fields"][2]["confirming"], true, "{v}");
    key(&api, 5, "124", &mut at).await;
    let v = view(&api, &id).await;
    assert_eq!(v["fields"][2]["reason"], "mismatch", "{v}");
    key(&api, 5, "12#", &mut at).await;
    let v = view(&api, &id).await;
    assert_eq!(v["fields"][2]["reason"], "too_short", "{v}");
    assert_eq!(v["fields"][2]["attempts_left"], 1);
    key(&api, 5, "99#", &mut at).await;
    let v = view(&api, &id).await;
    assert_eq!(
        (v["capture"].clone(), v["error"].clone()),
        (json!("failed"), json!("max_attempts")),
        "{v}"
    );
    assert!(!v.to_string().contains("411111"));
}
