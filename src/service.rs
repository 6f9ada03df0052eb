//! The core: every account and session rule, behind one type that each wire surface
//! (the Micro RPC routes today) calls with already-validated domain values.

use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::{
    AccountChanges, LoginName, NewAccount, Password, PasswordChange, Session, User, UserId,
    UserQuery,
};
use crate::error::Error;
use crate::limits::{LimitConfig, LimitKey, Limiter};
use crate::password::{PasswordHasher, Verification};
use crate::policy::PasswordPolicy;
use crate::session::SessionToken;
use crate::store::{Credentials, HashChange, Lookup, NewSession, NewUser, Store, StoreError};

/// The one answer for an unknown account and a wrong password alike, so that Login does
/// not reveal which accounts exist.
pub const BAD_CREDENTIALS: &str = "username, email or password is incorrect";
pub const BAD_OLD_PASSWORD: &str = "old_password is incorrect";
pub const NO_SESSION: &str = "session not found or expired";
pub const NO_USER: &str = "user not found";

/// Expired sessions deleted per statement by the sweeper.
const SWEEP_BATCH: u32 = 1000;

/// The core's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seconds a session lives.
    pub session_ttl: u64,
    pub password_policy: PasswordPolicy,
    pub limits: LimitConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            session_ttl: crate::config::DEFAULT_SESSION_TTL,
            password_policy: PasswordPolicy::default(),
            limits: LimitConfig::default(),
        }
    }
}

pub struct Users {
    store: Arc<dyn Store>,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    limiter: Limiter,
    policy: PasswordPolicy,
    session_ttl: i64,
}

