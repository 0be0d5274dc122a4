//! The control API (docs/openapi.yaml): payment sessions for agents' desktops and payment
//! integrations over HTTP, or HTTPS with rustls, with axum: masked progress as Server-Sent
//! Events, the one-time unlock, `/healthz` and `/metrics`. It also owns the digit feed from the media path
//! ([`ApiState::feed_digit`]), which drives each session's [`Capture`] and seals the card.
//!
//! What it must never do: put a card digit into a response other than the one unlock, an SSE
//! event (the PAN's last four once complete is the most, PCI DSS 3.4.1), an error body, a log
//! line or a metric label. Error messages are fixed text, never an inner error's `Display` that
//! could echo input (serde's messages quote the offending value). The session lock is a std
//! `Mutex` that is never held across an `.await`: sealing happens under it, the store round
//! trip after it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, watch};
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::config::{Config, StoreName};
use crate::digit::{Digit, DigitSource};
use crate::net::calls::{CallError, CallRegistry};
pub use crate::net::clock::Clock;
use crate::net::clock::rfc3339;
pub use crate::net::http::{HttpLimits, TlsConfigError, tls_acceptor};
use crate::net::metrics::Metrics;
use crate::payment::capture::{
    Capture, CaptureConfig, CaptureError, CaptureEvent, CaptureInput, CaptureStatus, FieldProgress,
};
use crate::payment::card::{CardData, FieldName, YearMonth};
use crate::payment::directory;
use crate::payment::guard::{GuardConfig, Locked, LookupGuard};
use crate::payment::pin::Pin;
use crate::payment::redis_store::{AnyStore, RedisStore};
use crate::payment::session::{
    AgentId, CallId, Created, DestroyReason, FailReason, Locator, NewSession, RetrievalToken,
    SessionConfig, SessionError, SessionId, SessionState, SessionTable,
};
use crate::payment::store::{MemoryStore, UnlockError, VaultStore};
use crate::payment::vault::{self, MasterKey, SealedRecord};

/// Tracing target of the unlock audit trail.
pub const AUDIT_TARGET: &str = "tonewall::audit";

/// How often [`serve`]'s housekeeping runs: capture timeouts, TTLs, purges.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Ended sessions stay readable this long so the agent's desktop can show the outcome.
const DEFAULT_LINGER_MS: u64 = 300_000;

/// Largest request body read (JSON commands are tiny).
const MAX_BODY: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Bearer tokens

/// What a token may do (docs/openapi.yaml, `x-roles` of each operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agent's desktop: creates sessions and follows, binds, resets and cancels its own;
    /// never sees the retrieval token or the PIN.
    Desk,
    /// The payment integration: unlocks; takes the token and PIN (in its own create's answer
    /// or once per desk session).
    Payment,
    /// Operations: calls, the scrub switch, every session (view, cancel), metrics.
    Admin,
    /// A metrics scraper: `/metrics` only.
    Metrics,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "desk" => Some(Role::Desk),
            "payment" => Some(Role::Payment),
            "admin" => Some(Role::Admin),
            "metrics" => Some(Role::Metrics),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Desk => "desk",
            Role::Payment => "payment",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
        }
    }
}

/// The integrations allowed to call the API: a name (for the audit log and session ownership),
/// a role and a bearer token. Tokens are kept as SHA-256 hashes and compared in constant time.
pub struct ApiTokens {
    entries: Vec<(String, Role, [u8; 32])>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, &str)> = self
            .entries
            .iter()
            .map(|(n, r, _)| (n.as_str(), r.as_str()))
            .collect();
        f.debug_struct("ApiTokens").field("names", &names).finish()
    }
}

/// The token list is malformed. Names the entry (by its name, or its position when it has no
/// name), never shows a token or what stands where the role should be (a token containing `:`
/// would put part of itself there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenConfigError {
    #[error("API token entry {0} is not `name:token:role` with a non-empty name")]
    BadEntry(usize),
    #[error("API token {0}: the token must be at least 16 characters")]
    ShortToken(String),
    #[error(
        "API token {0} has no role: write it as `name:token:role` (desk, payment, admin or metrics)"
    )]
    NoRole(String),
    #[error("API token {0} has an unknown role: use desk, payment, admin or metrics")]
    UnknownRole(String),
    #[error("API token name {0} is used twice: names must be unique")]
    DuplicateName(String),
    #[error("API token {0} repeats the token of an earlier entry: each entry needs its own")]
    DuplicateToken(String),
    #[error("no API tokens configured (set {0} to comma-separated name:token:role triples)")]
    Empty(String),
}

impl ApiTokens {
    /// Parses comma-separated `name:token:role` triples (the `api.tokens_env` format). The
    /// name is up to the first `:`, the role after the last one.
    pub fn parse(s: &str) -> Result<ApiTokens, TokenConfigError> {
        let mut entries: Vec<(String, Role, [u8; 32])> = Vec::new();
        for (i, item) in s.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                continue;
            }
            let (name, rest) = item.split_once(':').ok_or(TokenConfigError::BadEntry(i))?;
            let name = name.trim();
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(TokenConfigError::BadEntry(i));
            }
            let Some((token, role)) = rest.rsplit_once(':') else {
                return Err(TokenConfigError::NoRole(name.to_string()));
            };
            let token = token.trim();
            let role =
                Role::parse(role.trim()).ok_or(TokenConfigError::UnknownRole(name.to_string()))?;
            if token.len() < 16 {
                return Err(TokenConfigError::ShortToken(name.to_string()));
            }
            if entries.iter().any(|(n, _, _)| n == name) {
                return Err(TokenConfigError::DuplicateName(name.to_string()));
            }
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if entries.iter().any(|(_, _, h)| *h == hash) {
                return Err(TokenConfigError::DuplicateToken(name.to_string()));
            }
            entries.push((name.to_string(), role, hash));
        }
        Ok(ApiTokens { entries })
    }

    /// Reads the list from an environment variable; an unset or empty list is an error.
    pub fn from_env(var: &str) -> Result<ApiTokens, TokenConfigError> {
        let raw = crate::process::secret_env(var).unwrap_or_default();
        let tokens = ApiTokens::parse(&raw)?;
        if tokens.entries.is_empty() {
            return Err(TokenConfigError::Empty(var.to_string()));
        }
        Ok(tokens)
    }

    /// The integration a presented token belongs to, and its role. Every entry is compared,
    /// so the time taken does not say which one matched.
    pub fn check(&self, presented: &str) -> Option<(&str, Role)> {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, role, want) in &self.entries {
            if bool::from(want.ct_eq(&h)) && found.is_none() {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An API failure: HTTP status, a stable code (docs/openapi.yaml `Error.code`) and fixed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Wrong-PIN answers say how many tries are left.
    pub tries_left: Option<u32>,
    /// Lockouts say when to come back (HTTP `Retry-After`, seconds).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: &'static str) -> ApiError {
        ApiError {
            status,
            code,
            message: Cow::Borrowed(message),
            tries_left: None,
            retry_after_s: None,
        }
    }

    fn forbidden() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's role may not do this",
        )
    }

    fn not_yours() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the session belongs to another integration",
        )
    }

    fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session")
    }

    fn bad_json() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body is not the JSON this endpoint takes",
        )
    }

    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tries_left: Option<u32>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInner {
                code: self.code,
                message: &self.message,
                tries_left: self.tries_left,
            },
        };
        let mut resp = json_response(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> ApiError {
        use StatusCode as S;
        let (status, code) = match &e {
            SessionError::NotFound | SessionError::BadId | SessionError::BadLocator => {
                (S::NOT_FOUND, "not_found")
            }
            SessionError::Expired => (S::GONE, "expired"),
            SessionError::InvalidTransition { .. }
            | SessionError::PinGone
            | SessionError::LocatorTaken => (S::CONFLICT, "conflict"),
            SessionError::LocatorSpaceExhausted => {
                (S::SERVICE_UNAVAILABLE, "locator_space_exhausted")
            }
            SessionError::TooMany => (S::SERVICE_UNAVAILABLE, "unavailable"),
            SessionError::QuotaReached => (S::TOO_MANY_REQUESTS, "session_quota"),
            SessionError::CredentialsTaken => (S::GONE, "credentials_taken"),
            SessionError::BadTtl { .. } | SessionError::BadAgent => (S::BAD_REQUEST, "bad_request"),
        };
        // SessionError's texts are built from states, actions and limits only: no input echoes.
        ApiError {
            status,
            code,
            message: Cow::Owned(e.to_string()),
            tries_left: None,
            retry_after_s: None,
        }
    }
}

