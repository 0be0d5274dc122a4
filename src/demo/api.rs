//! The payment integration's side of the demo: the control API over HTTP on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::{DemoError, SIP_TIMEOUT, chain};

/// A bearer-token client of tonewall's control API (docs/openapi.yaml).
pub(super) struct Api {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
}

/// What `POST /v1/sessions` returns to the agent's desk: no token, no PIN.
#[derive(serde::Deserialize)]
pub(super) struct DeskCreated {
    pub(super) id: String,
    pub(super) locator: String,
}

/// The session as the payment integration holds it, once it has taken the retrieval token and
/// PIN (`POST /v1/sessions/{id}/credentials`); both are secrets.
#[derive(serde::Deserialize)]
pub(super) struct Created {
    pub(super) id: String,
    #[serde(default)]
    pub(super) locator: String,
    pub(super) token: secrecy::SecretString,
    pub(super) pin: secrecy::SecretString,
}

/// What an unlock returns: only the brand and the PAN are read (to print the last four).
#[derive(serde::Deserialize)]
pub(super) struct Unlocked {
    pub(super) pan: secrecy::SecretString,
    pub(super) brand: Option<String>,
}

fn api_err(e: reqwest::Error) -> DemoError {
    DemoError::Api(chain(&e))
}

impl Api {
    pub(super) fn new(listen: SocketAddr, token: &str) -> Result<Api, DemoError> {
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
    pub(super) async fn post(
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
    pub(super) async fn expect(
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
pub(super) fn brand_name(api: &str) -> String {
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
pub(super) fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(no error code)".into())
}

/// Follows `GET /v1/sessions/{id}/events` and reports the masked progress as lines: when a
/// field starts, when the brand is known, when a field completes or is rejected, and the
/// session's state. Ends when the session is sealed or ended.
pub(super) async fn follow(
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
