//! The core: every account and session rule, behind one type that each wire surface
//! (the Micro RPC routes today) calls with already-validated domain values.

use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::{
    AccountChanges, LoginName, NewAccount, Password, PasswordChange, Session, User, UserId,
    UserQuery,
};
use crate::error::Error;
use crate::password::{PasswordHasher, Verification};
use crate::session::SessionToken;
use crate::store::{Lookup, NewSession, NewUser, Store, StoreError};

/// The one answer for an unknown account and a wrong password alike, so that Login does
/// not reveal which accounts exist.
pub const BAD_CREDENTIALS: &str = "username, email or password is incorrect";
pub const BAD_OLD_PASSWORD: &str = "old_password is incorrect";
pub const NO_SESSION: &str = "session not found or expired";
pub const NO_USER: &str = "user not found";

/// Expired sessions deleted per statement by the sweeper.
const SWEEP_BATCH: u32 = 1000;

pub struct Users {
    store: Arc<dyn Store>,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    session_ttl: i64,
}

impl Users {
    /// `session_ttl` is in seconds.
    pub fn new(
        store: Arc<dyn Store>,
        hasher: PasswordHasher,
        clock: Arc<dyn Clock>,
        session_ttl: u64,
    ) -> Self {
        Self {
            store,
            hasher,
            clock,
            session_ttl: i64::try_from(session_ttl).unwrap_or(i64::MAX),
        }
    }

    pub async fn create(&self, account: NewAccount) -> Result<User, Error> {
        let NewAccount {
            id,
            username,
            email,
            password,
        } = account;
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
            Ok(())
        } else {
            Err(Error::NotFound(NO_USER))
        }
    }

    pub async fn search(&self, query: &UserQuery) -> Result<Vec<User>, Error> {
        Ok(self.store.search_users(query).await?)
    }

    /// Checks the old password, stores the new one and revokes every session of the user.
    pub async fn update_password(&self, change: PasswordChange) -> Result<(), Error> {
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
        let verified = self
            .hasher
            .verify(old_password, Some(current.password_hash.clone()))
            .await?;
        if verified != Verification::Match {
            return Err(Error::Unauthorized(BAD_OLD_PASSWORD));
        }
        let new_hash = self.hasher.hash(new_password).await?;
        // Compare-and-swap on the hash we verified: if another change won the race, the
        // old password this request proved is no longer the current one.
        let replaced = self
            .store
            .replace_password(
                &current.user.id,
                &current.password_hash,
                &new_hash,
                self.clock.now(),
            )
            .await?;
        if replaced {
            Ok(())
        } else {
            Err(Error::Unauthorized(BAD_OLD_PASSWORD))
        }
    }

    /// Verifies the password and opens a session. An unknown account costs the same hash
    /// verification as a known one and gets the same answer.
    pub async fn login(&self, name: LoginName, password: Password) -> Result<Session, Error> {
        let lookup = match &name {
            LoginName::Username(username) => Lookup::Username(username),
            LoginName::Email(email) => Lookup::Email(email),
        };
        let found = self.store.credentials(lookup).await?;
        let stored_hash = found.as_ref().map(|c| c.password_hash.clone());
        let verified = self.hasher.verify(password, stored_hash).await?;
        let credentials = match (verified, found) {
            (Verification::Match, Some(credentials)) => credentials,
            _ => return Err(Error::Unauthorized(BAD_CREDENTIALS)),
        };
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

    /// Deletes every session that has expired; returns how many.
    pub async fn sweep_expired_sessions(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut total = 0;
        loop {
            let deleted = self.store.delete_expired_sessions(now, SWEEP_BATCH).await?;
            total += deleted;
            if deleted < u64::from(SWEEP_BATCH) {
                return Ok(total);
            }
        }
    }

    /// One database round trip.
    pub async fn health(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}