impl From<CaptureError> for ApiError {
    fn from(e: CaptureError) -> ApiError {
        match e {
            CaptureError::UnknownField => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "field is not part of this capture",
            ),
            CaptureError::Finished => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "the capture is complete")
            }
            CaptureError::PanRequired => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the pan field is required",
            ),
        }
    }
}

fn unlock_error(e: &UnlockError) -> ApiError {
    use StatusCode as S;
    let (status, message): (StatusCode, &'static str) = match e {
        UnlockError::NotFound | UnlockError::Destroyed => (S::NOT_FOUND, "no such record"),
        UnlockError::Expired => (S::GONE, "the record has expired"),
        UnlockError::BadToken => (S::UNAUTHORIZED, "retrieval token does not match"),
        UnlockError::WrongPin { .. } => (S::FORBIDDEN, "wrong PIN"),
        UnlockError::TriesExhausted => (S::GONE, "too many wrong PINs; the record is destroyed"),
        UnlockError::AlreadyUnlocked => (S::GONE, "the record was already unlocked"),
        UnlockError::Corrupt => (S::INTERNAL_SERVER_ERROR, "the record is corrupt"),
        UnlockError::Backend(_) => (S::SERVICE_UNAVAILABLE, "vault store unavailable"),
    };
    ApiError {
        status,
        code: e.api_code(),
        message: Cow::Borrowed(message),
        tries_left: match e {
            UnlockError::WrongPin { tries_left } => Some(*tries_left),
            _ => None,
        },
        retry_after_s: None,
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    // serde's message may quote the offending value: never pass it on.
    serde_json::from_slice(body).map_err(|_| ApiError::bad_json())
}

fn parse_id(s: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(s).map_err(|_| ApiError::not_found())
}

// ---------------------------------------------------------------------------------------------
// State

/// Settings of the API shell.
#[derive(Debug)]
pub struct ApiSettings {
    pub tokens: ApiTokens,
    pub sessions: SessionConfig,
    /// A sealed record (and its session) lives this long after the capture completes.
    pub record_ttl_ms: u64,
    /// Ended sessions stay readable this long.
    pub linger_ms: u64,
    /// Capture rules other than the field list (which each session names).
    pub capture: CaptureConfig,
    /// Failed locator look-ups per source before a lockout (`GET /v1/locators/{locator}`).
    pub lookup_guard: GuardConfig,
}

impl ApiSettings {
    pub fn new(tokens: ApiTokens) -> ApiSettings {
        ApiSettings {
            tokens,
            sessions: SessionConfig::default(),
            record_ttl_ms: 120_000,
            linger_ms: DEFAULT_LINGER_MS,
            capture: CaptureConfig::default(),
            lookup_guard: GuardConfig::default(),
        }
    }
}

/// Why the API could not be set up from the config.
#[derive(Debug, thiserror::Error)]
pub enum ApiInitError {
    #[error(transparent)]
    Tokens(#[from] TokenConfigError),
    #[error(transparent)]
    Key(#[from] vault::KeyError),
    #[error("vault store: {0}")]
    Store(#[from] crate::payment::store::StoreError),
}

/// One progress update for SSE subscribers: the session's JSON, and whether it has ended.
#[derive(Clone, Debug)]
struct Update {
    json: Arc<str>,
    last: bool,
}

/// Per-session shell state next to the [`SessionTable`] entry.
struct Live {
    capture: Capture,
    call: Option<CallId>,
    tx: broadcast::Sender<Update>,
    /// API clock minus media clock, fixed at the first key (see [`Live::media_to_api`]).
    media_offset: Option<i128>,
    /// Filed in the shared store's session directory by this relay: binding must claim it
    /// back first, so that no other relay captures the same session.
    published: bool,
}

/// How far a mapped key time may stray from the API clock before the media clock is taken to
/// have restarted (a new leg, a new RTP timestamp base) and is anchored again.
const MEDIA_CLOCK_SLACK_MS: i128 = 60_000;

impl Live {
    /// Maps a key's onset on the media clock onto the API clock, which the capture's timeouts,
    /// resets and the housekeeping tick all use. One offset per session keeps the spacing of
    /// keys (and equal onsets of duplicate copies) exactly as the media path saw them.
    fn media_to_api(&mut self, at_ms: u64, now_ms: u64) -> u64 {
        let (at, now) = (i128::from(at_ms), i128::from(now_ms));
        let offset = match self.media_offset {
            Some(o) if (at + o - now).abs() <= MEDIA_CLOCK_SLACK_MS => o,
            _ => now - at,
        };
        self.media_offset = Some(offset);
        u64::try_from((at + offset).max(0)).unwrap_or(now_ms)
    }
}

struct Book {
    table: SessionTable,
    live: HashMap<SessionId, Live>,
    calls: HashMap<String, SessionId>,
    /// Ended sessions still filed in the shared directory, to take out (by the next tick).
    withdraw: Vec<(Locator, SessionId)>,
}

struct Inner {
    book: Mutex<Book>,
    /// Failed locator look-ups per source; its own lock, never taken with `book`'s.
    lookups: Mutex<LookupGuard>,
    store: AnyStore,
    master: Arc<MasterKey>,
    tokens: ApiTokens,
    record_ttl_ms: u64,
    linger_ms: u64,
    capture: CaptureConfig,
    clock: Clock,
    metrics: Metrics,
    calls: CallRegistry,
    shutdown: watch::Sender<bool>,
}

/// A sealed record waiting to be put in the store, built under the lock.
struct SealJob {
    id: SessionId,
    record: SealedRecord,
}

/// Which session a digit belongs to.
#[derive(Clone, Copy, Debug)]
pub enum SessionRef<'a> {
    /// tonewall's call id, as bound with `POST /v1/sessions/{id}/bind`.
    Call(&'a str),
    Session(SessionId),
}

/// The API's shared state: sessions, captures, the vault store, metrics. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct SessionView<'a> {
    id: SessionId,
    agent: &'a str,
    locator: &'a str,
    state: &'static str,
    capture: CaptureStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    fields: Vec<FieldProgress>,
    expires_at: String,
}

fn outcome(state: &SessionState) -> &'static str {
    match state {
        SessionState::Unlocked => "unlocked",
        SessionState::Destroyed {
            reason: DestroyReason::Cancelled,
        } => "cancelled",
        SessionState::Destroyed {
            reason: DestroyReason::TriesExhausted,
        } => "tries_exhausted",
        SessionState::Failed {
            reason: FailReason::CaptureFailed,
        } => "capture_failed",
        SessionState::Failed {
            reason: FailReason::CallEnded,
        } => "call_ended",
        SessionState::Failed {
            reason: FailReason::VaultError,
        } => "vault_error",
        SessionState::Expired => "expired",
        _ => "live",
    }
}

impl Book {
    fn view_json(&self, id: &SessionId) -> Option<(String, bool)> {
        let s = self.table.get(id)?;
        let live = self.live.get(id)?;
        let view = SessionView {
            id: s.id(),
            agent: s.agent().as_str(),
            locator: s.locator().as_str(),
            state: s.state().api_name(),
            capture: live.capture.status(),
            call_id: live.call.as_ref().map(|c| c.0.as_str()),
            amount: s.amount(),
            reference: s.reference(),
            fields: live.capture.progress(),
            expires_at: rfc3339(s.expires_at_ms()),
        };
        let json = serde_json::to_string(&view).ok()?;
        Some((json, s.state().is_terminal()))
    }

    /// Sends the session's current state to its SSE subscribers.
    fn publish(&self, id: &SessionId) {
        if let (Some((json, last)), Some(live)) = (self.view_json(id), self.live.get(id)) {
            // No subscriber is not an error.
            let _ = live.tx.send(Update {
                json: json.into(),
                last,
            });
        }
    }
}

impl ApiState {
    /// A state over `store`, which must have been built with the same `master` key.
    pub fn new(
        settings: ApiSettings,
        store: AnyStore,
        master: Arc<MasterKey>,
        clock: Clock,
    ) -> ApiState {
        let (shutdown, _) = watch::channel(false);
        ApiState {
            inner: Arc::new(Inner {
                book: Mutex::new(Book {
                    table: SessionTable::new(settings.sessions),
                    live: HashMap::new(),
                    calls: HashMap::new(),
                    withdraw: Vec::new(),
                }),
                lookups: Mutex::new(LookupGuard::new(settings.lookup_guard)),
                store,
                master,
                tokens: settings.tokens,
                record_ttl_ms: settings.record_ttl_ms,
                linger_ms: settings.linger_ms,
                capture: settings.capture,
                clock,
                metrics: Metrics::new(),
                calls: CallRegistry::default(),
                shutdown,
            }),
        }
    }

    /// An in-memory store and a fresh master key: for tests and the demo.
    pub fn in_memory(tokens: ApiTokens, clock: Clock) -> ApiState {
        let master = Arc::new(MasterKey::generate());
        let store = AnyStore::Memory(MemoryStore::new(
            master.clone(),
            crate::payment::store::DEFAULT_MAX_TRIES,
        ));
        ApiState::new(ApiSettings::new(tokens), store, master, clock)
    }

    /// From the config: tokens from `api.tokens_env`, the master key, the vault store.
    pub async fn from_config(cfg: &Config) -> Result<ApiState, ApiInitError> {
        let tokens = ApiTokens::from_env(&cfg.api.tokens_env)?;
        let master = Arc::new(MasterKey::load(
            cfg.vault.master_key_file.as_deref(),
            &cfg.vault.master_key_env,
        )?);
        let store = match cfg.vault.store {
            StoreName::Memory => {
                AnyStore::Memory(MemoryStore::new(master.clone(), cfg.vault.max_tries))
            }
            StoreName::Redis => AnyStore::Redis(
                RedisStore::connect(&cfg.vault.redis_url, master.clone(), cfg.vault.max_tries)
                    .await?,
            ),
        };
        let mut settings = ApiSettings::new(tokens);
        settings.record_ttl_ms = cfg.vault.ttl_s.saturating_mul(1_000);
        let p = &cfg.payment;
        settings.sessions.locator_len = p.locator_len;
        settings.sessions.pin_len = p.pin_len;
        settings.sessions.default_ttl_ms = p.session_ttl_s.saturating_mul(1_000);
        settings.sessions.max_ttl_ms = settings
            .sessions
            .max_ttl_ms
            .max(settings.sessions.default_ttl_ms);
        settings.capture.inter_digit_timeout_ms = p.inter_digit_timeout_s.saturating_mul(1_000);
        settings.capture.max_attempts = p.max_attempts;
        settings.sessions.max_live_per_owner = p.max_live_sessions_per_token;
        settings.sessions.max_ended = p.max_ended_sessions;
        settings.lookup_guard = GuardConfig {
            failures_max: p.lookup_failures_max,
            window_ms: p.lookup_window_s.saturating_mul(1_000),
            lockout_ms: p.lookup_lockout_s.saturating_mul(1_000),
            ..GuardConfig::default()
        };
        Ok(ApiState::new(settings, store, master, Clock::system()))
    }

    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The capture state for a new or adopted session.
    fn live_for(&self, fields: &[FieldName], now: u64, published: bool) -> Result<Live, ApiError> {
        let mut capture_cfg = CaptureConfig::for_fields(fields)?;
        capture_cfg.inter_digit_timeout_ms = self.inner.capture.inter_digit_timeout_ms;
        capture_cfg.max_attempts = self.inner.capture.max_attempts;
        capture_cfg.allow_unknown_brand = self.inner.capture.allow_unknown_brand;
        let today = YearMonth::at_unix_ms(now).ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "clock out of range",
            )
        })?;
        let (tx, _) = broadcast::channel(64);
        Ok(Live {
            capture: Capture::new(capture_cfg, today),
            call: None,
            tx,
            media_offset: None,
            published,
        })
    }

    /// AddAgent. With a shared store the session is also filed in its directory, so a call
    /// that lands on another relay finds it; a locator another relay holds is not handed out.
    async fn create(&self, new: NewSession) -> Result<Created, ApiError> {
        let store = &self.inner.store;
        let shared = store.shares_sessions();
        // A clash needs another relay holding the same random locator: a few tries suffice.
        for _ in 0..8 {
            let now = self.inner.clock.now_ms();
            let (created, entry) = {
                let mut book = self.book(now);
                let live = self.live_for(&new.fields, now, shared)?;
                let created = book.table.create(new.clone(), now)?;
                book.live.insert(created.id, live);
                let entry = if shared {
                    let s = book.table.export(&created.id, now).ok_or_else(internal)?;
                    Some(directory::encode(&s, &self.inner.master).map_err(|_| internal())?)
                } else {
                    None
                };
                (created, entry)
            };
            if let Some(entry) = entry {
                let ttl = created.expires_at_ms.saturating_sub(now);
                match store.publish_session(&created.locator, &entry, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.forget(&created.id);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "filing a session in the shared store failed");
                        self.forget(&created.id);
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "the shared session store is unavailable",
                        ));
                    }
                }
            }
            let m = &self.inner.metrics;
            m.sessions_created.inc();
            m.sessions_live
                .set(self.book(self.inner.clock.now_ms()).table.live() as i64);
            return Ok(created);
        }
        Err(SessionError::LocatorSpaceExhausted.into())
    }

    fn forget(&self, id: &SessionId) {
        let mut book = self.book(self.inner.clock.now_ms());
        book.table.remove(id);
        book.live.remove(id);
    }

    /// Live calls, as the SIP shell registers them.
    pub fn calls(&self) -> &CallRegistry {
        &self.inner.calls
    }

    /// The live session holding `locator`, and its agent (the loop model's GetAgent), for a
    /// call about to be bound to it. A session another relay created is taken over from the
    /// shared store's directory (then only this relay can capture it).
    pub async fn locate(&self, locator: &str) -> Option<(SessionId, String)> {
        let locator = Locator::parse(locator).ok()?;
        {
            let now = self.inner.clock.now_ms();
            let book = self.book(now);
            if let Some(s) = book.table.by_locator(&locator, now) {
                return Some((s.id(), s.agent().as_str().to_string()));
            }
        }
        let store = &self.inner.store;
        if !store.shares_sessions() {
            return None;
        }
        let entry = match store.claim_session(&locator).await {
            Ok(e) => e?,
            Err(e) => {
                tracing::warn!(error = %e, "session directory look-up failed");
                return None;
            }
        };
        let shared = match directory::decode(&entry, &self.inner.master) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "unusable session directory entry");
                return None;
            }
        };
        let now = self.inner.clock.now_ms();
        let live = self.live_for(&shared.fields, now, false).ok()?;
        let (id, agent) = (shared.id, shared.agent.as_str().to_string());
        let mut book = self.book(now);
        if let Err(e) = book.table.adopt(shared, now) {
            tracing::warn!(session = %id, error = %e, "cannot take over a shared session");
            return None;
        }
        book.live.insert(id, live);
        self.inner
            .metrics
            .sessions_live
            .set(book.table.live() as i64);
        tracing::info!(session = %id, "payment session taken over from the shared store");
        Some((id, agent))
    }

    /// Binds a call to a session (and starts capturing when `start`), then makes sure the
    /// call's caller→agent direction is scrubbed: capture on a call the agent hears in clear
    /// would defeat the product. With a SIP shell attached, the call must be live.
    pub async fn bind_call(
        &self,
        id: SessionId,
        call_id: &str,
        start: bool,
    ) -> Result<(), ApiError> {
        let registry = &self.inner.calls;
        if registry.attached() && !registry.exists(call_id) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no live call has this id",
            ));
        }
        self.claim_back(&id).await?;
        let now = self.inner.clock.now_ms();
        {
            let mut book = self.book(now);
            if book.calls.contains_key(call_id) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the call is bound to another session",
                ));
            }
            let call = CallId(call_id.to_string());
            book.table.bind(&id, call.clone(), now)?;
            book.calls.insert(call.0.clone(), id);
            if let Some(l) = book.live.get_mut(&id) {
                l.call = Some(call.clone());
            }
            if start {
                book.table.start_capture(&id, now)?;
            }
            tracing::info!(session = %id, call = %call, started = start, "call bound");
            book.publish(&id);
        }
        if registry.attached() && registry.set_scrubbing(call_id, true).is_err() {
            // The call ended between the check and now; its end fails the session.
            self.call_ended(call_id);
        }
        Ok(())
    }

    /// A session this relay filed in the shared directory is taken out of it before a call is
    /// bound here; if another relay took it first, that relay captures it.
    async fn claim_back(&self, id: &SessionId) -> Result<(), ApiError> {
        let locator = {
            let book = self.book(self.inner.clock.now_ms());
            match (book.live.get(id), book.table.get(id)) {
                (Some(l), Some(s)) if l.published => s.locator().clone(),
                _ => return Ok(()),
            }
        };
        match self.inner.store.claim_session(&locator).await {
            Ok(Some(entry)) => {
                let mine = directory::decode(&entry, &self.inner.master).is_ok_and(|s| s.id == *id);
                if !mine {
                    // A newer session elsewhere holds the locator: this one is gone.
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        "the session was taken by another relay",
                    ));
                }
            }
            Ok(None) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the session was taken by another relay",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "session directory claim failed");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the shared session store is unavailable",
                ));
            }
        }
        let mut book = self.book(self.inner.clock.now_ms());
        if let Some(l) = book.live.get_mut(id) {
            l.published = false;
        }
        Ok(())
    }

    /// Caller→agent scrubbing on or off for a live call. Off is refused while a payment
    /// session is bound to the call.
    pub fn set_call_scrubbing(&self, call_id: &str, on: bool) -> Result<(), ApiError> {
        if !on {
            let now = self.inner.clock.now_ms();
            if self.book(now).calls.contains_key(call_id) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "a payment session is bound to this call; scrubbing stays on",
                ));
            }
        }
        self.inner
            .calls
            .set_scrubbing(call_id, on)
            .map_err(|e| match e {
                CallError::NotFound => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no live call has this id",
                ),
                CallError::AlwaysOn => ApiError::new(
                    StatusCode::CONFLICT,
                    "always_scrubbed",
                    "the call's route scrubs always; scrubbing cannot be switched off",
                ),
            })
    }

    /// The book, with every session past its TTL expired first (so reads never show a live
    /// session that is due). Never hold the guard across `.await`.
    fn book(&self, now: u64) -> MutexGuard<'_, Book> {
        // A panic under the lock leaves consistent-enough data; keep serving.
        let mut book = self
            .inner
            .book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for id in book.table.expire_due(now) {
            self.ended(&mut book, &id);
        }
        for id in book.table.take_forgotten() {
            book.live.remove(&id);
        }
        book
    }

    /// Bookkeeping for a session that just reached a terminal state.
    fn ended(&self, book: &mut Book, id: &SessionId) {
        let m = &self.inner.metrics;
        if let Some(s) = book.table.get(id) {
            m.session_ended(outcome(s.state()));
            tracing::info!(session = %id, outcome = outcome(s.state()), "payment session ended");
        }
        m.sessions_live.set(book.table.live() as i64);
        if let Some(call) = book.live.get(id).and_then(|l| l.call.clone()) {
            book.calls.remove(&call.0);
        }
        let filed = book
            .live
            .get_mut(id)
            .is_some_and(|l| std::mem::take(&mut l.published));
        if filed && let Some(s) = book.table.get(id) {
            let locator = s.locator().clone();
            book.withdraw.push((locator, *id));
        }
        book.publish(id);
    }

    fn resolve(book: &Book, r: SessionRef<'_>) -> Option<SessionId> {
        match r {
            SessionRef::Call(c) => book.calls.get(c).copied(),
            SessionRef::Session(id) => book.table.get(&id).map(|_| id),
        }
    }

    /// After capture events: count digits, fail or seal as the capture says, publish.
    fn after_capture(
        &self,
        book: &mut Book,
        id: &SessionId,
        events: &[CaptureEvent],
        now: u64,
    ) -> Option<SealJob> {
        let complete = events
            .iter()
            .any(|e| matches!(e, CaptureEvent::Complete { .. }));
        let failed = events.iter().any(|e| matches!(e, CaptureEvent::Failed(_)));
        if failed {
            tracing::info!(session = %id, "capture failed: a field ran out of attempts");
        }
        if !complete {
            if !events.is_empty() {
                book.publish(id);
            }
            return None;
        }
        let card = book.live.get_mut(id).and_then(|l| l.capture.take_card())?;
        match self.seal(book, id, &card, now) {
            Ok(job) => Some(job),
            Err(e) => {
                tracing::error!(session = %id, code = e.code, "sealing failed");
                if book.table.fail(id, FailReason::VaultError, now).is_ok() {
                    self.ended(book, id);
                }
                None
            }
        }
        // `card` drops (and zeroizes) here.
    }

    fn seal(
        &self,
        book: &mut Book,
        id: &SessionId,
        card: &CardData,
        now: u64,
    ) -> Result<SealJob, ApiError> {
        let pin = book.table.complete(id, self.inner.record_ttl_ms, now)?;
        let s = book.table.get(id).ok_or_else(ApiError::not_found)?;
        let record = vault::seal(
            card,
            &self.inner.master,
            &pin,
            *id,
            s.locator(),
            s.token_hash(),
        )
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "sealing failed",
            )
        })?;
        Ok(SealJob { id: *id, record })
    }

    /// Puts a sealed record in the store (outside the lock), then publishes the outcome.
    async fn file(&self, job: SealJob) {
        let now = self.inner.clock.now_ms();
        let res = self
            .inner
            .store
            .put(job.record, self.inner.record_ttl_ms, now)
            .await;
        let now = self.inner.clock.now_ms();
        let mut book = self.book(now);
        match res {
            Ok(()) => {
                tracing::info!(session = %job.id, "card sealed");
                book.publish(&job.id);
            }
            Err(e) => {
                tracing::error!(session = %job.id, error = %e, "storing the sealed record failed");
                if book
                    .table
                    .fail(&job.id, FailReason::VaultError, now)
                    .is_ok()
                {
                    self.ended(&mut book, &job.id);
                }
            }
        }
    }

    /// The media path's entry: one key from the caller on a bound call (or a session id).
    /// `at_ms` is the key's onset on the media path's clock (any monotonic milliseconds; the
    /// in-band and RFC 4733 copies of one key must carry the same value); it is mapped onto
    /// the API clock for the capture's inter-digit timeout. Drives the session's capture,
    /// publishes progress and, when the card is complete, seals it with the session's PIN
    /// into the store. Returns the capture's events (no digits), for
    /// prompts. Keys for a session that is not capturing are refused with `conflict`.
    pub async fn feed_digit(
        &self,
        target: SessionRef<'_>,
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
    ) -> Result<Vec<CaptureEvent>, ApiError> {
        let now = self.inner.clock.now_ms();
        let (events, job) = {
            let mut book = self.book(now);
            let id = Self::resolve(&book, target).ok_or_else(ApiError::not_found)?;
            let capturing = book
                .table
                .get(&id)
                .is_some_and(|s| matches!(s.state(), SessionState::Capturing { .. }));
            if !capturing {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the session is not capturing",
                ));
            }
            let live = book.live.get_mut(&id).ok_or_else(ApiError::not_found)?;
            let dups = live.capture.duplicates_ignored();
            let was_capturing = live.capture.status() == CaptureStatus::Capturing;
            let at_ms = live.media_to_api(at_ms, now);
            let events = live.capture.handle(CaptureInput::Digit {
                digit,
                source,
                at_ms,
            })?;
            if was_capturing && digit.is_numeric() && live.capture.duplicates_ignored() == dups {
                self.inner.metrics.digits_captured.inc();
            }
            tracing::trace!(session = %id, ?source, "key fed to capture");
            let job = self.after_capture(&mut book, &id, &events, now);
            (events, job)
        };
        if let Some(job) = job {
            self.file(job).await;
        }
        Ok(events)
    }

    /// The media path says a call ended: a session still capturing on it fails.
    pub fn call_ended(&self, call_id: &str) {
        self.inner.calls.ended(call_id);
        let now = self.inner.clock.now_ms();
        let mut book = self.book(now);
        let Some(id) = book.calls.get(call_id).copied() else {
            return;
        };
        let open = book.table.get(&id).is_some_and(|s| {
            matches!(
                s.state(),
                SessionState::Bound { .. } | SessionState::Capturing { .. }
            )
        });
        if open && book.table.fail(&id, FailReason::CallEnded, now).is_ok() {
            self.ended(&mut book, &id);
        }
    }

    /// Housekeeping: capture timeouts, TTLs, purging ended sessions and expired records.
    /// [`serve`] runs it every 250 ms.
    pub async fn tick(&self) {
        let now = self.inner.clock.now_ms();
        let jobs = {
            let mut book = self.book(now);
            let due: Vec<SessionId> = book
                .live
                .iter()
                .filter(|(_, l)| l.capture.next_deadline().is_some_and(|d| d <= now))
                .map(|(id, _)| *id)
                .collect();
            let mut jobs = Vec::new();
            for id in due {
                let events = match book.live.get_mut(&id) {
                    Some(l) => l
                        .capture
                        .handle(CaptureInput::Tick { now_ms: now })
                        .unwrap_or_default(),
                    None => continue,
                };
                jobs.extend(self.after_capture(&mut book, &id, &events, now));
            }
            book.table.purge_ended(now, self.inner.linger_ms);
            for id in book.table.take_forgotten() {
                book.live.remove(&id);
            }
            (jobs, std::mem::take(&mut book.withdraw))
        };
        let (jobs, withdraw) = jobs;
        for (locator, id) in withdraw {
            if let Err(e) = self.inner.store.withdraw_session(&locator, &id).await {
                tracing::warn!(session = %id, error = %e, "taking an ended session out of the shared directory failed");
            }
        }
        for job in jobs {
            self.file(job).await;
        }
        if let Err(e) = self.inner.store.purge_expired(now).await {
            tracing::warn!(error = %e, "purging expired records failed");
        }
    }

    /// Ends every SSE stream (graceful shutdown would otherwise wait for them).
    pub fn close_streams(&self) {
        let _ = self.inner.shutdown.send(true);
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// The integration a request authenticated as: its token's name and role.
#[derive(Clone, Debug)]
struct Caller {
    name: Arc<str>,
    role: Role,
}

/// Roles each route admits (the router's table; ownership is checked in the handlers).
const DESK_PAY: &[Role] = &[Role::Desk, Role::Payment];
const DESK_PAY_ADMIN: &[Role] = &[Role::Desk, Role::Payment, Role::Admin];
const PAYMENT: &[Role] = &[Role::Payment];
const ADMIN: &[Role] = &[Role::Admin];
const SCRAPERS: &[Role] = &[Role::Admin, Role::Metrics];

/// What a caller wants to do with a session, for [`authorize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Read its state and progress (GET, SSE).
    View,
    /// Bind a call to it.
    Bind,
    /// Start, reset, ask for a field again.
    Control,
    /// Cancel it.
    Cancel,
}

