//! Brute-force and sign-up limits (OWASP ASVS V2.2).
//!
//! A password or code check is an *attempt*. Before the (slow) check runs, the attempt
//! is reserved in the store, atomically, under each key it counts against: the
//! identifier it was made with and the client's address. When any of those keys has
//! no attempt left in its window, or is locked out, the request is refused with 429
//! before any hashing. So however many requests arrive at once, at most the maximum
//! of checks run per key and window. A failed check keeps its reservation; when a
//! key's window is full of failures it is locked out, for a lockout that doubles with
//! each lockout that follows an earlier one. A successful check gives its reservations
//! back: the identifier's count starts over, the address's loses this one attempt.
//!
//! Identifiers are counted as submitted (a username, an e-mail address, a user id),
//! each with its own budget, whether or not an account has it: a lockout reveals
//! neither which accounts exist nor which identifiers belong to the same account.
//!
//! Create and the e-mails are limited per hour. The counters live in the store, so
//! every replica sees them.

use std::net::IpAddr;
use std::sync::Arc;

use crate::domain::sha256_hex;
use crate::domain::Audit;
use crate::domain::LoginName;
use crate::error::Error;
use crate::metrics::{LimitName, Metrics};
use crate::store::{AttemptLimit, Counter, CounterStore, Reservation};

/// The longest lockout, however many times a key was locked before.
pub const MAX_LOCKOUT: i64 = 86_400;
/// Counters untouched for this long are forgotten, strikes included.
pub const COUNTER_RETENTION: i64 = 86_400;
/// The window of the hourly limits (sign-ups, e-mails).
pub const HOUR: i64 = 3_600;

/// The limits; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Password or code checks per identifier within the window.
    pub login_max_failures: u32,
    /// Password or code checks per client address within the window.
    pub login_max_failures_per_ip: u32,
    /// Seconds.
    pub login_window: i64,
    /// Seconds of the first lockout; each further lockout doubles it, up to a day.
    pub login_lockout: i64,
    /// Create requests per client address per hour.
    pub create_per_hour: u32,
    /// E-mails of one kind (verification, reset, magic link) per recipient per hour.
    pub mails_per_hour: u32,
    /// Passkey sign-ins started per client address per hour.
    pub passkey_sign_ins_per_hour: u32,
}

/// A rate-limit key: the SHA-256 of what is limited, so the table never holds the
/// identifiers people typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey(String);

