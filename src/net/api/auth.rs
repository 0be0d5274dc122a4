//! Who is calling and what they may do: the bearer-token middleware, the role gate of each
//! route and the ownership check of each session.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
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