/// Desks and payment integrations act on the sessions they created; the payment integration
/// may also follow any session (to know when it is sealed); admin may view, bind and cancel
/// any session but not steer a capture. A session taken over from another relay has no owner
/// here: only admin (and payment, to view) reach it.
fn authorize(book: &Book, caller: &Caller, id: &SessionId, access: Access) -> Result<(), ApiError> {
    let s = book.table.get(id).ok_or_else(ApiError::not_found)?;
    let own = s.owner() == Some(&*caller.name);
    let ok = match (caller.role, access) {
        (Role::Admin, Access::View | Access::Bind | Access::Cancel) => true,
        (Role::Payment, Access::View) => true,
        (Role::Desk | Role::Payment, _) => own,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_yours())
    }
}

/// Lets through only callers whose role is in `roles` (route layer inside [`auth`]).
async fn allow(State(roles): State<&'static [Role]>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>() else {
        return ApiError::unauthorized().into_response();
    };
    if !roles.contains(&caller.role) {
        tracing::info!(
            target: AUDIT_TARGET,
            integration = &*caller.name,
            role = caller.role.as_str(),
            method = %req.method(),
            path = req.uri().path(),
            "refused: the token's role may not do this"
        );
        return ApiError::forbidden().into_response();
    }
    next.run(req).await
}

