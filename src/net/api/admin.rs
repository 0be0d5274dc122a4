//! Operating the node over HTTP (admin): drain it out of service and back.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::error::ApiError;
use super::reply::json_response;
use super::state::ApiState;
use crate::net::clock::rfc3339;
use crate::net::drain::DrainOrder;

#[derive(Serialize)]
struct DrainView {
    draining: bool,
    /// The process exits when the last call ends (a signal ordered the drain).
    exiting: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// When the calls still up will be hung up.
    #[serde(skip_serializing_if = "Option::is_none")]
    hangup_at: Option<String>,
    calls_active: usize,
}

fn view(st: &ApiState, o: DrainOrder) -> DrainView {
    DrainView {
        draining: o.draining,
        exiting: o.exit,
        since: o.draining.then(|| rfc3339(o.since_ms)),
        hangup_at: o
            .draining
            .then(|| rfc3339(o.since_ms.saturating_add(st.drain_ms()))),
        calls_active: st.inner.calls.len(),
    }
}

/// `GET /v1/admin/drain`: whether the node is draining, and its calls.
pub(super) async fn get_drain(State(st): State<ApiState>) -> Response {
    let o = st.drain().order();
    json_response(StatusCode::OK, &view(&st, o))
}

/// `POST /v1/admin/drain`: stop taking calls; the node stays up (unlike SIGTERM).
pub(super) async fn post_drain(State(st): State<ApiState>) -> Response {
    let before = st.drain().order();
    let o = st.drain().drain(false, st.now());
    if !before.draining {
        tracing::info!(calls = st.inner.calls.len(), "drain ordered from the API");
    }
    json_response(StatusCode::ACCEPTED, &view(&st, o))
}

/// `DELETE /v1/admin/drain`: take calls again (refused once a signal has ordered the exit).
pub(super) async fn delete_drain(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let before = st.drain().order();
    let o = st.drain().resume().map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            "exiting",
            "the node is shutting down; its drain cannot be taken back",
        )
    })?;
    if before.draining {
        tracing::info!("drain taken back from the API: taking calls again");
    }
    Ok(json_response(StatusCode::OK, &view(&st, o)))
}
