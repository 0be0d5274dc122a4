//! GetAgent over HTTP: which session and agent a live locator names, this relay's or one
//! another relay filed in the shared directory. Misses count toward a per-source lockout
//! shared with loop calls.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::error::ApiError;
use super::reply::json_response;
use super::state::ApiState;
use crate::net::clock::rfc3339;
use crate::payment::directory;
use crate::payment::session::{Locator, SessionId};

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

/// Whether `ip` may look a locator up now; counts and answers the refusals.
fn lookup_allowed(st: &ApiState, ip: IpAddr, now: u64) -> Result<(), ApiError> {
    st.check_lookup(ip, now, "api").map_err(|locked| ApiError {
        retry_after_s: Some(locked.retry_after_s(now)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "locked_out",
            "too many locator look-ups found nothing; try again later",
        )
    })
}

pub(super) async fn get_locator(
    State(st): State<ApiState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path(locator): Path<String>,
) -> Result<Response, ApiError> {
    let ip = peer_ip(peer);
    let now = st.now();
    lookup_allowed(&st, ip, now)?;
    let res = find_locator(&st, &locator, now).await;
    st.lookup_done(ip, st.now(), res.is_ok());
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
        if let Some(s) = book.desk.by_locator(&locator, now) {
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
