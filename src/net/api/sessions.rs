//! The payment session handlers: create, view and follow (SSE), bind, steer the capture,
//! cancel, and the payment integration's credentials hand-out and one-time unlock.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::auth::{AUDIT_TARGET, Access, Caller, authorize};
use super::error::{ApiError, unlock_error};
use super::reply::{json_response, parse_id, parse_json, secret_json};
use super::state::{ApiState, Book, Update};
use super::tokens::Role;
use crate::ids::CallId;
use crate::net::clock::rfc3339;
use crate::payment::capture::CaptureConfig;
use crate::payment::card::{CardData, FieldName};
use crate::payment::desk::{Desk, DeskError};
use crate::payment::pin::Pin;
use crate::payment::session::{AgentId, NewSession, RetrievalToken, SessionError, SessionId};
use crate::payment::store::{UnlockError, VaultStore};

/// How soon a browser's EventSource reconnects a cut progress stream.
const SSE_RETRY: std::time::Duration = std::time::Duration::from_millis(1_000);

#[derive(Deserialize)]
struct CreateBody {
    /// The agent taking the payment; a desk may leave it out to mean itself (its token's name).
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    /// Fields the caller keys twice (match-twice), each one of `fields`.
    #[serde(default)]
    confirm: Option<Vec<String>>,
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

pub(super) async fn create_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateBody = parse_json(&body)?;
    let agent = match (&req.agent, who.role) {
        (Some(a), _) => AgentId::parse(a)?,
        (None, Role::Desk) => AgentId::parse(&who.name)?,
        (None, _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "name the agent taking the payment",
            ));
        }
    };
    let fields: Vec<FieldName> = match req.fields {
        Some(f) if !f.is_empty() => f.iter().map(|s| FieldName::parse(s)).collect(),
        _ => vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv],
    };
    let confirm: Vec<FieldName> = req
        .confirm
        .unwrap_or_default()
        .iter()
        .map(|s| FieldName::parse(s))
        .collect();
    // Refuse bad field lists before anything is created.
    CaptureConfig::for_fields(&fields)?.with_confirm(&confirm)?;
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
    let created = match st.create(new, &confirm).await {
        Ok(c) => c,
        Err(e) => {
            let reason = match &e {
                DeskError::Session(SessionError::QuotaReached) => Some("quota"),
                DeskError::Session(SessionError::LocatorSpaceExhausted | SessionError::TooMany) => {
                    Some("limit")
                }
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
            return Err(e.into());
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

pub(super) async fn take_credentials(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let now = st.now();
    let res = st.book(now).desk.take_credentials(&id, now);
    let outcome = match &res {
        Ok(_) => "ok",
        Err(DeskError::Session(SessionError::CredentialsTaken)) => "already_taken",
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

/// `GET /v1/sessions`: the caller's own sessions the relay still knows (live, or ended and
/// not yet purged), newest first: a desk page picks up where it was after a reload.
pub(super) async fn list_sessions(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
) -> Response {
    #[derive(Serialize)]
    struct Sessions<'a> {
        sessions: Vec<super::state::SessionView<'a>>,
    }
    let book = st.book(st.now());
    let ids = book.desk.owned_by(&who.name);
    let sessions = ids.iter().filter_map(|id| book.view(id)).collect();
    json_response(StatusCode::OK, &Sessions { sessions })
}

pub(super) async fn get_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let book = st.book(st.now());
    authorize(&book.desk, &who, &id, Access::View)?;
    session_response(&book, &id)
}

pub(super) async fn cancel_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let now = st.now();
    {
        let mut book = st.book(now);
        authorize(&book.desk, &who, &id, Access::Cancel)?;
        book.desk.cancel(&id, now)?;
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

pub(super) async fn bind_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // Only the session's own desk (or admin) binds it to a call over the API; loop calls
    // bind through the SIP shell.
    authorize(&st.book(st.now()).desk, &who, &id, Access::Bind)?;
    let req: BindBody = parse_json(&body)?;
    // No call tonewall could have has another spelling.
    let call: CallId = req.call_id.parse().map_err(|_| ApiError::no_call())?;
    st.bind_call(id, call, req.start).await?;
    let book = st.book(st.now());
    session_response(&book, &id)
}

pub(super) async fn start_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let now = st.now();
    let mut book = st.book(now);
    authorize(&book.desk, &who, &id, Access::Control)?;
    book.desk.start(&id, now)?;
    session_response(&book, &id)
}

/// Reset and field requests apply while the session is live and not yet sealed.
fn capture_command(
    st: &ApiState,
    who: &Caller,
    id: &str,
    command: impl FnOnce(&mut Desk, &SessionId, u64) -> Result<(), DeskError>,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let now = st.now();
    let mut book = st.book(now);
    authorize(&book.desk, who, &id, Access::Control)?;
    command(&mut book.desk, &id, now)?;
    session_response(&book, &id)
}

pub(super) async fn reset_session(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    capture_command(&st, &who, &id, Desk::reset)
}

pub(super) async fn request_field(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path((id, field)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let field = FieldName::parse(&field);
    capture_command(&st, &who, &id, |desk, id, now| {
        desk.request_field(id, field, now)
    })
}

#[derive(Deserialize)]
struct RequestFieldBody {
    field: String,
}

pub(super) async fn request_field_body(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RequestFieldBody = parse_json(&body)?;
    let field = FieldName::parse(&req.field);
    capture_command(&st, &who, &id, |desk, id, now| {
        desk.request_field(id, field, now)
    })
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

pub(super) async fn unlock_session(
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
    let now = st.now();
    let res = st.inner.store.unlock(&id, &token, &pin, now).await;
    drop((token, pin));
    let outcome = unlock_outcome(&res);
    st.inner.metrics.unlock(outcome);
    audit(&who, &id, outcome);
    {
        // The session may live on another relay (shared Redis store): a missing local
        // session is not an error here.
        let now = st.now();
        let mut book = st.book(now);
        match &res {
            Ok(_) => book.desk.unlocked(&id, now),
            Err(UnlockError::TriesExhausted) => book.desk.tries_exhausted(&id, now),
            // An expired record's session was expired by `book` above (same TTL).
            Err(_) => {}
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

pub(super) async fn session_events(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (first, rx) = {
        let mut book = st.book(st.now());
        authorize(&book.desk, &who, &id, Access::View)?;
        // Subscribe and snapshot under one lock: no update can fall between them.
        let rx = book.subscribe(&id).ok_or_else(ApiError::not_found)?;
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
        first_sent: bool,
    }
    let init = S {
        first: Some(first),
        rx,
        shutdown,
        done: false,
        first_sent: false,
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
        let mut ev = Event::default().event("progress").data(&*update.json);
        if !s.first_sent {
            // Browsers reconnect a cut stream after this long; each event is the whole
            // session, so the first one after a reconnect brings the follower up to date.
            s.first_sent = true;
            ev = ev.retry(SSE_RETRY);
        }
        Some((Ok::<Event, Infallible>(ev), s))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