async fn auth(State(st): State<ApiState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some((name, role)) = presented.and_then(|t| st.inner.tokens.check(t)) else {
        return ApiError::unauthorized().into_response();
    };
    let caller = Caller {
        name: name.into(),
        role,
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[derive(Deserialize)]
struct CreateBody {
    agent: String,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// The answer to a payment integration's create: the only one with the token and PIN.
#[derive(Serialize)]
struct CreatedBody<'a> {
    id: SessionId,
    locator: &'a str,
    token: &'a str,
    pin: &'a str,
    expires_at: String,
}

/// The answer to a desk's create: nothing that unlocks the card.
#[derive(Serialize)]
struct DeskCreatedBody<'a> {
    id: SessionId,
    locator: &'a str,
    expires_at: String,
}

/// The one hand-out of a desk session's token and PIN to the payment integration.
#[derive(Serialize)]
struct CredentialsBody<'a> {
    id: SessionId,
    token: &'a str,
    pin: &'a str,
}

fn display_text(s: Option<String>) -> Result<Option<String>, ApiError> {
    match s {
        Some(s) if s.len() > 128 || s.chars().any(char::is_control) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "amount and reference are at most 128 characters without control characters",
        )),
        other => Ok(other),
    }
}

async fn create_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateBody = parse_json(&body)?;
    let agent = AgentId::parse(&req.agent)?;
    let fields: Vec<FieldName> = match req.fields {
        Some(f) if !f.is_empty() => f.iter().map(|s| FieldName::parse(s)).collect(),
        _ => vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv],
    };
    // Refuse bad field lists before anything is created.
    CaptureConfig::for_fields(&fields)?;
    let new = NewSession {
        agent,
        ttl_ms: req.ttl_s.map(|s| s.saturating_mul(1_000)),
        fields,
        amount: display_text(req.amount)?,
        reference: display_text(req.reference)?,
        owner: Some(who.name.to_string()),
        // A desk never holds what unlocks: its session's token and PIN wait for the payment
        // integration's one `/credentials` call.
        hand_out: who.role != Role::Payment,
    };
    let created = match st.create(new).await {
        Ok(c) => c,
        Err(e) => {
            let too_many = SessionError::TooMany.to_string();
            let reason = match e.code {
                "session_quota" => Some("quota"),
                "locator_space_exhausted" => Some("limit"),
                "unavailable" if e.message == too_many.as_str() => Some("limit"),
                _ => None,
            };
            if let Some(reason) = reason {
                st.inner
                    .metrics
                    .sessions_refused
                    .get_or_create(&[("reason", reason)])
                    .inc();
                tracing::info!(integration = &*who.name, reason, "payment session refused");
            }
            return Err(e);
        }
    };
    tracing::info!(session = %created.id, locator = %created.locator, integration = &*who.name, "payment session created");
    if who.role != Role::Payment {
        return Ok(json_response(
            StatusCode::CREATED,
            &DeskCreatedBody {
                id: created.id,
                locator: created.locator.as_str(),
                expires_at: rfc3339(created.expires_at_ms),
            },
        ));
    }
    secret_json(
        StatusCode::CREATED,
        &CreatedBody {
            id: created.id,
            locator: created.locator.as_str(),
            token: created.token.reveal(),
            pin: created.pin.reveal(),
            expires_at: rfc3339(created.expires_at_ms),
        },
    )
}

