//! How answers are written: JSON bodies (a zeroizing one for secrets) and the request parts
//! every handler parses the same way.

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::ApiError;
use crate::payment::session::SessionId;

pub(super) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub(super) fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    // serde's message may quote the offending value: never pass it on.
    serde_json::from_slice(body).map_err(|_| ApiError::bad_json())
}

pub(super) fn parse_id(s: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(s).map_err(|_| ApiError::not_found())
}

/// Room for the largest secret body (a card with a postcode is under 300 bytes): serialising
/// never grows the buffer, so no copy of a secret is left in a freed, unzeroized allocation.
const SECRET_BODY_CAPACITY: usize = 1_024;

/// A JSON response carrying secrets (token, PIN, card): serialised into a zeroizing buffer that
/// becomes the body itself (no copy into a plain `Vec`) and is wiped when the body is dropped,
/// and marked `no-store` so no cache keeps it.
pub(super) fn secret_json(
    status: StatusCode,
    value: &impl Serialize,
) -> Result<Response, ApiError> {
    let mut body = Zeroizing::new(Vec::with_capacity(SECRET_BODY_CAPACITY));
    serde_json::to_writer(&mut *body, value)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "encoding"))?;
    Ok((
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from(Bytes::from_owner(body)),
    )
        .into_response())
}
