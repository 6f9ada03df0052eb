//! The audit trail's vocabulary: what happened, who did it, how it ended.

use super::Page;
use crate::error::Error;

/// A kind of security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    AccountCreated,
    AccountUpdated,
    AccountDeleted,
    LoginSucceeded,
    LoginFailed,
    Lockout,
    LockoutLifted,
    PasswordChanged,
    PasswordReset,
    EmailVerified,
    SessionEnded,
    SecondFactorChanged,
    AdminKeyRefused,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        Self::AccountCreated,
        Self::AccountUpdated,
        Self::AccountDeleted,
        Self::LoginSucceeded,
        Self::LoginFailed,
        Self::Lockout,
        Self::LockoutLifted,
        Self::PasswordChanged,
        Self::PasswordReset,
        Self::EmailVerified,
        Self::SessionEnded,
        Self::SecondFactorChanged,
        Self::AdminKeyRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccountCreated => "account.created",
            Self::AccountUpdated => "account.updated",
            Self::AccountDeleted => "account.deleted",
            Self::LoginSucceeded => "login.succeeded",
            Self::LoginFailed => "login.failed",
            Self::Lockout => "lockout",
            Self::LockoutLifted => "lockout.lifted",
            Self::PasswordChanged => "password.changed",
            Self::PasswordReset => "password.reset",
            Self::EmailVerified => "email.verified",
            Self::SessionEnded => "session.ended",
            Self::SecondFactorChanged => "second_factor.changed",
            Self::AdminKeyRefused => "admin_key.refused",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The webhook event that announces this kind, if one does.
    pub fn webhook_type(self) -> Option<&'static str> {
        match self {
            Self::AccountCreated => Some("user.created"),
            Self::AccountUpdated => Some("user.updated"),
            Self::AccountDeleted => Some("user.deleted"),
            Self::EmailVerified => Some("user.verified"),
            Self::LoginSucceeded => Some("session.created"),
            Self::SessionEnded => Some("session.ended"),
            Self::PasswordChanged | Self::PasswordReset => Some("password.changed"),
            Self::LoginFailed
            | Self::Lockout
            | Self::LockoutLifted
            | Self::SecondFactorChanged
            | Self::AdminKeyRefused => None,
        }
    }

    /// Whether its webhook payload carries the account as it is after the change.
    pub fn announces_account(self) -> bool {
        matches!(
            self,
            Self::AccountCreated | Self::AccountUpdated | Self::EmailVerified
        )
    }
}

/// `secs` (since the epoch, UTC) as RFC 3339: `2026-12-04T02:31:51Z`.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_writes_utc_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_614_265_330), "2021-02-25T15:02:10Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_351_511), "2026-12-04T02:31:51Z");
    }
}

/// Who made a change: the user themself (their session, or their own credentials), the
/// holder of the admin key (the API with the key, or the command line), or the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    User,
    Admin,
    System,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "self",
            Self::Admin => "admin",
            Self::System => "system",
        }
    }
}

/// Who is acting, from where, in which request: recorded with each event.
#[derive(Debug, Clone)]
pub struct Audit {
    pub actor: Actor,
    pub client_ip: Option<String>,
    pub request_id: Option<std::sync::Arc<str>>,
    pub at: i64,
}

impl Audit {
    /// The same request, as the service acting on its own rules (a lockout).
    pub fn by_the_service(&self) -> Self {
        Self {
            actor: Actor::System,
            ..self.clone()
        }
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increasing: the key of keyset paging.
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub user_id: Option<String>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    /// `success` or `failure`.
    pub outcome: String,
    pub actor: String,
}

/// Which events to read: all filters optional; newest first, before `before` (an
/// event id, from the previous page).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub user_id: Option<String>,
    pub kind: Option<EventKind>,
    /// From this time (inclusive), in seconds since the epoch.
    pub since: Option<i64>,
    /// Until this time (exclusive).
    pub until: Option<i64>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// One page of events, newest first, and where the next page starts (`before`), if
/// this page was full.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub next: Option<i64>,
}

impl EventQuery {
    /// A query as ListAuditEvents and `users-service audit` take it: every filter
    /// optional (empty strings and non-positive cursors count as absent), `limit` as
    /// List's.
    pub fn parse(
        user_id: Option<String>,
        kind: Option<String>,
        since: Option<i64>,
        until: Option<i64>,
        before: Option<i64>,
        limit: Option<i64>,
    ) -> Result<Self, Error> {
        let kind = match kind.filter(|k| !k.is_empty()) {
            Some(kind) => Some(EventKind::parse(&kind).ok_or_else(|| {
                Error::invalid(
                    "kind",
                    "is not an event kind (account.created, login.failed, ...: see docs/operations.md)",
                )
            })?),
            None => None,
        };
        Ok(Self {
            user_id: user_id.filter(|u| !u.is_empty()),
            kind,
            since,
            until,
            before: before.filter(|b| *b > 0),
            limit: Page::parse(limit, None)?.limit,
        })
    }
}

impl AuditPage {
    /// The page `events` makes for `query`: a full page may have more after it.
    pub fn of(events: Vec<AuditEvent>, query: &EventQuery) -> Self {
        let full = events.len() >= usize::try_from(query.limit).unwrap_or(usize::MAX);
        let next = full.then(|| events.last().map(|e| e.id)).flatten();
        Self { events, next }
    }
}
