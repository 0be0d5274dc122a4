//! The API's shared state: the payment desk behind one lock, and around it the work the desk
//! hands back (the vault store, the shared session directory), metrics, the live calls and the
//! sessions' SSE followers. The lock is a std `Mutex` never held across an `.await`: sealing
//! happens under it, the store round trip after it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::error::ApiError;
use super::login::{LoginConfig, Logins};
use super::tokens::{ApiTokens, TokenConfigError};
use crate::config::{Config, StoreName};
use crate::digit::{Digit, DigitSource};
use crate::ids::CallId;
use crate::net::calls::{CallError, CallRegistry};
use crate::net::clock::{Clock, rfc3339};
use crate::net::drain::DrainSwitch;
use crate::net::metrics::Metrics;
use crate::payment::capture::{CaptureConfig, CaptureEvent, CaptureStatus, FieldProgress};
use crate::payment::card::FieldName;
use crate::payment::desk::{
    DEFAULT_LINGER_MS, DEFAULT_RECORD_TTL_MS, Desk, DeskConfig, DeskError, Notice, SealJob, Tick,
    outcome,
};
use crate::payment::directory;
use crate::payment::guard::{GuardConfig, Locked, LookupGuard};
use crate::payment::redis_store::{AnyStore, RedisStore};
use crate::payment::session::{
    Created, Locator, NewSession, SessionConfig, SessionError, SessionId,
};
use crate::payment::store::{MemoryStore, VaultStore};
use crate::payment::vault::{self, MasterKey};

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
    /// `sip.drain_s` in milliseconds.
    pub drain_ms: u64,
}

impl ApiSettings {
    pub fn new(tokens: ApiTokens) -> ApiSettings {
        ApiSettings {
            tokens,
            sessions: SessionConfig::default(),
            record_ttl_ms: DEFAULT_RECORD_TTL_MS,
            linger_ms: DEFAULT_LINGER_MS,
            capture: CaptureConfig::default(),
            lookup_guard: GuardConfig::default(),
            drain_ms: crate::config::SipConfig::default()
                .drain_s
                .saturating_mul(1_000),
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
pub(super) struct Update {
    pub(super) json: Arc<str>,
    pub(super) last: bool,
}

/// The desk and the SSE followers of its sessions, behind one lock.
pub(super) struct Book {
    pub(super) desk: Desk,
    streams: HashMap<SessionId, broadcast::Sender<Update>>,
}

#[derive(Serialize)]
pub(super) struct SessionView<'a> {
    id: SessionId,
    agent: &'a str,
    locator: &'a str,
    state: &'static str,
    /// How the session ended, once it has (`desk::outcome`'s words).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    capture: CaptureStatus,
    /// The field the caller is keying, while capturing.
    #[serde(skip_serializing_if = "Option::is_none")]
    current_field: Option<FieldName>,
    /// Why the capture failed: `max_attempts` (a field ran out of attempts).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<CallId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    fields: Vec<FieldProgress>,
    expires_at: String,
}

impl Book {
    /// The session as the API shows it, and whether it has ended.
    pub(super) fn view_json(&self, id: &SessionId) -> Option<(String, bool)> {
        let view = self.view(id)?;
        let json = serde_json::to_string(&view).ok()?;
        Some((json, self.desk.session(id)?.state().is_terminal()))
    }

    /// The session as the API shows it.
    pub(super) fn view(&self, id: &SessionId) -> Option<SessionView<'_>> {
        let v = self.desk.view(id)?;
        let s = v.session;
        let status = v.capture.status();
        Some(SessionView {
            id: s.id(),
            agent: s.agent().as_str(),
            locator: s.locator().as_str(),
            state: s.state().api_name(),
            outcome: s.state().is_terminal().then(|| outcome(s.state())),
            capture: status,
            current_field: v.capture.current_field(),
            error: (status == CaptureStatus::Failed).then_some("max_attempts"),
            call_id: v.call,
            amount: s.amount(),
            reference: s.reference(),
            fields: v.capture.progress(),
            expires_at: rfc3339(s.expires_at_ms()),
        })
    }

    /// A new follower of the session's progress; `None` when the desk does not know it.
    pub(super) fn subscribe(&mut self, id: &SessionId) -> Option<broadcast::Receiver<Update>> {
        self.desk.view(id)?;
        let tx = self
            .streams
            .entry(*id)
            .or_insert_with(|| broadcast::channel(64).0);
        Some(tx.subscribe())
    }

    /// Sends the session's current state to its SSE followers.
    fn publish(&self, id: &SessionId) {
        if let (Some(tx), Some((json, last))) = (self.streams.get(id), self.view_json(id)) {
            // No subscriber is not an error.
            let _ = tx.send(Update {
                json: json.into(),
                last,
            });
        }
    }
}

/// The book while locked. Letting go of it hands the desk's notices on, still under the lock
/// so that followers see updates in order: progress to the SSE followers, outcomes to the
/// metrics and the log.
pub(super) struct BookGuard<'a> {
    book: MutexGuard<'a, Book>,
    metrics: &'a Metrics,
}

