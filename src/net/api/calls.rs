//! The live calls over HTTP: list (admin all, a desk its agent's), view, switch caller→agent
//! scrubbing, and name the agent a call is with (admin).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::ApiError;
use super::reply::{json_response, parse_json};
use super::state::ApiState;
use super::tokens::Role;
use crate::ids::CallId;
use crate::payment::session::AgentId;

/// A path's call id; one that is no call id names no live call.
fn parse_call(s: &str) -> Result<CallId, ApiError> {
    s.parse().map_err(|_| ApiError::no_call())
}

/// Admin sees every live call; a desk sees only the calls tagged with its agent (its token's
/// name), never another agent's.
pub(super) async fn list_calls(
    State(st): State<ApiState>,
    axum::Extension(who): axum::Extension<Caller>,
) -> Response {
    #[derive(Serialize)]
    struct Calls {
        calls: Vec<crate::net::calls::CallView>,
    }
    let calls = match who.role {
        Role::Admin => st.inner.calls.list(),
        _ => st.inner.calls.list_for(&who.name),
    };
    json_response(StatusCode::OK, &Calls { calls })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentBody {
    agent: String,
}

/// `PUT /v1/calls/{id}/agent` (admin, e.g. the contact centre's CTI): the agent an inline call
/// is with, so that it appears on that agent's desk.
pub(super) async fn put_agent(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AgentBody = parse_json(&body)?;
    let agent = AgentId::parse(&req.agent)?;
    let id = parse_call(&id)?;
    if !st.inner.calls.assign(id, agent.as_str()) {
        return Err(ApiError::no_call());
    }
    tracing::info!(call = %id, agent = agent.as_str(), "call assigned to an agent from the API");
    let view = st.inner.calls.view(id).ok_or_else(ApiError::no_call)?;
    Ok(json_response(StatusCode::OK, &view))
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
