//! The control API (docs/openapi.yaml): payment sessions for agents' desktops and payment
//! integrations over HTTP, or HTTPS with rustls, with axum: masked progress as Server-Sent
//! Events, the one-time unlock, `/healthz` and `/metrics`. Its state ([`ApiState`]) is the shell
//! around the payment desk ([`crate::payment::desk`]): it takes the media path's keys
//! ([`ApiState::feed_digit`]) and does the store work the desk hands back.
//!
//! What it must never do: put a card digit into a response other than the one unlock, an SSE
//! event (the PAN's last four once complete is the most, PCI DSS 3.4.1), an error body, a log
//! line or a metric label. Error messages are fixed text, never an inner error's `Display` that
//! could echo input (serde's messages quote the offending value).
//!
//! `tokens` holds the bearer tokens, `login` the desk page's cookie logins, `auth` who may do
//! what, `state` the shell, `error` the one mapping of domain errors onto HTTP, `reply` the JSON
//! helpers; `sessions`, `locators` and `calls` are the handlers, `page` the agent's desk page
//! (`/desk`) and its login.

mod admin;
mod auth;
mod calls;
mod error;
mod locators;
mod login;
mod page;
mod reply;
mod sessions;
mod state;
mod tokens;

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_rustls::TlsAcceptor;

pub use auth::AUDIT_TARGET;
use auth::{ADMIN, DESK, DESK_ADMIN, DESK_PAY, DESK_PAY_ADMIN, PAYMENT, SCRAPERS, allow};
pub use error::ApiError;
use reply::json_response;
pub use state::{ApiInitError, ApiSettings, ApiState};
pub use tokens::{ApiTokens, Role, TokenConfigError};

use crate::net::http::HttpLimits;

/// How often [`serve`]'s housekeeping runs: capture timeouts, TTLs, purges.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Largest request body read (JSON commands are tiny).
const MAX_BODY: usize = 16 * 1024;

async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn metrics(axum::extract::State(st): axum::extract::State<ApiState>) -> Response {
    {
        let book = st.book(st.now());
        st.inner.metrics.sessions_live.set(book.desk.live() as i64);
    }
    st.fold_store_health();
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

/// The control API's routes over `state`. Every route but `/healthz`, the desk page's files
/// and its login needs a bearer token (or the desk page's login cookie, which is the desk role),
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
            post(sessions::create_session)
                .get(sessions::list_sessions)
                .route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session)
                .delete(sessions::cancel_session)
                .route_layer(only(DESK_PAY_ADMIN)),
        )
        .route(
            "/v1/sessions/{id}/events",
            get(sessions::session_events).route_layer(only(DESK_PAY_ADMIN)),
        )
        .route(
            "/v1/sessions/{id}/bind",
            post(sessions::bind_session).route_layer(only(DESK_PAY_ADMIN)),
        )
        .route(
            "/v1/sessions/{id}/start",
            post(sessions::start_session).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/reset",
            post(sessions::reset_session).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/fields/{field}/request",
            post(sessions::request_field).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/request-field",
            post(sessions::request_field_body).route_layer(only(DESK_PAY)),
        )
        .route(
            "/v1/sessions/{id}/unlock",
            post(sessions::unlock_session).route_layer(only(PAYMENT)),
        )
        .route(
            "/v1/sessions/{id}/credentials",
            post(sessions::take_credentials).route_layer(only(PAYMENT)),
        )
        .route(
            "/v1/locators/{locator}",
            get(locators::get_locator).route_layer(only(DESK_PAY_ADMIN)),
        )
        .route(
            "/v1/calls",
            get(calls::list_calls).route_layer(only(DESK_ADMIN)),
        )
        .route(
            "/v1/calls/{id}/agent",
            axum::routing::put(calls::put_agent).route_layer(only(ADMIN)),
        )
        .route(
            "/v1/desk/logout",
            post(page::logout).route_layer(only(DESK)),
        )
        .route(
            "/v1/calls/{id}",
            get(calls::get_call).route_layer(only(ADMIN)),
        )
        .route(
            "/v1/admin/drain",
            get(admin::get_drain)
                .post(admin::post_drain)
                .delete(admin::delete_drain)
                .route_layer(only(ADMIN)),
        )
        .route(
            "/v1/calls/{id}/scrub",
            axum::routing::put(calls::put_scrubbing).route_layer(only(ADMIN)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::auth));
    Router::new()
        .route("/healthz", get(healthz))
        // The desk page and its login: no bearer token (the login is how a browser gets in).
        .route("/desk", get(page::index))
        .route("/desk/", get(page::index))
        .route("/desk/desk.css", get(page::css))
        .route("/desk/desk.js", get(page::js))
        .route("/desk/icon.svg", get(page::icon))
        .route("/v1/desk/login", post(page::login))
        .route("/v1/desk/me", get(page::me))
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
    let conn = state.metrics().conn.clone();
    let close = move || state.close_streams();
    let res = crate::net::http::serve(listener, app, conn, close, tls, limits, shutdown).await;
    sweeper.abort();
    res
}