async fn take_credentials(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let now = st.inner.clock.now_ms();
    let res = st.book(now).table.take_credentials(&id, now);
    let outcome = match &res {
        Ok(_) => "ok",
        Err(SessionError::CredentialsTaken) => "already_taken",
        Err(_) => "refused",
    };
    tracing::info!(target: AUDIT_TARGET, integration = &*who.name, session = %id, outcome, "credentials hand-out");
    let (token, pin) = res?;
    secret_json(
        StatusCode::OK,
        &CredentialsBody {
            id,
            token: token.reveal(),
            pin: pin.reveal(),
        },
    )
    // `token` and `pin` drop (and zeroize) here.
}

fn session_response(book: &Book, id: &SessionId) -> Result<Response, ApiError> {
    let (json, _) = book.view_json(id).ok_or_else(ApiError::not_found)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response())
}

async fn get_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let book = st.book(st.inner.clock.now_ms());
    authorize(&book, &who, &id, Access::View)?;
    session_response(&book, &id)
}

async fn cancel_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let now = st.inner.clock.now_ms();
    {
        let mut book = st.book(now);
        authorize(&book, &who, &id, Access::Cancel)?;
        book.table.destroy(&id, DestroyReason::Cancelled, now)?;
        st.ended(&mut book, &id);
    }
    if let Err(e) = st.inner.store.destroy(&id, now).await {
        tracing::warn!(session = %id, error = %e, "destroying the sealed record failed");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct BindBody {
    call_id: String,
    /// Start capturing at once (the default); false leaves that to `/start`.
    #[serde(default = "yes")]
    start: bool,
}

fn yes() -> bool {
    true
}

async fn bind_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // Only the session's own desk (or admin) binds it to a call over the API; loop calls
    // bind through the SIP shell.
    authorize(&st.book(st.inner.clock.now_ms()), &who, &id, Access::Bind)?;
    let req: BindBody = parse_json(&body)?;
    if req.call_id.is_empty()
        || req.call_id.len() > 256
        || req.call_id.chars().any(char::is_control)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "call_id must be 1-256 characters without control characters",
        ));
    }
    st.bind_call(id, &req.call_id, req.start).await?;
    let book = st.book(st.inner.clock.now_ms());
    session_response(&book, &id)
}