impl Deref for BookGuard<'_> {
    type Target = Book;
    fn deref(&self) -> &Book {
        &self.book
    }
}

impl DerefMut for BookGuard<'_> {
    fn deref_mut(&mut self) -> &mut Book {
        &mut self.book
    }
}

impl Drop for BookGuard<'_> {
    fn drop(&mut self) {
        let m = self.metrics;
        let book = &mut *self.book;
        for notice in book.desk.take_notices() {
            match notice {
                Notice::Changed(id) => book.publish(&id),
                Notice::Ended { id, outcome } => {
                    m.session_ended(outcome);
                    tracing::info!(session = %id, outcome, "payment session ended");
                    m.sessions_live.set(book.desk.live() as i64);
                }
                Notice::CaptureFailed(id) => {
                    tracing::info!(session = %id, "capture failed: a field ran out of attempts");
                }
                Notice::SealFailed { id, error } => {
                    tracing::error!(session = %id, %error, "sealing failed");
                }
                Notice::DigitTaken(_) => {
                    m.digits_captured.inc();
                }
                Notice::Forgotten(id) => {
                    book.streams.remove(&id);
                }
            }
        }
    }
}

pub(super) struct Inner {
    book: Mutex<Book>,
    /// Failed locator look-ups per source; its own lock, never taken with `book`'s.
    lookups: Mutex<LookupGuard>,
    pub(super) store: AnyStore,
    pub(super) master: Arc<MasterKey>,
    pub(super) tokens: ApiTokens,
    /// The desk page's logins (cookie sessions); its own lock, never taken with `book`'s.
    pub(super) logins: Mutex<Logins>,
    record_ttl_ms: u64,
    pub(super) clock: Clock,
    pub(super) metrics: Metrics,
    pub(super) calls: CallRegistry,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) drain: DrainSwitch,
    /// `sip.drain_s` in milliseconds, for the API's answer to a drain.
    drain_ms: u64,
}

