//! The API's errors: an HTTP status, a stable code and fixed text, and the one mapping of each
//! domain error (the desk's, the session table's, the capture's, the vault store's) onto them.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::payment::capture::CaptureError;
use crate::payment::desk::DeskError;
use crate::payment::session::SessionError;
use crate::payment::store::UnlockError;

/// An API failure: HTTP status, a stable code (docs/openapi.yaml `Error.code`) and fixed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Wrong-PIN answers say how many tries are left.
    pub tries_left: Option<u32>,
    /// Lockouts say when to come back (HTTP `Retry-After`, seconds).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: &'static str) -> ApiError {
        ApiError {
            status,
            code,
            message: Cow::Borrowed(message),
            tries_left: None,
            retry_after_s: None,
        }
    }

    pub(super) fn forbidden() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's role may not do this",
        )
    }

    pub(super) fn not_yours() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the session belongs to another integration",
        )
    }

    pub(super) fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session")
    }

    pub(super) fn bad_json() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body is not the JSON this endpoint takes",
        )
    }

    pub(super) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub(super) fn no_call() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no live call has this id",
        )
    }

    pub(super) fn internal(message: &'static str) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the shared session store is unavailable",
        )
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tries_left: Option<u32>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInner {
                code: self.code,
                message: &self.message,
                tries_left: self.tries_left,
            },
        };
        // Written here rather than with the handlers' JSON helper, which itself answers with
        // this type.
        let mut resp = match serde_json::to_vec(&body) {
            Ok(bytes) => (
                self.status,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from(bytes),
            )
                .into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> ApiError {
        use StatusCode as S;
        let (status, code) = match &e {
            SessionError::NotFound | SessionError::BadId | SessionError::BadLocator => {
                (S::NOT_FOUND, "not_found")
            }
            SessionError::Expired => (S::GONE, "expired"),
            SessionError::InvalidTransition { .. }
            | SessionError::PinGone
            | SessionError::LocatorTaken => (S::CONFLICT, "conflict"),
            SessionError::LocatorSpaceExhausted => {
                (S::SERVICE_UNAVAILABLE, "locator_space_exhausted")
            }
            SessionError::TooMany => (S::SERVICE_UNAVAILABLE, "unavailable"),
            SessionError::QuotaReached => (S::TOO_MANY_REQUESTS, "session_quota"),
            SessionError::CredentialsTaken => (S::GONE, "credentials_taken"),
            SessionError::BadTtl { .. } | SessionError::BadAgent => (S::BAD_REQUEST, "bad_request"),
        };
        // SessionError's texts are built from states, actions and limits only: no input echoes.
        ApiError {
            status,
            code,
            message: Cow::Owned(e.to_string()),
            tries_left: None,
            retry_after_s: None,
        }
    }
}

impl From<DeskError> for ApiError {
    fn from(e: DeskError) -> ApiError {
        use StatusCode as S;
        let conflict = |message| ApiError::new(S::CONFLICT, "conflict", message);
        match e {
            DeskError::NoSession | DeskError::NotFound => ApiError::not_found(),
            DeskError::NotCapturing => conflict("the session is not capturing"),
            DeskError::CaptureOver => conflict("the session is no longer capturing"),
            DeskError::CallTaken => conflict("the call is bound to another session"),
            DeskError::TakenElsewhere => conflict("the session was taken by another relay"),
            DeskError::NoCall => ApiError::no_call(),
            DeskError::StoreUnavailable => ApiError::unavailable(),
            DeskError::ClockOutOfRange => ApiError::internal("clock out of range"),
            DeskError::Seal => ApiError::internal("sealing failed"),
            DeskError::Directory => ApiError::internal("internal error"),
            DeskError::Session(e) => e.into(),
            DeskError::Capture(e) => e.into(),
        }
    }
}

impl From<CaptureError> for ApiError {
    fn from(e: CaptureError) -> ApiError {
        match e {
            CaptureError::UnknownField => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "field is not part of this capture",
            ),
            CaptureError::Finished => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "the capture is complete")
            }
            CaptureError::PanRequired => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the pan field is required",
            ),
        }
    }
}

pub(super) fn unlock_error(e: &UnlockError) -> ApiError {
    use StatusCode as S;
    let (status, message): (StatusCode, &'static str) = match e {
        UnlockError::NotFound | UnlockError::Destroyed => (S::NOT_FOUND, "no such record"),
        UnlockError::Expired => (S::GONE, "the record has expired"),
        UnlockError::BadToken => (S::UNAUTHORIZED, "retrieval token does not match"),
        UnlockError::WrongPin { .. } => (S::FORBIDDEN, "wrong PIN"),
        UnlockError::TriesExhausted => (S::GONE, "too many wrong PINs; the record is destroyed"),
        UnlockError::AlreadyUnlocked => (S::GONE, "the record was already unlocked"),
        UnlockError::Corrupt => (S::INTERNAL_SERVER_ERROR, "the record is corrupt"),
        UnlockError::Backend(_) => (S::SERVICE_UNAVAILABLE, "vault store unavailable"),
    };
    ApiError {
        status,
        code: e.api_code(),
        message: Cow::Borrowed(message),
        tries_left: match e {
            UnlockError::WrongPin { tries_left } => Some(*tries_left),
            _ => None,
        },
        retry_after_s: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlock_errors_keep_numbers_out_of_messages() {
        let e = unlock_error(&UnlockError::WrongPin { tries_left: 2 });
        assert_eq!(
            (e.status, e.code, e.tries_left),
            (StatusCode::FORBIDDEN, "wrong_pin", Some(2))
        );
        assert!(!e.message.chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn desk_errors_a_caller_tells_apart_answer_apart() {
        let code = |e: DeskError| ApiError::from(e).code;
        assert_eq!(code(DeskError::NotFound), "not_found");
        assert_eq!(code(DeskError::NoCall), "not_found");
        assert_eq!(code(DeskError::CallTaken), "conflict");
        assert_eq!(code(DeskError::TakenElsewhere), "conflict");
        assert_eq!(code(DeskError::StoreUnavailable), "unavailable");
        assert_eq!(
            code(DeskError::Session(SessionError::QuotaReached)),
            "session_quota"
        );
    }
}
