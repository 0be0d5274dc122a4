//! The live calls over HTTP (admin): list, view, and switch caller→agent scrubbing.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::reply::{json_response, parse_json};
use super::state::ApiState;
use crate::ids::CallId;

/// A path's call id; one that is no call id names no live call.
fn parse_call(s: &str) -> Result<CallId, ApiError> {
    s.parse().map_err(|_| ApiError::no_call())
}

pub(super) async fn list_calls(State(st): State<ApiState>) -> Response {
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

pub(super) async fn get_call(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_call(&id)?;
    let view = st.inner.calls.view(id).ok_or_else(ApiError::no_call)?;
    Ok(json_response(StatusCode::OK, &view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrubbingBody {
    on: bool,
}

pub(super) async fn put_scrubbing(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ScrubbingBody = parse_json(&body)?;
    let id = parse_call(&id)?;
    st.set_call_scrubbing(id, req.on)?;
    tracing::info!(call = %id, on = req.on, "scrubbing switched from the API");
    let view = st.inner.calls.view(id).ok_or_else(ApiError::no_call)?;
    Ok(json_response(StatusCode::OK, &view))
}