/// The API's shared state: the desk, the vault store, metrics, live calls. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
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
        let desk = DeskConfig {
            sessions: settings.sessions,
            record_ttl_ms: settings.record_ttl_ms,
            linger_ms: settings.linger_ms,
            capture: settings.capture,
        };
        ApiState {
            inner: Arc::new(Inner {
                book: Mutex::new(Book {
                    desk: Desk::new(desk, master.clone()),
                    streams: HashMap::new(),
                }),
                lookups: Mutex::new(LookupGuard::new(settings.lookup_guard)),
                store,
                master,
                tokens: settings.tokens,
                logins: Mutex::new(Logins::new(LoginConfig::default())),
                record_ttl_ms: settings.record_ttl_ms,
                clock,
                metrics: Metrics::new(),
                calls: CallRegistry::default(),
                shutdown,
                drain: DrainSwitch::new(),
                drain_ms: settings.drain_ms,
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
        settings.drain_ms = cfg.sip.drain_s.saturating_mul(1_000);
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

    /// Where a drain is ordered (signals, the admin API) and the SIP shell learns of it.
    pub fn drain(&self) -> &DrainSwitch {
        &self.inner.drain
    }

    /// How long a drain lets calls go on, in milliseconds (`sip.drain_s`).
    pub fn drain_ms(&self) -> u64 {
        self.inner.drain_ms
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Live calls, as the SIP shell registers them.
    pub fn calls(&self) -> &CallRegistry {
        &self.inner.calls
    }

    pub(super) fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// The book, with the desk advanced to `now` (so reads never show a live session that is
    /// due). Never hold the guard across `.await`.
    pub(super) fn book(&self, now: u64) -> BookGuard<'_> {
        // A panic under the lock leaves consistent-enough data; keep serving.
        let mut book = self
            .inner
            .book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        book.desk.advance(now);
        BookGuard {
            book,
            metrics: &self.inner.metrics,
        }
    }

    /// AddAgent. With a shared store the session is also filed in its directory, so a call
    /// that lands on another relay finds it; a locator another relay holds is not handed out.
    pub(super) async fn create(
        &self,
        new: NewSession,
        confirm: &[FieldName],
    ) -> Result<Created, DeskError> {
        let store = &self.inner.store;
        let shared = store.shares_sessions();
        // A clash needs another relay holding the same random locator: a few tries suffice.
        for _ in 0..8 {
            let now = self.now();
            let (created, entry) =
                self.book(now)
                    .desk
                    .create_confirming(new.clone(), confirm, shared, now)?;
            if let Some(entry) = entry {
                let ttl = created.expires_at_ms.saturating_sub(now);
                match store.publish_session(&created.locator, &entry, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.book(self.now()).desk.forget(&created.id);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "filing a session in the shared store failed");
                        self.book(self.now()).desk.forget(&created.id);
                        return Err(DeskError::StoreUnavailable);
                    }
                }
            }
            let m = &self.inner.metrics;
            m.sessions_created.inc();
            m.sessions_live
                .set(self.book(self.now()).desk.live() as i64);
            return Ok(created);
        }
        Err(SessionError::LocatorSpaceExhausted.into())
    }

    /// The live session holding `locator`, and its agent (the loop model's GetAgent), for a
    /// call about to be bound to it. A session another relay created is taken over from the
    /// shared store's directory (then only this relay can capture it).
    pub async fn locate(&self, locator: &str) -> Option<(SessionId, String)> {
        let now = self.now();
        if let Some((id, agent)) = self.book(now).desk.locate(locator, now) {
            return Some((id, agent.as_str().to_string()));
        }
        let locator = Locator::parse(locator).ok()?;
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
        let id = shared.id;
        let now = self.now();
        let mut book = self.book(now);
        match book.desk.adopt(shared, now) {
            Ok((id, agent)) => {
                self.inner
                    .metrics
                    .sessions_live
                    .set(book.desk.live() as i64);
                tracing::info!(session = %id, "payment session taken over from the shared store");
                Some((id, agent.as_str().to_string()))
            }
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot take over a shared session");
                None
            }
        }
    }

    /// Binds a call to a session (and starts capturing when `start`), then makes sure the
    /// call's caller→agent direction is scrubbed: capture on a call the agent hears in clear
    /// would defeat the product. With a SIP shell attached, the call must be live.
    pub async fn bind_call(
        &self,
        id: SessionId,
        call: CallId,
        start: bool,
    ) -> Result<(), DeskError> {
        let registry = &self.inner.calls;
        if registry.attached() && !registry.exists(call) {
            return Err(DeskError::NoCall);
        }
        self.claim_back(&id).await?;
        let now = self.now();
        let agent = {
            let mut book = self.book(now);
            book.desk.bind(id, call, start, now)?;
            book.desk
                .session(&id)
                .map(|s| s.agent().as_str().to_string())
        };
        tracing::info!(session = %id, %call, started = start, "call bound");
        // The call is with the session's agent: their desk now lists it.
        if let Some(agent) = agent {
            registry.assign(call, &agent);
        }
        if registry.attached() && registry.set_scrubbing(call, true).is_err() {
            // The call ended between the check and now; its end fails the session.
            self.call_ended(call);
        }
        Ok(())
    }

    /// A session this relay filed in the shared directory is taken out of it before a call is
    /// bound here; if another relay took it first, that relay captures it.
    async fn claim_back(&self, id: &SessionId) -> Result<(), DeskError> {
        let Some(locator) = self.book(self.now()).desk.filed_locator(id) else {
            return Ok(());
        };
        let held = match self.inner.store.claim_session(&locator).await {
            Ok(entry) => entry
                .and_then(|e| directory::decode(&e, &self.inner.master).ok())
                .map(|s| s.id),
            Err(e) => {
                tracing::error!(error = %e, "session directory claim failed");
                return Err(DeskError::StoreUnavailable);
            }
        };
        self.book(self.now()).desk.claimed(id, held)
    }

    /// Caller→agent scrubbing on or off for a live call. Off is refused while a payment
    /// session is bound to the call.
    pub fn set_call_scrubbing(&self, call: CallId, on: bool) -> Result<(), ApiError> {
        if !on && self.book(self.now()).desk.session_on(call).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "a payment session is bound to this call; scrubbing stays on",
            ));
        }
        self.inner
            .calls
            .set_scrubbing(call, on)
            .map_err(|e| match e {
                CallError::NotFound => ApiError::no_call(),
                CallError::AlwaysOn => ApiError::new(
                    StatusCode::CONFLICT,
                    "always_scrubbed",
                    "the call's route scrubs always; scrubbing cannot be switched off",
                ),
            })
    }

    /// Puts a sealed record in the store (outside the lock), then tells the desk.
    async fn file(&self, job: SealJob) {
        let now = self.now();
        let res = self
            .inner
            .store
            .put(job.record, self.inner.record_ttl_ms, now)
            .await;
        let now = self.now();
        let mut book = self.book(now);
        match res {
            Ok(()) => {
                tracing::info!(session = %job.id, "card sealed");
                book.desk.stored(&job.id, now);
            }
            Err(e) => {
                tracing::error!(session = %job.id, error = %e, "storing the sealed record failed");
                book.desk.store_failed(&job.id, now);
            }
        }
    }

    /// The media path's entry: one key from the caller on `call`. `at_ms` is the key's onset
    /// on the media path's clock (see [`Desk::feed`]). Drives the bound session's capture,
    /// publishes progress and, when the card is complete, stores it sealed. Returns the
    /// capture's events (no digits), for prompts. A call with no session
    /// ([`DeskError::NoSession`]) or one not capturing ([`DeskError::NotCapturing`]) is
    /// refused.
    pub async fn feed_digit(
        &self,
        call: CallId,
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
    ) -> Result<Vec<CaptureEvent>, DeskError> {
        let (events, job) = self.take_key(call, digit, source, at_ms)?;
        if let Some(job) = job {
            self.file(job).await;
        }
        Ok(events)
    }

    /// [`ApiState::feed_digit`] without waiting, for the SIP shell's core task: the desk takes
    /// the key at once, in the order keys come, and a card it completes is sealed into the
    /// store by a task of its own. A task per key cost a spawn and a wake-up each, and let two
    /// keys of one call race.
    pub fn feed_digit_now(
        &self,
        call: CallId,
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
    ) -> Result<(), DeskError> {
        let (_, job) = self.take_key(call, digit, source, at_ms)?;
        if let Some(job) = job {
            let api = self.clone();
            tokio::spawn(async move { api.file(job).await });
        }
        Ok(())
    }

    /// The desk's part of feeding a key: its capture events, and the card to seal once
    /// complete.
    fn take_key(
        &self,
        call: CallId,
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
    ) -> Result<(Vec<CaptureEvent>, Option<SealJob>), DeskError> {
        let now = self.now();
        let taken = self.book(now).desk.feed(call, digit, source, at_ms, now)?;
        tracing::trace!(%call, ?source, "key fed to capture");
        Ok(taken)
    }

    /// The media path says a call ended: a session still capturing on it fails.
    pub fn call_ended(&self, call: CallId) {
        self.inner.calls.ended(call);
        let now = self.now();
        self.book(now).desk.call_ended(call, now);
    }

    /// Housekeeping: capture timeouts, TTLs, purging ended sessions and expired records.
    /// [`super::serve`] runs it every 250 ms.
    pub async fn tick(&self) {
        let now = self.now();
        let Tick { seals, withdraw } = self.book(now).desk.tick(now);
        for (locator, id) in withdraw {
            if let Err(e) = self.inner.store.withdraw_session(&locator, &id).await {
                tracing::warn!(session = %id, error = %e, "taking an ended session out of the shared directory failed");
            }
        }
        for job in seals {
            self.file(job).await;
        }
        self.inner
            .logins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .sweep(now);
        if let Err(e) = self.inner.store.purge_expired(now).await {
            tracing::warn!(error = %e, "purging expired records failed");
        }
    }

    /// Copies the store's health into the metrics (at each scrape): whether Redis answers,
    /// and the failures it counted.
    pub fn fold_store_health(&self) {
        let m = &self.inner.metrics;
        let (up, errors) = match &self.inner.store {
            AnyStore::Memory(_) => (true, 0),
            AnyStore::Redis(r) => (r.up(), r.errors_total()),
        };
        m.store_up.set(i64::from(up));
        m.store_errors
            .inc_by(errors.saturating_sub(m.store_errors.get()));
    }

    /// Ends every SSE stream (graceful shutdown would otherwise wait for them).
    pub fn close_streams(&self) {
        let _ = self.inner.shutdown.send(true);
    }
}

impl ApiState {
    /// Whether a loop call from `ip` may look a locator up now (the same budget as the API's
    /// look-ups, so guessing over SIP and over HTTP adds up); counts refusals.
    pub fn sip_lookup_allowed(&self, ip: IpAddr) -> bool {
        self.check_lookup(ip, self.inner.clock.now_ms(), "sip")
            .is_ok()
    }

    /// Asks the guard whether `ip` may look a locator up; a refusal is counted under `surface`.
    pub(super) fn check_lookup(
        &self,
        ip: IpAddr,
        now: u64,
        surface: &'static str,
    ) -> Result<(), Locked> {
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
    pub(super) fn lookup_done(&self, ip: IpAddr, now: u64, found: bool) {
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
