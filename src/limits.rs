//! Brute-force and sign-up limits (OWASP ASVS V2.2).
//!
//! Failed password checks are counted per account and per client address; once either
//! reaches its maximum within the window, further attempts are refused with 429 before
//! any hashing, for a lockout that doubles with each repeat. The same happens whether
//! or not the account exists, so the limiter reveals nothing. Create is limited per
//! client address. The counters live in the store, so every replica sees them.

use std::net::IpAddr;
use std::sync::Arc;

use crate::domain::LoginName;
use crate::error::Error;
use crate::session::sha256_hex;
use crate::store::Store;

/// The longest lockout, however many times a key was locked before.
pub const MAX_LOCKOUT: i64 = 86_400;
/// Counters untouched for this long are forgotten, strikes included.
pub const COUNTER_RETENTION: i64 = 86_400;
/// The window of the hourly limits (sign-ups, e-mails).
const HOUR: i64 = 3_600;

/// The limits; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Failed password checks per account within the window.
    pub login_max_failures: u32,
    /// Failed password checks per client address within the window.
    pub login_max_failures_per_ip: u32,
    /// Seconds.
    pub login_window: i64,
    /// Seconds of the first lockout; each further lockout doubles it, up to a day.
    pub login_lockout: i64,
    /// Create requests per client address per hour.
    pub create_per_hour: u32,
    /// E-mails of one kind (verification, reset, magic link) per recipient per hour.
    pub mails_per_hour: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            login_max_failures: 5,
            login_max_failures_per_ip: 5,
            login_window: 900,
            login_lockout: 60,
            create_per_hour: 20,
            mails_per_hour: 5,
        }
    }
}

/// A rate-limit key: the SHA-256 of what is limited, so the table never holds the
/// identifiers people typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey(String);

impl LimitKey {
    fn of(kind: &str, value: &str) -> Self {
        Self(sha256_hex(format!("{kind}:{value}").as_bytes()))
    }

    /// An existing account, whichever name it was reached by.
    pub fn account(user_id: &str) -> Self {
        Self::of("account", user_id)
    }

    /// A name that matches no account: limited exactly like an account.
    pub fn login_name(name: &LoginName) -> Self {
        match name {
            LoginName::Username(u) => Self::of("username", u.as_str()),
            LoginName::Email(e) => Self::of("email", e.as_str()),
        }
    }

    fn client(ip: IpAddr) -> Self {
        Self::of("client", &ip.to_string())
    }

    fn signup(ip: IpAddr) -> Self {
        Self::of("signup", &ip.to_string())
    }

    fn mail(kind: &str, recipient: &str) -> Self {
        Self::of(&format!("mail:{kind}"), recipient)
    }
}

pub struct Limiter {
    store: Arc<dyn Store>,
    config: LimitConfig,
}

impl Limiter {
    pub fn new(store: Arc<dyn Store>, config: LimitConfig) -> Self {
        Self { store, config }
    }

    fn account_limited(&self) -> bool {
        self.config.login_max_failures > 0
    }

    fn client_key(&self, client: Option<IpAddr>) -> Option<LimitKey> {
        client
            .filter(|_| self.config.login_max_failures_per_ip > 0)
            .map(LimitKey::client)
    }

    /// Refuses with 429 while the account or the client is locked out. Costs one
    /// indexed read and no hashing.
    pub async fn check_password_attempt(
        &self,
        account: &LimitKey,
        client: Option<IpAddr>,
        now: i64,
    ) -> Result<(), Error> {
        let client = self.client_key(client);
        let keys = match (self.account_limited(), &client) {
            (false, None) => return Ok(()),
            (true, None) => [account.0.as_str(), account.0.as_str()],
            (false, Some(c)) => [c.0.as_str(), c.0.as_str()],
            (true, Some(c)) => [account.0.as_str(), c.0.as_str()],
        };
        let until = self.store.blocked_until(keys).await?;
        if until > now {
            return Err(Error::TooManyRequests {
                retry_after: until - now,
            });
        }
        Ok(())
    }

    /// Counts a failed password check; locks the account or client out when it reaches
    /// its maximum.
    pub async fn password_failed(
        &self,
        account: &LimitKey,
        client: Option<IpAddr>,
        now: i64,
    ) -> Result<(), Error> {
        if self.account_limited() {
            self.count_failure(account, self.config.login_max_failures, now)
                .await?;
        }
        if let Some(key) = self.client_key(client) {
            self.count_failure(&key, self.config.login_max_failures_per_ip, now)
                .await?;
        }
        Ok(())
    }