async fn start_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let now = st.inner.clock.now_ms();
    let mut book = st.book(now);
    authorize(&book, &who, &id, Access::Control)?;
    book.table.start_capture(&id, now)?;
    book.publish(&id);
    session_response(&book, &id)
}

/// Reset and field requests apply while the session is live and not yet sealed.
fn capture_command(
    st: &ApiState,
    who: &Caller,
    id: &str,
    input: CaptureInput,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let now = st.inner.clock.now_ms();
    let mut book = st.book(now);
    authorize(&book, who, &id, Access::Control)?;
    let state = book
        .table
        .get(&id)
        .map(|s| s.state().clone())
        .ok_or_else(ApiError::not_found)?;
    if state.is_terminal() || matches!(state, SessionState::Completed { .. }) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the session is no longer capturing",
        ));
    }
    let live = book.live.get_mut(&id).ok_or_else(ApiError::not_found)?;
    live.capture.handle(input)?;
    book.publish(&id);
    session_response(&book, &id)
}

async fn reset_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let now = st.inner.clock.now_ms();
    capture_command(&st, &who, &id, CaptureInput::Reset { now_ms: now })
}

async fn request_field(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path((id, field)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let now = st.inner.clock.now_ms();
    let field = FieldName::parse(&field);
    capture_command(&st, &who, &id, CaptureInput::Request { field, now_ms: now })
}

#[derive(Deserialize)]
struct RequestFieldBody {
    field: String,
}

async fn request_field_body(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RequestFieldBody = parse_json(&body)?;
    let now = st.inner.clock.now_ms();
    let field = FieldName::parse(&req.field);
    capture_command(&st, &who, &id, CaptureInput::Request { field, now_ms: now })
}

#[derive(Deserialize)]
struct UnlockBody {
    token: SecretString,
    pin: SecretString,
}

#[derive(Serialize)]
struct CardBody<'a> {
    pan: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiry: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cvv: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postcode: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    brand: Option<&'static str>,
}

fn unlock_outcome(r: &Result<CardData, UnlockError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(UnlockError::NotFound) => "not_found",
        Err(UnlockError::Expired) => "expired",
        Err(UnlockError::BadToken) => "bad_token",
        Err(UnlockError::WrongPin { .. }) => "wrong_pin",
        Err(UnlockError::TriesExhausted) => "tries_exhausted",
        Err(UnlockError::AlreadyUnlocked) => "already_unlocked",
        Err(UnlockError::Destroyed) => "destroyed",
        Err(UnlockError::Corrupt) => "corrupt",
        Err(UnlockError::Backend(_)) => "unavailable",
    }
}