impl Users {
    pub fn new(
        store: Arc<dyn Store>,
        hasher: PasswordHasher,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            limiter: Limiter::new(store.clone(), settings.limits),
            store,
            hasher,
            clock,
            policy: settings.password_policy,
            session_ttl: i64::try_from(settings.session_ttl).unwrap_or(i64::MAX),
        }
    }

    /// Creates an account. `client` is the caller's address, for the sign-up limit.
    pub async fn create(&self, account: NewAccount, client: Option<IpAddr>) -> Result<User, Error> {
        let NewAccount {
            id,
            username,
            email,
            password,
        } = account;
        self.policy
            .check("password", &password, username.as_str(), email.as_str())?;
        // Before the hash: a flood of sign-ups costs no CPU once limited.
        self.limiter.signup(client, self.clock.now()).await?;
        let password_hash = self.hasher.hash(password).await?;
        let user = self
            .store
            .insert_user(NewUser {
                id: &id,
                username: &username,
                email: &email,
                password_hash: &password_hash,
                now: self.clock.now(),
            })
            .await?;
        tracing::info!(event = "user_created", user_id = %user.id);
        Ok(user)
    }

    pub async fn read(&self, id: &UserId) -> Result<User, Error> {
        self.store.user(id).await?.ok_or(Error::NotFound(NO_USER))
    }

    /// Changes the fields given; with none given, answers the user unchanged.
    pub async fn update(&self, id: &UserId, changes: AccountChanges) -> Result<User, Error> {
        if changes.is_empty() {
            return self.read(id).await;
        }
        self.store
            .update_user(id, &changes, self.clock.now())
            .await?
            .ok_or(Error::NotFound(NO_USER))
    }

    pub async fn delete(&self, id: &UserId) -> Result<(), Error> {
        if self.store.delete_user(id).await? {
            tracing::info!(event = "user_deleted", user_id = %id.as_str());
            Ok(())
        } else {
            Err(Error::NotFound(NO_USER))
        }
    }

    pub async fn search(&self, query: &UserQuery) -> Result<Vec<User>, Error> {
        Ok(self.store.search_users(query).await?)
    }

    /// Checks `password` for `account` (None: no such account) under the brute-force
    /// limits, and returns the account when it matches. Every path costs one hash.
    async fn check_password(
        &self,
        account: Option<Credentials>,
        key: &LimitKey,
        password: Password,
        client: Option<IpAddr>,
    ) -> Result<Option<(Credentials, Option<String>)>, Error> {
        let now = self.clock.now();
        self.limiter
            .check_password_attempt(key, client, now)
            .await?;
        let stored = account.as_ref().map(|c| c.password_hash.clone());
        match (self.hasher.verify(password, stored).await?, account) {
            (Verification::Match { rehashed }, Some(account)) => {
                self.limiter.password_succeeded(key).await?;
                Ok(Some((account, rehashed)))
            }
            _ => {
                self.limiter.password_failed(key, client, now).await?;
                Ok(None)
            }
        }
    }

    /// Checks the old password, stores the new one and revokes every session of the user.
    pub async fn update_password(
        &self,
        change: PasswordChange,
        client: Option<IpAddr>,
    ) -> Result<(), Error> {
        let PasswordChange {
            user_id,
            old_password,
            new_password,
        } = change;
        let current = self
            .store
            .credentials(Lookup::Id(&user_id))
            .await?
            .ok_or(Error::NotFound(NO_USER))?;
        self.policy.check(
            "new_password",
            &new_password,
            &current.user.username,
            &current.user.email,
        )?;
        let key = LimitKey::account(&current.user.id);
        let Some((current, _)) = self
            .check_password(Some(current), &key, old_password, client)
            .await?
        else {
            tracing::warn!(event = "password_change_refused", user_id = %user_id.as_str(), client = ?client);
            return Err(Error::Unauthorized(BAD_OLD_PASSWORD));
        };
        let new_hash = self.hasher.hash(new_password).await?;
        // Compare-and-swap on the hash we verified: if another change won the race, the
        // old password this request proved is no longer the current one.
        let replaced = self
            .store
            .replace_password(
                &current.user.id,
                &current.password_hash,
                &new_hash,
                HashChange::NewPassword {
                    now: self.clock.now(),
                },
            )
            .await?;
        if !replaced {
            return Err(Error::Unauthorized(BAD_OLD_PASSWORD));
        }
        tracing::info!(event = "password_changed", user_id = %current.user.id, "sessions revoked");
        Ok(())
    }

    /// Verifies the password and opens a session. An unknown account costs the same hash
    /// verification as a known one, meets the same limits and gets the same answer.
    pub async fn login(
        &self,
        name: LoginName,
        password: Password,
        client: Option<IpAddr>,
    ) -> Result<Session, Error> {
        let lookup = match &name {
            LoginName::Username(username) => Lookup::Username(username),
            LoginName::Email(email) => Lookup::Email(email),
        };
        let found = self.store.credentials(lookup).await?;
        let key = match &found {
            Some(account) => LimitKey::account(&account.user.id),
            None => LimitKey::login_name(&name),
        };
        let known_id = found.as_ref().map(|c| c.user.id.clone());
        let Some((mut credentials, rehashed)) =
            self.check_password(found, &key, password, client).await?
        else {
            tracing::warn!(event = "login_failed", user_id = ?known_id, client = ?client);
            return Err(Error::Unauthorized(BAD_CREDENTIALS));
        };
        if let Some(new_hash) = rehashed {
            // Stronger parameters are configured than this hash was made with: store the
            // new hash if nothing changed the password meanwhile.
            if self
                .store
                .replace_password(
                    &credentials.user.id,
                    &credentials.password_hash,
                    &new_hash,
                    HashChange::Rehash,
                )
                .await?
            {
                tracing::info!(event = "password_rehashed", user_id = %credentials.user.id);
                credentials.password_hash = new_hash;
            }
        }
        let token = SessionToken::generate();
        let created = self.clock.now();
        let expires = created.saturating_add(self.session_ttl);
        // The session is written only if the hash is still the one just verified, so a
        // password change (which revokes sessions) cannot be outrun by a login that
        // proved the old password.
        let opened = self
            .store
            .insert_session(
                NewSession {
                    digest: &token.digest(),
                    user_id: &credentials.user.id,
                    created,
                    expires,
                },
                &credentials.password_hash,
            )
            .await?;
        if !opened {
            return Err(Error::Unauthorized(BAD_CREDENTIALS));
        }
        let user = credentials.user;
        Ok(Session {
            id: token,
            user_id: user.id,
            username: user.username,
            email: user.email,
            created,
            expires,
        })
    }

    /// Ends a session. Unknown sessions are fine: logging out twice is not an error.
    pub async fn logout(&self, token: &SessionToken) -> Result<(), Error> {
        Ok(self.store.delete_session(&token.digest()).await?)
    }

    pub async fn read_session(&self, token: SessionToken) -> Result<Session, Error> {
        let record = self
            .store
            .session(&token.digest(), self.clock.now())
            .await?
            .ok_or(Error::Unauthorized(NO_SESSION))?;
        Ok(Session {
            id: token,
            user_id: record.user_id,
            username: record.username,
            email: record.email,
            created: record.created,
            expires: record.expires,
        })
    }

    /// Deletes every session that has expired and every rate-limit counter that has
    /// been quiet for a day; returns how many sessions went.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let now = self.clock.now();
        let mut total = 0;
        loop {
            let deleted = self.store.delete_expired_sessions(now, SWEEP_BATCH).await?;
            total += deleted;
            if deleted < u64::from(SWEEP_BATCH) {
                break;
            }
        }
        self.limiter.sweep(now).await?;
        Ok(total)
    }

    /// argon2 computations (hashes and verifications) since start.
    pub fn argon2_runs(&self) -> u64 {
        self.hasher.argon2_runs()
    }

    /// One database round trip.
    pub async fn health(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}
