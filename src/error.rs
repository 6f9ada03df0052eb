//! The core's error type. Each variant is one kind of outcome a client can act on; the
//! HTTP layer maps each to one status (see `http::error`). Internal causes are kept as
//! `source`s for the log and never reach a response.

use std::borrow::Cow;
use std::fmt;

use crate::store::StoreError;

/// A unique attribute of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unique {
    Id,
    Username,
    Email,
}

impl fmt::Display for Unique {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Id => "id",
            Self::Username => "username",
            Self::Email => "email",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field broke a rule. Displays as "<field> <reason>", e.g. "id is required".
    #[error("{field} {reason}")]
    Invalid {
        field: &'static str,
        reason: Cow<'static, str>,
    },
    /// The request body is not the JSON the method expects.
    #[error("{0}")]
    Malformed(String),
    /// Wrong credentials, or an unknown or expired session.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0} is already taken")]
    Conflict(Unique),
    /// A brute-force or sign-up limit was reached; retry after that many seconds.
    #[error("too many attempts; retry in {retry_after} seconds")]
    TooManyRequests { retry_after: i64 },
    /// The database did not answer in time; the request changed nothing and can be retried.
    #[error("the database is unavailable; retry shortly")]
    Unavailable(#[source] StoreError),
    /// A fault of ours. The detail a client sees is generic; the source goes to the log.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub fn required(field: &'static str) -> Self {
        Self::invalid(field, "is required")
    }

    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(cause.into())
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(field) => Self::Conflict(field),
            StoreError::Unavailable(_) => Self::Unavailable(err),
            StoreError::Other(cause) => Self::Internal(Box::new(cause)),
        }
    }
}

/// An error and its causes on one line, "outer: inner: innermost", skipping a cause whose
/// text the previous message already includes (driver errors often repeat themselves).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
