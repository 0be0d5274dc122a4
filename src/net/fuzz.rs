//! Fuzz harness body for the control API's JSON request bodies (ARCHITECTURE.md, "Rules of the code").
//!
//! Owns what "must hold for any body" means for the API: every endpoint that reads a JSON body
//! answers it without a panic and without an internal error (500), and its answer is JSON or
//! empty. The body goes through the real router (auth, extractors, handlers) on an in-memory
//! store, so the harness follows the handlers as they change without naming their body types.
//! `cargo test` runs it over fixed and random bodies; the `api_json` target under `fuzz/` calls
//! the same function under nightly.

use std::cell::RefCell;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use tower::ServiceExt;

use crate::net::api::{ApiState, ApiTokens, router};
use crate::net::clock::Clock;

/// 2026-06-01T09:00:00Z, a fixed clock: nothing expires between requests.
const T0: u64 = 1_780_304_400_000;
const TOKEN: &str = "fuzzfuzzfuzzfuzz0123456789";
const ADMIN: &str = "fuzzadminfuzzadmin0123456";
/// A body every version of session creation has accepted.
const CREATE: &str = r#"{"agent":"7001"}"#;

struct Harness {
    rt: tokio::runtime::Runtime,
    router: Router,
}

impl Harness {
    fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("no runtime for the API harness: {e}"));
        // The payment integration creates, steers and unlocks its own sessions; the scrub switch
        // is the admin's.
        let tokens = ApiTokens::parse(&format!("fuzz:{TOKEN}:payment,ops:{ADMIN}:admin"))
            .unwrap_or_else(|_| panic!("the harness's token list does not parse"));
        let router = {
            let _in = rt.enter();
            router(ApiState::in_memory(tokens, Clock::starting_at(T0)))
        };
        Harness { rt, router }
    }

    async fn send(&self, method: Method, uri: &str, body: &[u8]) -> (StatusCode, Vec<u8>) {
        // Calls are the admin's; sessions the payment integration's.
        let bearer = if uri.starts_with("/v1/calls") {
            ADMIN
        } else {
            TOKEN
        };
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec()));
        let Ok(req) = req else {
            return (StatusCode::BAD_REQUEST, Vec::new());
        };
        let Ok(resp) = self.router.clone().oneshot(req).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        (status, bytes)
    }

    /// Sends one body and checks the answer.
    async fn check(&self, method: Method, uri: &str, body: &[u8]) -> (StatusCode, Vec<u8>) {
        let (status, answer) = self.send(method, uri, body).await;
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{uri} failed inside"
        );
        assert!(
            answer.is_empty() || serde_json::from_slice::<serde_json::Value>(&answer).is_ok(),
            "{uri} answered {status} with something that is not JSON"
        );
        (status, answer)
    }

    fn session_id(answer: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
        v.get("id")?.as_str().map(str::to_string)
    }

    async fn run(&self, data: &[u8]) {
        // Session creation with the body; a session it made is cancelled again.
        let (status, answer) = self.check(Method::POST, "/v1/sessions", data).await;
        if status.is_success()
            && let Some(id) = Harness::session_id(&answer)
        {
            self.check(Method::DELETE, &format!("/v1/sessions/{id}"), b"")
                .await;
        }
        // The body on every endpoint of a fresh session.
        let (_, answer) = self
            .check(Method::POST, "/v1/sessions", CREATE.as_bytes())
            .await;
        let id = Harness::session_id(&answer).unwrap_or_else(|| "nosuchsession".into());
        for path in ["bind", "request-field", "unlock", "start", "reset"] {
            self.check(Method::POST, &format!("/v1/sessions/{id}/{path}"), data)
                .await;
        }
        self.check(Method::PUT, "/v1/calls/nosuchcall/scrub", data)
            .await;
        self.check(Method::DELETE, &format!("/v1/sessions/{id}"), b"")
            .await;
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// Sends `data` as the JSON body of every API endpoint that reads one (session creation, bind,
/// field request, unlock, the scrub switch) and checks that each answers it: no panic, no 500,
/// a JSON or empty answer.
pub fn fuzz_api_json(data: &[u8]) {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(Harness::new);
        h.rt.block_on(h.run(data));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_harness_gets_past_auth() {
        let h = Harness::new();
        let (status, answer) =
            h.rt.block_on(h.send(Method::POST, "/v1/sessions", CREATE.as_bytes()));
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(Harness::session_id(&answer).is_some());
    }

    #[test]
    fn fixed_bodies_are_answered() {
        for body in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"{\"agent\":\"7001\"}",
            b"{\"agent\":7001}",
            b"{\"agent\":\"7001\",\"fields\":[\"pan\",\"nope\"],\"ttl_s\":18446744073709551615}",
            b"{\"call_id\":\"x\",\"start\":false}",
            b"{\"field\":\"\\u0000\"}",
            b"{\"token\":\"\",\"pin\":\"\"}",
            b"{\"on\":false,\"extra\":1}",
            b"{\"on\":\"yes\"}",
            b"\xff\xfe\x00",
            b"{\"agent\":\"\xf0\x9f\x92\xb3\"}",
        ] {
            fuzz_api_json(body);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn random_bodies_are_answered(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_api_json(&data);
        }

        #[test]
        fn json_shaped_bodies_are_answered(
            keys in proptest::collection::vec(
                prop_oneof![
                    Just("agent"), Just("fields"), Just("amount"), Just("reference"),
                    Just("ttl_s"), Just("call_id"), Just("start"), Just("field"),
                    Just("token"), Just("pin"), Just("on"), Just("x"),
                ],
                0..5,
            ),
            values in proptest::collection::vec(
                prop_oneof![
                    Just("null".to_string()), Just("true".to_string()), Just("-1".to_string()),
                    Just("1e999".to_string()), Just("[\"pan\",\"expiry\"]".to_string()),
                    "\"[ -~]{0,12}\"",
                ],
                5,
            ),
        ) {
            let body = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect::<Vec<_>>()
                .join(",");
            fuzz_api_json(format!("{{{body}}}").as_bytes());
        }
    }
}
