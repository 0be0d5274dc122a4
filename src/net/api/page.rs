//! The agent's desk page (`/desk`): static HTML, CSS and JavaScript embedded in the binary,
//! served under a strict Content-Security-Policy (own scripts and styles only, no inline code,
//! nothing from elsewhere, no framing), and the login that turns a desk token into the page's
//! cookie session (`login`).
//!
//! The page uses only the public API. It never receives a retrieval token, a PIN or a card
//! digit beyond the last four: the desk role cannot reach them, and a login is always the
//! desk role.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::auth::{AUDIT_TARGET, same_origin};
use super::error::ApiError;
use super::login::{self, COOKIE};
use super::reply::{parse_json, secret_json};
use super::state::ApiState;
use super::tokens::Role;
use crate::net::http::OverTls;

const INDEX_HTML: &str = include_str!("../../../assets/desk/index.html");
const DESK_CSS: &str = include_str!("../../../assets/desk/desk.css");
const DESK_JS: &str = include_str!("../../../assets/desk/desk.js");
const ICON_SVG: &str = include_str!("../../../assets/desk/icon.svg");

/// The page's policy: its own scripts, styles, images and API; nothing inline, nothing from
/// elsewhere, no forms posted anywhere, never in a frame.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(super) async fn css() -> Response {
    asset("text/css; charset=utf-8", DESK_CSS)
}

pub(super) async fn js() -> Response {
    asset("text/javascript; charset=utf-8", DESK_JS)
}

pub(super) async fn icon() -> Response {
    asset("image/svg+xml", ICON_SVG)
}

#[derive(Deserialize)]
struct LoginBody {
    token: SecretString,
}

/// What the page learns of its login: the agent's identity and the CSRF token to send back.
#[derive(Serialize)]
struct LoginAnswer<'a> {
    agent: &'a str,
    csrf: &'a str,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

fn cookie_header(value: &str, max_age_s: u64, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .map_err(|_| ApiError::internal("cookie"))
}

/// `POST /v1/desk/login`: a desk token, sent once as JSON from the page's own origin, opens a
/// login. Other roles' tokens are refused: the page is the desk's.
pub(super) async fn login(State(st): State<ApiState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    // A JSON body cannot be sent cross-site without a CORS preflight, which this API never
    // grants; with the origin check, no other site can log a browser in.
    if !same_origin(&parts.headers) || !is_json(&parts.headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "log in from the desk page itself",
        ));
    }
    let body: Bytes = axum::body::to_bytes(body, 4 * 1024)
        .await
        .map_err(|_| ApiError::bad_json())?;
    let req: LoginBody = parse_json(&body)?;
    let found = st
        .inner
        .tokens
        .check(req.token.expose_secret())
        .map(|(name, role)| (name.to_string(), role));
    drop(req);
    let name = match found {
        Some((name, Role::Desk)) => name,
        Some((name, role)) => {
            tracing::info!(target: AUDIT_TARGET, integration = %name, role = role.as_str(), "desk login refused: not a desk token");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only a desk token opens the desk page",
            ));
        }
        None => return Err(ApiError::unauthorized()),
    };
    let opened = st
        .inner
        .logins
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .open(&name, st.now());
    tracing::info!(target: AUDIT_TARGET, integration = %name, "desk login");
    let secure = parts
        .extensions
        .get::<OverTls>()
        .is_some_and(|OverTls(t)| *t);
    let cookie = cookie_header(&opened.cookie, opened.max_age_s, secure)?;
    let mut resp = secret_json(
        StatusCode::OK,
        &LoginAnswer {
            agent: &name,
            csrf: &opened.csrf,
        },
    )?;
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

fn presented_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(login::cookie_value)
}

/// `GET /v1/desk/me`: the login the page's cookie stands for (after a reload, the page takes
/// its CSRF token from here). Readable only by the page's own origin (no CORS).
pub(super) async fn me(
    State(st): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view = presented_cookie(&headers).and_then(|c| {
        st.inner
            .logins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(c, st.now())
    });
    let Some(view) = view else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "not logged in to the desk",
        ));
    };
    secret_json(
        StatusCode::OK,
        &LoginAnswer {
            agent: &view.name,
            csrf: &view.csrf,
        },
    )
}

/// `POST /v1/desk/logout` (behind the login's CSRF check): ends the login and clears the
/// cookie.
pub(super) async fn logout(
    State(st): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(c) = presented_cookie(&headers) {
        st.inner
            .logins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .close(c);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie_header("", 0, false)?);
    Ok(resp)
}
