//! The Micro error shape, `{"id": "users.<Method>", "code": 400, "status": "Bad Request",
//! "detail": "..."}`, answered with the HTTP status equal to `code`.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::{chain, Error};

/// An error as both wire surfaces answer it: Micro's error shape (M3O's API uses it too),
/// with the service name of the surface in `id`.
#[derive(Debug, Serialize)]
pub struct WireError {
    pub id: String,
    pub code: u16,
    pub detail: String,
    pub status: String,
    /// Login and VerifyToken, for an account with a second factor: the challenge to
    /// send to LoginMfa, and until when it may be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge_expires: Option<super::json::Int64>,
    /// Headers that go with the status (Allow, Retry-After, WWW-Authenticate).
    #[serde(skip)]
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl WireError {
    /// `method` names the RPC method (`Create`), or the route for the non-RPC ones.
    pub fn new(method: &str, status: StatusCode, detail: impl Into<String>) -> Self {
        Self::in_service("users", method, status, detail)
    }

    /// An error of `service` (`users` for the Micro surface, `user` for M3O's).
    pub fn in_service(
        service: &str,
        method: &str,
        status: StatusCode,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            id: format!("{service}.{method}"),
            code: status.as_u16(),
            detail: detail.into(),
            status: status.canonical_reason().unwrap_or("Unknown").to_string(),
            challenge_id: None,
            challenge_expires: None,
            headers: Vec::new(),
        }
    }

    /// Answers 405 naming the verbs the route does accept.
    pub fn method_not_allowed(method: &str, allow: &'static str) -> Self {
        Self::new(
            method,
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use {allow} for this route"),
        )
        .with_header(header::ALLOW, allow)
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// Maps a core error to its status. Faults are logged here with their cause and
    /// answered with a generic detail.
    pub fn from_error(method: &str, err: Error) -> Self {
        Self::from_error_in("users", method, err)
    }

    /// [`WireError::from_error`] for an error of `service`.
    pub fn from_error_in(service: &str, method: &str, err: Error) -> Self {
        let status = status_of(&err);
        match &err {
            Error::Internal(cause) => {
                tracing::error!(method, error = %chain(cause.as_ref()), "request failed");
            }
            Error::Unavailable { source, .. } => {
                tracing::warn!(method, error = %chain(source.as_ref()), "database unavailable");
            }
            _ => {}
        }
        let mut micro = Self::in_service(service, method, status, err.to_string());
        match err {
            Error::TooManyRequests { retry_after } => micro
                .headers
                .push((header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)))),
            Error::SecondFactorRequired { challenge, expires } => {
                micro.challenge_id =
                    Some(secrecy::ExposeSecret::expose_secret(&challenge).to_owned());
                micro.challenge_expires = Some(super::json::Int64(expires));
            }
            _ => {}
        }
        micro
    }
}

/// One status per kind of error; this is the only place that decides it.
pub fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::Invalid { .. } | Error::Malformed(_) => StatusCode::BAD_REQUEST,
        Error::Unauthorized(_) | Error::SecondFactorRequired { .. } => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for WireError {
    fn into_response(mut self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let extra = std::mem::take(&mut self.headers);
        let mut response = (status, Json(self)).into_response();
        response.headers_mut().extend(extra);
        response
    }
}