impl LimitKey {
    fn of(kind: &str, value: &str) -> Self {
        Self(sha256_hex(format!("{kind}:{value}").as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A user id, as UpdatePassword names an account.
    pub fn user_id(id: &str) -> Self {
        // "account": the kind counters keyed by user id have always had.
        Self::of("account", id)
    }

    /// A username, normalised (as [`crate::domain::Username`] and the store keep it).
    pub fn username(username: &str) -> Self {
        Self::of("username", username)
    }

    /// An e-mail address, normalised (as [`crate::domain::Email`] and the store keep it).
    pub fn email(email: &str) -> Self {
        Self::of("email", email)
    }

    /// The identifier a Login was made with.
    pub fn login_name(name: &LoginName) -> Self {
        match name {
            LoginName::Username(u) => Self::username(u.as_str()),
            LoginName::Email(e) => Self::email(e.as_str()),
        }
    }

    fn client(ip: IpAddr) -> Self {
        Self::of("client", &address_group(ip))
    }

    #[cfg(test)]
    fn signup(ip: IpAddr) -> Self {
        Self::of(LimitName::signup.as_str(), &address_group(ip))
    }

    fn mail(kind: &str, recipient: &str) -> Self {
        Self::of(&format!("mail:{kind}"), recipient)
    }
}

/// What an account's counters say: the console's "lockout" line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockoutState {
    /// Locked out until then (Unix seconds); None when not locked now.
    pub locked_until: Option<i64>,
    /// Password or code checks counted in the current window, by the busiest of the
    /// account's identifiers (failed ones, and ones still being checked).
    pub attempts: i64,
    /// Lockouts before: the next one lasts longer.
    pub strikes: i64,
}

/// What the per-address limits count a client address as: an IPv4 address (IPv4
/// written as IPv6, `::ffff:a.b.c.d`, included), or the /64 network of an IPv6 address,
/// since one subscriber is usually given a whole /64.
pub fn address_group(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

pub struct Limiter {
    store: Arc<dyn CounterStore>,
    config: LimitConfig,
    metrics: Arc<Metrics>,
}

/// What a reserved attempt is counted under.
#[derive(Debug, Clone)]
struct Reserved {
    /// The identifier and the start of the window the attempt was counted in: its
    /// count starts over when the check succeeds.
    subject: Option<(LimitKey, i64)>,
    /// The client's address and the start of the window the attempt was counted in:
    /// the address gets this one attempt back when it succeeds, if that window is
    /// still its current one.
    client: Option<(LimitKey, i64)>,
}

/// An attempt reserved under every limit it counts against. Run the steps before the
/// verdict through [`Attempt::step`] (a fault of the service's gives the attempt back),
/// and report how the check went with [`Attempt::failed`] or [`Attempt::succeeded`]; an
/// attempt dropped without either (its request was abandoned) is reported failed in the
/// background.
#[must_use = "report how the check went"]
pub struct Attempt {
    store: Arc<dyn CounterStore>,
    config: LimitConfig,
    metrics: Arc<Metrics>,
    reserved: Option<Reserved>,
    /// When it was reserved: the time an abandoned attempt is counted at.
    at: i64,
    /// Who made it, and the account it turned out to be about: a lockout it causes is
    /// recorded in the audit trail with them.
    audit: Audit,
    user_id: Option<String>,
}

impl Limiter {
    pub fn new(store: Arc<dyn CounterStore>, config: LimitConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            config,
            metrics,
        }
    }

    /// Reserves one password or code check against `subject` (an identifier; `None`
    /// when only the client address is limited) and the client's address. Refuses with
    /// 429 when either has no attempt left or is locked out; then nothing is counted.
    pub async fn reserve(
        &self,
        subject: Option<&LimitKey>,
        client: Option<IpAddr>,
        audit: Audit,
    ) -> Result<Attempt, Error> {
        let now = audit.at;
        let subject = subject.filter(|_| self.config.login_max_failures > 0);
        let client_key = client
            .filter(|_| self.config.login_max_failures_per_ip > 0)
            .map(LimitKey::client);
        let mut limits = Vec::with_capacity(2);
        let mut names = Vec::with_capacity(2);
        if let Some(key) = subject {
            limits.push(AttemptLimit {
                key: key.as_str(),
                max: self.config.login_max_failures,
            });
            names.push(LimitName::login_account);
        }
        if let Some(key) = &client_key {
            limits.push(AttemptLimit {
                key: key.as_str(),
                max: self.config.login_max_failures_per_ip,
            });
            names.push(LimitName::login_address);
        }
        let reserved = if limits.is_empty() {
            Reserved {
                subject: None,
                client: None,
            }
        } else {
            match self
                .store
                .reserve_attempts(&limits, now, self.config.login_window)
                .await?
            {
                Reservation::Granted { window_starts } => Reserved {
                    subject: subject
                        .cloned()
                        .map(|key| (key, window_starts.first().copied().unwrap_or(now))),
                    client: client_key
                        .map(|key| (key, window_starts.last().copied().unwrap_or(now))),
                },
                Reservation::Refused { limit, counter } => {
                    if let Some(name) = names.get(limit) {
                        self.metrics.limited(*name);
                    }
                    return Err(Error::TooManyRequests {
                        retry_after: self.retry_after(&counter, now),
                    });
                }
            }
        };
        Ok(Attempt {
            store: self.store.clone(),
            config: self.config,
            metrics: self.metrics.clone(),
            reserved: Some(reserved),
            at: now,
            audit,
            user_id: None,
        })
    }

    /// Seconds until a refused key may be tried again: the end of its lockout, or, when
    /// its window is full of attempts still being checked, the lockout that is about to
    /// start (but no later than the end of the window).
    fn retry_after(&self, counter: &Counter, now: i64) -> i64 {
        let wait = if counter.blocked_until > now {
            counter.blocked_until - now
        } else {
            let window_end = counter
                .window_start
                .saturating_add(self.config.login_window)
                - now;
            lockout_seconds(self.config.login_lockout, counter.strikes).min(window_end)
        };
        wait.max(1)
    }

    /// Forgets the counters of `keys`, lockouts and strikes included: a reset code
    /// proved the account's owner.
    pub async fn clear(&self, keys: &[LimitKey]) -> Result<(), Error> {
        let keys: Vec<&str> = keys.iter().map(LimitKey::as_str).collect();
        Ok(self.store.forget_counters(&keys, None).await?)
    }

    /// Forgets the counters of an account's `keys` at an operator's request, recording
    /// `lockout.lifted` for `user_id` with them.
    pub async fn lift(&self, keys: &[LimitKey], audit: &Audit, user_id: &str) -> Result<(), Error> {
        let keys: Vec<&str> = keys.iter().map(LimitKey::as_str).collect();
        Ok(self
            .store
            .forget_counters(&keys, Some((audit, user_id)))
            .await?)
    }

    /// Counts a sign-up from `client`; 429 once the hourly maximum is passed.
    pub async fn signup(&self, client: Option<IpAddr>, now: i64) -> Result<(), Error> {
        let max = self.config.create_per_hour;
        self.per_address(LimitName::signup, client, max, now).await
    }

    /// Counts a passkey sign-in started from `client` (each keeps a ceremony for a few
    /// minutes); 429 once the hourly maximum is passed.
    pub async fn passkey_sign_in(&self, client: Option<IpAddr>, now: i64) -> Result<(), Error> {
        let max = self.config.passkey_sign_ins_per_hour;
        self.per_address(LimitName::passkey_sign_in, client, max, now)
            .await
    }

    /// One event of `limit` from `client` on its hourly counter; 429 past `max`.
    async fn per_address(
        &self,
        limit: LimitName,
        client: Option<IpAddr>,
        max: u32,
        now: i64,
    ) -> Result<(), Error> {
        let Some(ip) = client else {
            return Ok(());
        };
        let key = LimitKey::of(limit.as_str(), &address_group(ip));
        let limited = self.hourly(&key, max, now).await;
        if limited.is_err() {
            self.metrics.limited(limit);
            let event = format!("{}_limited", limit.as_str());
            tracing::warn!(event = %event, client = %ip, "too many requests from one address");
        }
        limited
    }

    /// The hourly limit on e-mails of `kind` to `recipient` (counted whether or not an
    /// account has the address, so the limit reveals nothing): its key and maximum, for
    /// the store to count in the transaction that queues the e-mail.
    pub fn mail_limit(&self, kind: &str, recipient: &str) -> (LimitKey, u32) {
        (LimitKey::mail(kind, recipient), self.config.mails_per_hour)
    }

    /// One event on an hourly counter; 429 past `max` (0: no limit).
    async fn hourly(&self, key: &LimitKey, max: u32, now: i64) -> Result<(), Error> {
        if max == 0 {
            return Ok(());
        }
        let counter = self.store.count_event(key.as_str(), now, HOUR).await?;
        hourly_verdict(&counter, max, now)
    }

    /// What the counters of `keys` (an account's) say at `now`: locked out until when,
    /// and the checks counted in their current windows.
    pub async fn state(&self, keys: &[LimitKey], now: i64) -> Result<LockoutState, Error> {
        let mut state = LockoutState::default();
        for key in keys {
            let Some(counter) = self.store.counter(key.as_str()).await? else {
                continue;
            };
            if counter.blocked_until > now {
                state.locked_until = state.locked_until.max(Some(counter.blocked_until));
            }
            if counter
                .window_start
                .saturating_add(self.config.login_window)
                > now
            {
                state.attempts = state.attempts.max(counter.count);
            }
            state.strikes = state.strikes.max(counter.strikes);
        }
        Ok(state)
    }

    /// Forgets counters that have been quiet for a day.
    pub async fn sweep(&self, now: i64) -> Result<u64, Error> {
        Ok(self
            .store
            .delete_stale_counters(now - COUNTER_RETENTION, now)
            .await?)
    }
}

/// Whether an hourly counter that has just counted an event is within `max`; 429 with
/// the time until its hour is over otherwise.
pub fn hourly_verdict(counter: &Counter, max: u32, now: i64) -> Result<(), Error> {
    if !counter.within(max) {
        return Err(Error::TooManyRequests {
            retry_after: (counter.window_start + HOUR - now).max(1),
        });
    }
    Ok(())
}

impl Attempt {
    /// The attempt turned out to be about this account (a name that has one): a
    /// lockout it causes is recorded with it.
    pub fn concerns(&mut self, user_id: &str) {
        self.user_id = Some(user_id.to_owned());
    }

    /// The check failed: the reservations stay counted, and a key whose window is now
    /// full of failures is locked out (once: the other failures of the same burst find
    /// it locked already and add nothing).
    pub async fn failed(mut self, now: i64) -> Result<(), Error> {
        match self.reserved.take() {
            Some(reserved) => {
                let audit = self.audit.by_the_service();
                let event = (&audit, self.user_id.as_deref());
                record_failure(
                    &*self.store,
                    &self.config,
                    &self.metrics,
                    &reserved,
                    now,
                    event,
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// The check succeeded: the identifier's count starts over, and the address gets
    /// this attempt back.
    pub async fn succeeded(mut self) -> Result<(), Error> {
        let Some(reserved) = self.reserved.take() else {
            return Ok(());
        };
        if reserved.subject.is_none() && reserved.client.is_none() {
            return Ok(());
        }
        let give_back: Vec<(&str, i64)> = reserved
            .client
            .iter()
            .map(|(key, window_start)| (key.as_str(), *window_start))
            .collect();
        self.store
            .attempt_succeeded(
                reserved.subject.as_ref().map(|(key, _)| key.as_str()),
                &give_back,
            )
            .await?;
        Ok(())
    }

    /// Runs one step of the check made before its verdict is known (reading the
    /// account, its second factor or a code, opening a secret, hashing). When the step
    /// fails for a fault of the service's (the database is unavailable, an internal
    /// error), the attempt is given back before the error is answered: nothing about
    /// the secret was learnt, and no one is to be locked out by what the service got
    /// wrong. Any other error leaves the attempt reserved, so dropping it counts it.
    pub async fn step<T, E: Into<Error>>(
        &mut self,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, Error> {
        let err = match work.await {
            Ok(value) => return Ok(value),
            Err(err) => err.into(),
        };
        if err.is_fault() {
            if let Err(release) = self.release().await {
                tracing::warn!(error = %crate::error::chain(&release), "an attempt that could not be checked was not given back");
            }
        }
        Err(err)
    }

    /// The attempt is taken off every count it was reserved under, and nothing else
    /// changes.
    async fn release(&mut self) -> Result<(), Error> {
        let Some(reserved) = self.reserved.take() else {
            return Ok(());
        };
        let give_back: Vec<(&str, i64)> = reserved
            .subject
            .iter()
            .chain(reserved.client.iter())
            .map(|(key, window_start)| (key.as_str(), *window_start))
            .collect();
        if !give_back.is_empty() {
            self.store.attempt_succeeded(None, &give_back).await?;
        }
        Ok(())
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(reserved) = self.reserved.take() else {
            return;
        };
        // The request was abandoned between reserving and reporting (a client that
        // hung up, a timeout): count it as failed, as its reservation already is.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let config = self.config;
        let metrics = self.metrics.clone();
        let now = self.at;
        let audit = self.audit.by_the_service();
        let user_id = self.user_id.take();
        runtime.spawn(async move {
            let event = (&audit, user_id.as_deref());
            if let Err(err) =
                record_failure(&*store, &config, &metrics, &reserved, now, event).await
            {
                tracing::warn!(error = %crate::error::chain(&err), "an abandoned attempt could not be counted");
            }
        });
    }
}

async fn record_failure(
    store: &dyn CounterStore,
    config: &LimitConfig,
    metrics: &Metrics,
    reserved: &Reserved,
    now: i64,
    event: (&Audit, Option<&str>),
) -> Result<(), Error> {
    let keys = reserved
        .subject
        .iter()
        .map(|(key, _)| (key, config.login_max_failures, LimitName::login_account))
        .chain(reserved.client.iter().map(|(key, _)| {
            (
                key,
                config.login_max_failures_per_ip,
                LimitName::login_address,
            )
        }));
    for (key, max, name) in keys {
        let Some(counter) = store.counter(key.as_str()).await? else {
            continue;
        };
        if counter.count < i64::from(max) || counter.blocked_until > now {
            continue;
        }
        let lockout = lockout_seconds(config.login_lockout, counter.strikes);
        if store
            .lock(
                key.as_str(),
                now,
                now.saturating_add(lockout),
                counter.strikes,
                event,
            )
            .await?
        {
            metrics.locked_out(name);
            tracing::warn!(
                event = "lockout",
                lockout_seconds = lockout,
                strikes = counter.strikes + 1,
                "too many failed password or code checks"
            );
        }
    }
    Ok(())
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
        let a = LimitKey::user_id("asim");
        assert_eq!(a.0.len(), 64);
        assert!(!a.0.contains("asim"));
        // Counters already in a database stay theirs: the key is SHA-256 of
        // "<kind>:<value>" in lowercase hex.
        assert_eq!(
            LimitKey::user_id("u1").0,
            "3cd782cdd588d9764ab3265d8a1c0dfde4c38bd2a42b6a7ff0b2ee41ec55553d"
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_ne!(LimitKey::client(ip), LimitKey::signup(ip));
        assert_ne!(LimitKey::username("asim"), LimitKey::user_id("asim"));
        assert_ne!(LimitKey::email("a@b.c"), LimitKey::username("a@b.c"));
        let name = LoginName::parse(Some("Asim".into()), None).unwrap();
        assert_eq!(LimitKey::login_name(&name), LimitKey::username("asim"));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_group(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(address_group(ip("::ffff:203.0.113.9")), "203.0.113.9");
        assert_eq!(
            address_group(ip("2001:db8:1:2:aaaa::1")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            LimitKey::client(ip("2001:db8:1:2::1")),
            LimitKey::client(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            LimitKey::client(ip("2001:db8:1:2::1")),
            LimitKey::client(ip("2001:db8:1:3::1"))
        );
    }
}
