//! The core's error type. Each variant is one kind of outcome a client can act on; the
//! HTTP layer maps each to one status (see `http::error`). Internal causes are kept as
//! `source`s for the log and never reach a response.

use std::borrow::Cow;
use std::fmt;

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
    /// The first step of a sign-in passed, and the account asks for a second factor:
    /// LoginMfa with this challenge (short-lived, single-use) and a code opens the session.
    #[error("mfa_required: this account has two-factor sign-in; send a code from the authenticator app (or a recovery code) to LoginMfa with challenge_id")]
    SecondFactorRequired {
        /// The challenge id (a secret token; kept as a secret so that it is never
        /// printed with the error).
        challenge: secrecy::SecretString,
        expires: i64,
    },
    /// The caller is known but may not do this (a session acting on another account).
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0} is already taken")]
    Conflict(Unique),
    /// A brute-force or sign-up limit was reached; retry after that many seconds.
    #[error("too many attempts; retry in {retry_after} seconds")]
    TooManyRequests { retry_after: i64 },
    /// The database cannot serve the request now; it changed nothing and can be retried.
    #[error("{}", outage_detail(*.outage))]
    Unavailable {
        outage: Outage,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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

    /// The service's side failed (the database cannot serve, or a fault of ours), not
    /// the request.
    pub fn is_fault(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Internal(_))
    }
}

/// Why the database cannot serve a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// It does not answer (down, unreachable, or every connection is busy for too long).
    Unreachable,
    /// It is locked by other writers or had to abort a conflicting transaction.
    Busy,
    /// It refuses writes: a read-only file or file system, or a standby server.
    ReadOnly,
    /// Its disk is full.
    DiskFull,
    /// Writing its files failed.
    Storage,
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unreachable => "unreachable",
            Self::Busy => "busy",
            Self::ReadOnly => "read-only",
            Self::DiskFull => "disk full",
            Self::Storage => "storage error",
        })
    }
}

fn outage_detail(outage: Outage) -> &'static str {
    match outage {
        Outage::Busy => "the database is busy; retry shortly",
        Outage::ReadOnly => {
            "the database is read-only: changes cannot be saved now (reads still work)"
        }
        Outage::DiskFull => {
            "the database is out of disk space: changes cannot be saved now (reads still work)"
        }
        Outage::Storage => {
            "the database could not write to its storage: changes cannot be saved now"
        }
        Outage::Unreachable => "the database is unavailable; retry shortly",
    }
}

/// What kind of failure a store's error is, as the core tells its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A unique value is taken.
    Conflict(Unique),
    /// The database cannot serve the request now; nothing was changed.
    Unavailable(Outage),
    /// Anything else: a fault of ours.
    Fault,
}

/// A store's error. The store implements it for its own error type, so that `?` turns
/// a store's failure into the core's [`Error`] (this module knows no store).
pub trait StoreFailure: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> FailureKind;
}

impl<E: StoreFailure> From<E> for Error {
    fn from(err: E) -> Self {
        match err.kind() {
            FailureKind::Conflict(field) => Self::Conflict(field),
            FailureKind::Unavailable(outage) => Self::Unavailable {
                outage,
                source: Box::new(err),
            },
            FailureKind::Fault => Self::Internal(Box::new(err)),
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