fn audit(who: &Caller, id: &SessionId, outcome: &'static str) {
    tracing::info!(
        target: AUDIT_TARGET,
        integration = &*who.name,
        session = %id,
        outcome,
        "unlock"
    );
}

async fn unlock_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = match SessionId::parse(&id) {
        Ok(id) => id,
        Err(_) => {
            st.inner.metrics.unlock("not_found");
            tracing::info!(target: AUDIT_TARGET, integration = &*who.name, outcome = "not_found", "unlock of a malformed session id");
            return Err(ApiError::not_found());
        }
    };
    let req: UnlockBody = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => {
            st.inner.metrics.unlock("bad_request");
            audit(&who, &id, "bad_request");
            return Err(e);
        }
    };
    let Ok(pin) = Pin::parse(req.pin.expose_secret()) else {
        st.inner.metrics.unlock("bad_request");
        audit(&who, &id, "bad_request");
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the PIN must be digits",
        ));
    };
    let token = RetrievalToken::from_presented(req.token.expose_secret());
    drop(req);
    let now = st.inner.clock.now_ms();
    let res = st.inner.store.unlock(&id, &token, &pin, now).await;
    drop((token, pin));
    let outcome = unlock_outcome(&res);
    st.inner.metrics.unlock(outcome);
    audit(&who, &id, outcome);
    {
        // The session may live on another relay (shared Redis store): a missing local
        // session is not an error here.
        let now = st.inner.clock.now_ms();
        let mut book = st.book(now);
        let ended = match &res {
            Ok(_) => book.table.unlocked(&id, now).is_ok(),
            Err(UnlockError::TriesExhausted) => book
                .table
                .destroy(&id, DestroyReason::TriesExhausted, now)
                .is_ok(),
            // An expired record's session was expired by `book` above (same TTL).
            Err(_) => false,
        };
        if ended {
            st.ended(&mut book, &id);
        }
    }
    let card = res.map_err(|e| unlock_error(&e))?;
    let expiry = card.expiry().map(|e| e.reveal_mmyy());
    secret_json(
        StatusCode::OK,
        &CardBody {
            pan: card.pan().reveal(),
            expiry: expiry.as_ref().map(|e| e.as_str()),
            cvv: card.cvv().map(|c| c.reveal()),
            postcode: card.reveal_extra(&FieldName::Postcode),
            brand: card.brand().map(|b| b.name()),
        },
    )
}

/// Room for the largest secret body (a card with a postcode is under 300 bytes): serialising
/// never grows the buffer, so no copy of a secret is left in a freed, unzeroized allocation.
const SECRET_BODY_CAPACITY: usize = 1_024;

/// A JSON response carrying secrets (token, PIN, card): serialised into a zeroizing buffer that
/// becomes the body itself (no copy into a plain `Vec`) and is wiped when the body is dropped,
/// and marked `no-store` so no cache keeps it.
fn secret_json(status: StatusCode, value: &impl Serialize) -> Result<Response, ApiError> {
    let mut body = Zeroizing::new(Vec::with_capacity(SECRET_BODY_CAPACITY));
    serde_json::to_writer(&mut *body, value)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "encoding"))?;
    Ok((
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from(Bytes::from_owner(body)),
    )
        .into_response())
}

#[derive(Serialize)]
struct LocatorBody<'a> {
    session_id: SessionId,
    agent: &'a str,
    expires_at: String,
}

/// Where a request came from, when the server recorded it (`ConnectInfo`); otherwise every
/// such request counts as one source, which errs on the side of locking out.
fn peer_ip(peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    peer.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |p| p.0.0.ip())
}

impl ApiState {
    /// Whether `ip` may look a locator up now; counts and answers the refusals.
    fn lookup_allowed(&self, ip: IpAddr, now: u64) -> Result<(), ApiError> {
        self.check_lookup(ip, now, "api")
            .map_err(|locked| ApiError {
                retry_after_s: Some(locked.retry_after_s(now)),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "locked_out",
                    "too many locator look-ups found nothing; try again later",
                )
            })
    }

    /// Whether a loop call from `ip` may look a locator up now (the same budget as the API's
    /// look-ups, so guessing over SIP and over HTTP adds up); counts refusals.
    pub fn sip_lookup_allowed(&self, ip: IpAddr) -> bool {
        self.check_lookup(ip, self.inner.clock.now_ms(), "sip")
            .is_ok()
    }

    /// Asks the guard whether `ip` may look a locator up; a refusal is counted under `surface`.
    fn check_lookup(&self, ip: IpAddr, now: u64, surface: &'static str) -> Result<(), Locked> {
        let checked = self
            .inner
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(ip, now);
        if checked.is_err() {
            self.inner
                .metrics
                .locator_lookups_refused
                .get_or_create(&[("surface", surface)])
                .inc();
        }
        checked
    }

    /// Reports a loop call's look-up to the guard.
    pub fn sip_lookup_done(&self, ip: IpAddr, found: bool) {
        self.lookup_done(ip, self.inner.clock.now_ms(), found);
    }

    /// Reports a look-up's outcome to the guard.
    fn lookup_done(&self, ip: IpAddr, now: u64, found: bool) {
        let mut guard = self.inner.lookups.lock().unwrap_or_else(|p| p.into_inner());
        if found {
            guard.success(ip, now);
        } else if let Some(locked) = guard.failure(ip, now) {
            drop(guard);
            tracing::warn!(
                source = %ip,
                lockout_s = locked.retry_after_s(now),
                "locator look-ups from this source locked out after too many misses"
            );
        }
    }
}

async fn get_locator(
    State(st): State<ApiState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path(locator): Path<String>,
) -> Result<Response, ApiError> {
    let ip = peer_ip(peer);
    let now = st.inner.clock.now_ms();
    st.lookup_allowed(ip, now)?;
    let res = find_locator(&st, &locator, now).await;
    st.lookup_done(ip, st.inner.clock.now_ms(), res.is_ok());
    res
}

async fn find_locator(st: &ApiState, locator: &str, now: u64) -> Result<Response, ApiError> {
    let gone = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no live session has this locator",
        )
    };
    let locator = Locator::parse(locator).map_err(|_| gone())?;
    {
        let book = st.book(now);
        if let Some(s) = book.table.by_locator(&locator, now) {
            return Ok(json_response(
                StatusCode::OK,
                &LocatorBody {
                    session_id: s.id(),
                    agent: s.agent().as_str(),
                    expires_at: rfc3339(s.expires_at_ms()),
                },
            ));
        }
    }
    // Another relay's session, still waiting for its call.
    let entry = st
        .inner
        .store
        .peek_session(&locator)
        .await
        .ok()
        .flatten()
        .ok_or_else(gone)?;
    let s = directory::decode(&entry, &st.inner.master).map_err(|_| gone())?;
    if now >= s.expires_at_ms {
        return Err(gone());
    }
    Ok(json_response(
        StatusCode::OK,
        &LocatorBody {
            session_id: s.id,
            agent: s.agent.as_str(),
            expires_at: rfc3339(s.expires_at_ms),
        },
    ))
}

async fn list_calls(State(st): State<ApiState>) -> Response {
    #[derive(Serialize)]
    struct Calls {
        calls: Vec<crate::net::calls::CallView>,
    }
    json_response(
        StatusCode::OK,
        &Calls {
            calls: st.inner.calls.list(),
        },
    )
}

fn internal() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

fn no_call() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no live call has this id",
    )
}

