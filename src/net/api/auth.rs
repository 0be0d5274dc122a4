//! Who is calling and what they may do: the bearer-token (or desk login cookie) middleware,
//! the role gate of each route and the ownership check of each session.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::login;
use super::state::ApiState;
use super::tokens::Role;
use crate::payment::desk::Desk;
use crate::payment::session::SessionId;

/// Tracing target of the unlock audit trail.
pub const AUDIT_TARGET: &str = "tonewall::audit";

/// The integration a request authenticated as: its token's name and role.
#[derive(Clone, Debug)]
pub(super) struct Caller {
    pub(super) name: Arc<str>,
    pub(super) role: Role,
}

/// Roles each route admits (the router's table; ownership is checked in the handlers).
pub(super) const DESK: &[Role] = &[Role::Desk];
pub(super) const DESK_ADMIN: &[Role] = &[Role::Desk, Role::Admin];
pub(super) const DESK_PAY: &[Role] = &[Role::Desk, Role::Payment];
pub(super) const DESK_PAY_ADMIN: &[Role] = &[Role::Desk, Role::Payment, Role::Admin];
pub(super) const PAYMENT: &[Role] = &[Role::Payment];
pub(super) const ADMIN: &[Role] = &[Role::Admin];
pub(super) const SCRAPERS: &[Role] = &[Role::Admin, Role::Metrics];

/// What a caller wants to do with a session, for [`authorize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
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
pub(super) fn authorize(
    desk: &Desk,
    caller: &Caller,
    id: &SessionId,
    access: Access,
) -> Result<(), ApiError> {
    let s = desk.session(id).ok_or_else(ApiError::not_found)?;
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
pub(super) async fn allow(
    State(roles): State<&'static [Role]>,
    req: Request,
    next: Next,
) -> Response {
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

/// Whether a request comes from the page's own origin, as far as the browser says: an
/// `Origin` header must name the `Host` it was sent to, and `Sec-Fetch-Site` must not be
/// `cross-site`. A request without either (not from a browser, or a same-origin GET) passes.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    if text("sec-fetch-site") == Some("cross-site") {
        return false;
    }
    let Some(origin) = text(header::ORIGIN.as_str()) else {
        return true;
    };
    let host = text(header::HOST.as_str()).unwrap_or_default();
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| !host.is_empty() && a.eq_ignore_ascii_case(host))
}

/// The caller behind a desk page's cookie: the desk role, with the login's name. Requests
/// that change anything must carry the login's CSRF token and come from the page's origin.
fn cookie_caller(st: &ApiState, req: &Request) -> Result<Option<Caller>, ApiError> {
    let headers = req.headers();
    let Some(cookie) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(login::cookie_value)
    else {
        return Ok(None);
    };
    let now = st.now();
    let Some(login) = st
        .inner
        .logins
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .check(cookie, now)
    else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the desk login has ended: log in again",
        ));
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if !safe {
        let presented = headers
            .get(login::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !login::csrf_matches(&login, presented) || !same_origin(headers) {
            tracing::info!(
                target: AUDIT_TARGET,
                integration = &*login.name,
                method = %req.method(),
                path = req.uri().path(),
                "refused: a desk login's request without its CSRF token or from another origin"
            );
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the request lacks the desk page's CSRF token or comes from another origin",
            ));
        }
    }
    Ok(Some(Caller {
        name: login.name.clone(),
        role: Role::Desk,
    }))
}

/// Who is calling: a bearer token (integrations), or else the desk page's login cookie. A
/// presented bearer token that does not check out is refused, whatever cookie comes with it.
pub(super) async fn auth(State(st): State<ApiState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let caller = match presented {
        Some(t) => match st.inner.tokens.check(t) {
            Some((name, role)) => Caller {
                name: name.into(),
                role,
            },
            None => return ApiError::unauthorized().into_response(),
        },
        None => match cookie_caller(&st, &req) {
            Ok(Some(c)) => c,
            Ok(None) => return ApiError::unauthorized().into_response(),
            Err(e) => return e.into_response(),
        },
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