    async fn count_failure(&self, key: &LimitKey, max: u32, now: i64) -> Result<(), Error> {
        let counter = self
            .store
            .count_event(&key.0, now, self.config.login_window)
            .await?;
        if counter.count >= i64::from(max) {
            let lockout = lockout_seconds(self.config.login_lockout, counter.strikes);
            self.store.block(&key.0, now + lockout).await?;
            tracing::warn!(
                event = "lockout",
                lockout_seconds = lockout,
                strikes = counter.strikes + 1,
                "too many failed password checks"
            );
        }
        Ok(())
    }

    /// A right password resets the account's count (not the client's: an attacker must
    /// not be able to reset it with an account of their own).
    pub async fn password_succeeded(&self, account: &LimitKey) -> Result<(), Error> {
        if self.account_limited() {
            self.store.clear_counter(&account.0).await?;
        }
        Ok(())
    }

    /// Counts a sign-up from `client`; 429 once the hourly maximum is passed.
    pub async fn signup(&self, client: Option<IpAddr>, now: i64) -> Result<(), Error> {
        let Some(ip) = client else {
            return Ok(());
        };
        let limited = self
            .hourly(&LimitKey::signup(ip), self.config.create_per_hour, now)
            .await;
        if limited.is_err() {
            tracing::warn!(event = "signup_limited", client = %ip, "too many sign-ups from one address");
        }
        limited
    }

    /// Counts an e-mail of `kind` to `recipient`, whether or not an account has that
    /// address (so the limit reveals nothing); 429 once the hourly maximum is passed.
    pub async fn mail(&self, kind: &str, recipient: &str, now: i64) -> Result<(), Error> {
        let limited = self
            .hourly(
                &LimitKey::mail(kind, recipient),
                self.config.mails_per_hour,
                now,
            )
            .await;
        if limited.is_err() {
            tracing::warn!(
                event = "mail_limited",
                kind,
                "too many e-mails to one address"
            );
        }
        limited
    }

    /// One event on an hourly counter; 429 past `max` (0: no limit).
    async fn hourly(&self, key: &LimitKey, max: u32, now: i64) -> Result<(), Error> {
        if max == 0 {
            return Ok(());
        }
        let counter = self.store.count_event(&key.0, now, HOUR).await?;
        if counter.count > i64::from(max) {
            return Err(Error::TooManyRequests {
                retry_after: (counter.window_start + HOUR - now).max(1),
            });
        }
        Ok(())
    }

    /// Forgets counters that have been quiet for a day.
    pub async fn sweep(&self, now: i64) -> Result<u64, Error> {
        Ok(self
            .store
            .delete_stale_counters(now - COUNTER_RETENTION, now)
            .await?)
    }
}

/// `base` doubled once per earlier lockout, at most [`MAX_LOCKOUT`].
fn lockout_seconds(base: i64, strikes: i64) -> i64 {
    let shift = u32::try_from(strikes.clamp(0, 30)).unwrap_or(30);
    base.max(1).saturating_mul(1_i64 << shift).min(MAX_LOCKOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_double_up_to_a_day() {
        assert_eq!(lockout_seconds(60, 0), 60);
        assert_eq!(lockout_seconds(60, 1), 120);
        assert_eq!(lockout_seconds(60, 4), 960);
        assert_eq!(lockout_seconds(60, 20), MAX_LOCKOUT);
        assert_eq!(lockout_seconds(60, i64::MAX), MAX_LOCKOUT);
    }

    #[test]
    fn keys_are_digests_that_separate_kinds() {
        let a = LimitKey::account("asim");
        assert_eq!(a.0.len(), 64);
        assert!(!a.0.contains("asim"));
        // Counters already in a database stay theirs: the key is SHA-256 of
        // "<kind>:<value>" in lowercase hex.
        assert_eq!(
            LimitKey::account("u1").0,
            "3cd782cdd588d9764ab3265d8a1c0dfde4c38bd2a42b6a7ff0b2ee41ec55553d"
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_ne!(LimitKey::client(ip), LimitKey::signup(ip));
    }
}