async fn get_call(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = st.inner.calls.view(&id).ok_or_else(no_call)?;
    Ok(json_response(StatusCode::OK, &view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrubbingBody {
    on: bool,
}

async fn put_scrubbing(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ScrubbingBody = parse_json(&body)?;
    st.set_call_scrubbing(&id, req.on)?;
    tracing::info!(call = %id, on = req.on, "scrubbing switched from the API");
    let view = st.inner.calls.view(&id).ok_or_else(no_call)?;
    Ok(json_response(StatusCode::OK, &view))
}

async fn session_events(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (first, rx) = {
        let book = st.book(st.inner.clock.now_ms());
        authorize(&book, &who, &id, Access::View)?;
        // Subscribe and snapshot under one lock: no update can fall between them.
        let rx = book
            .live
            .get(&id)
            .map(|l| l.tx.subscribe())
            .ok_or_else(ApiError::not_found)?;
        let (json, last) = book.view_json(&id).ok_or_else(ApiError::not_found)?;
        (
            Update {
                json: json.into(),
                last,
            },
            rx,
        )
    };
    let shutdown = st.inner.shutdown.subscribe();
    struct S {
        first: Option<Update>,
        rx: broadcast::Receiver<Update>,
        shutdown: watch::Receiver<bool>,
        done: bool,
    }
    let init = S {
        first: Some(first),
        rx,
        shutdown,
        done: false,
    };
    let stream = futures_util::stream::unfold(init, |mut s| async move {
        if s.done {
            return None;
        }
        let update = match s.first.take() {
            Some(u) => u,
            None => loop {
                if *s.shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    r = s.rx.recv() => match r {
                        Ok(u) => break u,
                        // Each update is the whole session: skipping some loses nothing.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    r = s.shutdown.changed() => {
                        if r.is_err() {
                            return None;
                        }
                    }
                }
            },
        };
        s.done = update.last;
        let ev = Event::default().event("progress").data(&*update.json);
        Some((Ok::<Event, Infallible>(ev), s))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(st): State<ApiState>) -> Response {
    {
        let book = st.book(st.inner.clock.now_ms());
        st.inner.metrics.sessions_live.set(book.table.live() as i64);
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (StatusCode::OK, headers, st.inner.metrics.render()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        "method not allowed on this endpoint",
    )
}

/// The control API's routes over `state`. Every route but `/healthz` needs a bearer token,
/// and each admits the roles named here (docs/openapi.yaml `x-roles`); handlers then check
/// that the session is the caller's.
///
/// The locator look-up's lockout is per source address when the server records it: serve the
/// router with `into_make_service_with_connect_info::<SocketAddr>()` (or insert
/// `ConnectInfo<SocketAddr>` per connection); without it all callers share one budget.
pub fn router(state: ApiState) -> Router {
    let only = |roles: &'static [Role]| middleware::from_fn_with_state(roles, allow);
    let authed = Router::new()
        .route("/metrics", get(metrics).route_layer(only(SCRAPERS)))
        .route(
            "/v1/sessions",
            post(create_session).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}",
            get(get_session)
                .delete(cancel_session)
                .route_layer(only(DESK_PAY_ADMIN)),
        )
        .route(
            "/v1/sessions/{id}/events",
            get(session_events).route_layer(only(DESK_PAY_ADMIN)),
        )
        .route(
            "/v1/sessions/{id}/bind",
            post(bind_session).route_layer(only(DESK_PAY_ADMIN)),
        )
        .route(
            "/v1/sessions/{id}/start",
            post(start_session).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/reset",
            post(reset_session).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/fields/{field}/request",
            post(request_field).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/request-field",
            post(request_field_body).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/unlock",
            post(unlock_session).route_layer(only(PAYMENT)),
        )
        .route(
            "/v1/sessions/{id}/credentials",
            post(take_credentials).route_layer(only(PAYMENT)),
        )
        .route(
            "/v1/locators/{locator}",
            get(get_locator).route_layer(only(DESK_PAY_ADMIN)),
        )
        .route("/v1/calls", get(list_calls).route_layer(only(ADMIN)))
        .route("/v1/calls/{id}", get(get_call).route_layer(only(ADMIN)))
        .route(
            "/v1/calls/{id}/scrub",
            axum::routing::put(put_scrubbing).route_layer(only(ADMIN)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(authed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Runs the housekeeping (capture timeouts, TTLs, purges) every [`SWEEP_EVERY`] until aborted.
fn spawn_sweeper(state: &ApiState) -> tokio::task::JoinHandle<()> {
    let st = state.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            st.tick().await;
        }
    })
}

/// Serves the API on `listener` until `shutdown` resolves, with housekeeping every 250 ms and
/// the default connection limits. On shutdown, SSE streams are closed so the graceful drain ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, HttpLimits::default(), shutdown).await
}

/// [`serve`] over HTTPS.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Some(tls), HttpLimits::default(), shutdown).await
}

/// [`serve`] over HTTP or HTTPS with the given connection limits (the server is `net::http`'s).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = spawn_sweeper(&state);
    let app = router(state.clone());
    let res = crate::net::http::serve(listener, app, state, tls, limits, shutdown).await;
    sweeper.abort();
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_name_and_role_and_reject_others() {
        let t = ApiTokens::parse(
            "desk:aaaaaaaaaaaaaaaaaaaa:desk, pay:bbbbbbbbbbbbbbbbbbbb:payment,ops:cccccccccccccccccccc:admin,prom:dd:dddddddddddddddd:metrics",
        )
        .unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa"), Some(("desk", Role::Desk)));
        assert_eq!(
            t.check("bbbbbbbbbbbbbbbbbbbb"),
            Some(("pay", Role::Payment))
        );
        assert_eq!(t.check("cccccccccccccccccccc"), Some(("ops", Role::Admin)));
        // A token may hold `:`; the role is after the last one.
        assert_eq!(
            t.check("dd:dddddddddddddddd"),
            Some(("prom", Role::Metrics))
        );
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(t.check(""), None);
        assert!(!format!("{t:?}").contains("aaaa"));
    }

    #[test]
    fn token_errors_name_the_entry_never_the_token() {
        let secret = "s3cr3ts3cr3ts3cr3t";
        let cases = [
            (
                format!("desk1:{secret}"),
                TokenConfigError::NoRole("desk1".into()),
            ),
            (
                format!("ok:{secret}x:desk,desk2:{secret}:boss"),
                TokenConfigError::UnknownRole("desk2".into()),
            ),
            (
                "desk3:short:desk".to_string(),
                TokenConfigError::ShortToken("desk3".into()),
            ),
            (format!(":{secret}:desk"), TokenConfigError::BadEntry(0)),
            (secret.to_string(), TokenConfigError::BadEntry(0)),
            (
                format!("a:{secret}:desk,a:{secret}x:admin"),
                TokenConfigError::DuplicateName("a".into()),
            ),
            (
                format!("a:{secret}:desk,b:{secret}:admin"),
                TokenConfigError::DuplicateToken("b".into()),
            ),
        ];
        for (input, want) in cases {
            let e = ApiTokens::parse(&input).unwrap_err();
            assert_eq!(e, want, "{input}");
            let text = e.to_string();
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(!text.contains("boss"), "{text}");
        }
    }

    #[test]
    fn unlock_errors_keep_numbers_out_of_messages() {
        let e = unlock_error(&UnlockError::WrongPin { tries_left: 2 });
        assert_eq!(
            (e.status, e.code, e.tries_left),
            (StatusCode::FORBIDDEN, "wrong_pin", Some(2))
        );
        assert!(!e.message.chars().any(|c| c.is_ascii_digit()));
    }
}
