//! The core: every account and session rule, behind one type that each wire surface
//! (the Micro RPC routes today) calls with already-validated domain values.

use std::net::IpAddr;
use std::sync::Arc;

use crate::core::clock::Clock;
use crate::core::limits::{
    hourly_verdict, Attempt, LimitConfig, LimitKey, Limiter, LockoutState, HOUR,
};
use crate::core::outbox::Outbox;
use crate::core::password::{CostLimits, PasswordHasher, StoredHash, Verification};
use crate::core::policy::PasswordPolicy;
use crate::core::sealing::SealingKeys;
use crate::domain::{
    AccountChanges, AccountKey, Email, LoginName, MagicLinkTarget, MailText, NewAccount, NewSecret,
    Page, Password, PasswordChange, PasswordReset, RedirectUrl, Session, User, UserId, UserQuery,
};
use crate::domain::{Actor, Audit, AuditPage, EventKind, EventQuery};
use crate::domain::{Purpose, ResetCode};
use crate::domain::{SecretToken, SessionHandle, SignIn, SignInMethod, TokenDigest};
use crate::error::Error;
use crate::metrics::{LimitName, Metrics};
use crate::store::{
    CodeCheck, Credentials, EventLimit, HashChange, Liveness, Lookup, NewMail, NewSession,
    NewToken, NewUser, Queued, Redeemed, Redemption, SessionClient, SessionDetails, SessionRecord,
    Store, StoreError, TotpRecord,
};

pub mod passkeys;
mod second_factor;
mod seen;
pub use passkeys::{passkey_name, Ceremony, PasskeyInfo, PasskeySettings, PasskeySignInFor};
pub use second_factor::{DisableProof, SecondFactors};

/// The one answer for an unknown account and a wrong password alike, so that Login does
/// not reveal which accounts exist.
pub const BAD_CREDENTIALS: &str = "username, email or password is incorrect";
pub const BAD_OLD_PASSWORD: &str = "old_password is incorrect";
pub const NO_SESSION: &str = "session not found or expired";
pub const NO_USER: &str = "user not found";
pub const TOKEN_NOT_FOUND: &str = "token not found";
pub const TOKEN_EXPIRED: &str = "token expired";
pub const NOT_YOUR_ACCOUNT: &str = "a session may act on its own account only";
pub const NO_SUCH_SESSION: &str = "session not found";

/// A session's `last_seen` is written at most once in this many seconds (or in half
/// the idle timeout, when that is shorter).
const LAST_SEEN_INTERVAL: i64 = 60;
/// How long the challenge of a sign-in's second step may be used.
pub const CHALLENGE_TTL: i64 = 300;
/// Most sessions ListSessions shows (newest first).
pub const MAX_LISTED_SESSIONS: u32 = 100;
/// Longest `User-Agent` kept with a session, in bytes.
pub const MAX_USER_AGENT: usize = 256;

/// How long a verification link stays valid.
pub const VERIFICATION_TTL: i64 = 86_400;
/// In an e-mail's text, where the link goes (verification, magic link).
pub const LINK_PLACEHOLDER: &str = "$micro_verification_link";
/// In a reset e-mail's text, where the code goes.
pub const CODE_PLACEHOLDER: &str = "$code";

/// Expired sessions deleted per statement by the sweeper.
const SWEEP_BATCH: u32 = 1000;
/// How long the record of a sent or given-up e-mail (its recipient, kind and state,
/// without its body) is kept, unless its token goes first.
const MAIL_RETENTION: i64 = 7 * 86_400;

/// The core's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds a session lives.
    pub session_ttl: u64,
    /// Seconds a session lives without being used (0: no limit).
    pub session_idle_timeout: u64,
    /// The name authenticator apps show beside the account.
    pub totp_issuer: String,
    /// The relying party of passkeys, besides the public address.
    pub passkeys: PasskeySettings,
    pub password_policy: PasswordPolicy,
    pub limits: LimitConfig,
    pub links: LinkSettings,
    /// Days the audit trail keeps an event (0: for ever).
    pub audit_retention_days: u64,
    /// The most a password hash given to Create may cost to check.
    pub hash_limits: CostLimits,
    /// The keys TOTP secrets are sealed under at rest (none: stored in clear).
    pub sealing: SealingKeys,
}

/// What the e-mailed links are built from.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The service's public base address; verification links point at it.
    pub public_url: String,
    /// Origins (`https://app.example.com`) the verification link may redirect to; empty:
    /// any http or https address.
    pub redirect_allowlist: Vec<String>,
    /// Seconds a magic link stays valid.
    pub magic_link_ttl: i64,
    /// With tenants, this core's tenant: verification links name it (`namespace=`), as
    /// a browser opening them sends no header.
    pub tenant: Option<String>,
}

/// Who calls the core, as far as its rules care.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    /// The client's address, for the per-address limits.
    pub ip: Option<IpAddr>,
    /// Trusted with every method: it presented the admin key, or none is configured.
    pub trusted: bool,
    /// The user whose live session signed the request, when it was signed by a session
    /// and not by the admin key: such a caller acts on that account only.
    pub session_user: Option<String>,
    /// The digest of that session.
    pub session: Option<TokenDigest>,
    /// The `User-Agent` it sent, kept with the sessions it opens.
    pub user_agent: Option<String>,
    /// The request's id (`X-Request-Id`), recorded with what it changes.
    pub request_id: Option<std::sync::Arc<str>>,
    /// Presented the admin key (or is the operator at the command line): the audit
    /// trail's `admin`, rather than `self`.
    pub admin: bool,
}

impl Requester {
    /// Who the audit trail records as acting, at `at`.
    pub fn audit(&self, at: i64) -> Audit {
        Audit {
            actor: if self.admin {
                Actor::Admin
            } else {
                Actor::User
            },
            client_ip: self.ip.map(|ip| ip.to_string()),
            request_id: self.request_id.clone(),
            at,
        }
    }

    /// The one rule of self-service: a caller signed by a session acts on its own
    /// account and no other; any other caller that reached the method may name any.
    pub fn may_act_on(&self, user_id: &str) -> Result<(), Error> {
        match &self.session_user {
            Some(own) if own != user_id => Err(Error::Forbidden(NOT_YOUR_ACCOUNT)),
            _ => Ok(()),
        }
    }

    /// The account a method that may name one acts on: the one named, which a session
    /// may only name as its own, or, when none is named, the session's.
    pub fn account_or_own(
        &self,
        named: Option<String>,
        field: &'static str,
    ) -> Result<UserId, Error> {
        match (named.filter(|id| !id.trim().is_empty()), &self.session_user) {
            (None, Some(own)) => UserId::parse(field, Some(own.clone())),
            (named, _) => {
                let id = UserId::parse(field, named)?;
                self.may_act_on(id.as_str())?;
                Ok(id)
            }
        }
    }

    /// How the sessions this caller opens describe it.
    fn client(&self) -> (Option<String>, Option<&str>) {
        let agent = self.user_agent.as_deref().map(bounded_user_agent);
        (self.ip.map(|ip| ip.to_string()), agent)
    }
}

/// The counters an account's password and code checks count against: its id,
/// username and e-mail address.
fn account_limit_keys(user: &User) -> [LimitKey; 3] {
    [
        LimitKey::user_id(&user.id),
        LimitKey::username(&user.username),
        LimitKey::email(&user.email),
    ]
}

/// A `User-Agent` as a session keeps it: its first [`MAX_USER_AGENT`] bytes, cut at a
/// character boundary.
pub fn bounded_user_agent(agent: &str) -> &str {
    let mut end = agent.len().min(MAX_USER_AGENT);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    &agent[..end]
}

/// What kind of one-time token an e-mail carries.
struct TokenMail {
    purpose: Purpose,
    /// Seconds the token stays valid.
    ttl: i64,
    default_subject: &'static str,
}

/// VerifyToken's answer: a session, or why not.
#[derive(Debug)]
pub enum TokenCheck {
    Valid(Session),
    Invalid(&'static str),
}

pub struct Users {
    store: Arc<dyn Store>,
    /// Shared by every tenant's core.
    hasher: Arc<PasswordHasher>,
    clock: Arc<dyn Clock>,
    limiter: Limiter,
    policy: PasswordPolicy,
    session_ttl: i64,
    /// Seconds a session lives unused; None: no limit.
    idle_timeout: Option<i64>,
    /// Sessions' uses not yet written.
    seen: Arc<seen::SeenLog>,
    totp_issuer: String,
    /// The keys TOTP secrets are sealed under.
    sealing: SealingKeys,
    /// The relying party of passkeys; None when the public address cannot name one.
    webauthn: Option<webauthn_rs::Webauthn>,
    /// The key of the decoy passkeys, read from the store on first use.
    decoys: tokio::sync::OnceCell<passkeys::DecoyKey>,
    outbox: Arc<Outbox>,
    links: LinkSettings,
    metrics: Arc<Metrics>,
    /// Seconds the audit trail keeps an event; None: for ever.
    audit_retention: Option<i64>,
    /// The most a password hash given to Create may cost to check.
    hash_limits: CostLimits,
}

impl Users {
    pub fn new(
        store: Arc<dyn Store>,
        hasher: Arc<PasswordHasher>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        outbox: Arc<Outbox>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limiter: Limiter::new(store.clone(), settings.limits, metrics.clone()),
            audit_retention: (settings.audit_retention_days > 0).then(|| {
                i64::try_from(settings.audit_retention_days)
                    .unwrap_or(i64::MAX / 86_400)
                    .saturating_mul(86_400)
            }),
            hash_limits: settings.hash_limits,
            metrics,
            seen: seen::SeenLog::new(store.clone()),
            store,
            hasher,
            clock,
            policy: settings.password_policy,
            session_ttl: i64::try_from(settings.session_ttl).unwrap_or(i64::MAX),
            idle_timeout: (settings.session_idle_timeout > 0)
                .then(|| i64::try_from(settings.session_idle_timeout).unwrap_or(i64::MAX)),
            totp_issuer: settings.totp_issuer,
            sealing: settings.sealing,
            webauthn: match passkeys::relying_party(&settings.links.public_url, &settings.passkeys)
            {
                Ok(webauthn) => Some(webauthn),
                Err(why) => {
                    // Said once by the service as it starts, not by every admin command.
                    tracing::debug!("passkeys are off: they {why}");
                    None
                }
            },
            decoys: tokio::sync::OnceCell::new(),
            outbox,
            links: settings.links,
        }
    }

    /// Creates an account. A caller that is not trusted may choose its id only in the
    /// form of the ids this service makes (a UUID), so that no one can sign up as
    /// `admin` or as an id an application gives a meaning to. An id that belonged to a
    /// deleted account is never issued again (409).
    pub async fn create(&self, account: NewAccount, caller: Requester) -> Result<User, Error> {
        let NewAccount {
            id,
            username,
            email,
            secret,
            profile,
        } = account;
        let id = match id {
            Some(id) if !caller.trusted && !id.is_uuid() => {
                return Err(Error::invalid(
                    "id",
                    "must be a UUID such as ff3c06de-9e43-41c7-9bab-578f6b4ad32b (other ids need the admin key)",
                ))
            }
            Some(id) => id,
            None => UserId::generate(),
        };
        let password_hash = match secret {
            NewSecret::Password(password) => {
                self.policy
                    .check("password", &password, username.as_str(), email.as_str())?;
                // Before the hash: a flood of sign-ups costs no CPU once limited.
                self.limiter.signup(caller.ip, self.clock.now()).await?;
                self.hasher.hash(password).await?
            }
            NewSecret::Hash(hash) => {
                // Moving a user in from another system, as `import` does: the hash is
                // kept until their first sign-in replaces it with argon2id.
                if !caller.trusted {
                    return Err(Error::invalid(
                        "password_hash",
                        "needs the admin key (give a password instead)",
                    ));
                }
                StoredHash::parse(&hash)
                    .and_then(|parsed| parsed.check_cost(&self.hash_limits))
                    .map_err(|e| Error::invalid("password_hash", e))?;
                self.limiter.signup(caller.ip, self.clock.now()).await?;
                hash
            }
        };
        let user = self
            .store
            .insert_user(
                NewUser {
                    id: &id,
                    username: &username,
                    email: &email,
                    password_hash: &password_hash,
                    profile: &profile,
                    now: self.clock.now(),
                },
                &caller.audit(self.clock.now()),
            )
            .await?;
        tracing::info!(event = "user_created", user_id = %user.id);
        Ok(user)
    }

    pub async fn read(&self, key: &AccountKey) -> Result<User, Error> {
        let lookup = match key {
            AccountKey::Id(id) => Lookup::Id(id),
            AccountKey::Username(username) => Lookup::Username(username),
            AccountKey::Email(email) => Lookup::Email(email),
        };
        self.store
            .user(lookup)
            .await?
            .ok_or(Error::NotFound(NO_USER))
    }

    /// Every user, a page at a time, oldest first.
    pub async fn list(&self, page: Page) -> Result<Vec<User>, Error> {
        Ok(self.store.list_users(page).await?)
    }

    /// Changes the fields given; with none given, answers the user unchanged.
    pub async fn update(
        &self,
        id: &UserId,
        changes: AccountChanges,
        caller: &Requester,
    ) -> Result<User, Error> {
        if changes.is_empty() {
            return self.read(&AccountKey::Id(id.clone())).await;
        }
        self.store
            .update_user(id, &changes, &caller.audit(self.clock.now()))
            .await?
            .ok_or(Error::NotFound(NO_USER))
    }

    pub async fn delete(&self, id: &UserId, caller: &Requester) -> Result<(), Error> {
        if self
            .store
            .delete_user(id, &caller.audit(self.clock.now()))
            .await?
        {
            tracing::info!(event = "user_deleted", user_id = %id.as_str());
            Ok(())
        } else {
            Err(Error::NotFound(NO_USER))
        }
    }

    pub async fn search(&self, query: &UserQuery) -> Result<Vec<User>, Error> {
        Ok(self.store.search_users(query).await?)
    }

    /// Checks `password` for `account` (None: no such account) under an attempt already
    /// reserved, and reports the outcome to the limiter. Every path costs one argon2
    /// verification: an unknown account is checked against a dummy hash.
    async fn check_password(
        &self,
        mut attempt: Attempt,
        account: Option<Credentials>,
        password: Password,
    ) -> Result<Option<(Credentials, Option<String>)>, Error> {
        let stored = account.as_ref().map(|c| c.password_hash.clone());
        let verification = attempt.step(self.hasher.verify(password, stored)).await?;
        match (verification, account) {
            (Verification::Match { rehashed }, Some(account)) => {
                attempt.succeeded().await?;
                Ok(Some((account, rehashed)))
            }
            _ => {
                attempt.failed(self.clock.now()).await?;
                Ok(None)
            }
        }
    }

    /// Replaces a verified hash with `new_hash`, a stronger hash of the same password,
    /// unless the password changed since it was verified.
    async fn rehash(
        &self,
        credentials: &Credentials,
        new_hash: &str,
        caller: &Requester,
    ) -> Result<(), Error> {
        if self
            .store
            .replace_password(
                &credentials.user.id,
                &credentials.password_hash,
                new_hash,
                HashChange::Rehash,
                &caller.audit(self.clock.now()),
            )
            .await?
        {
            tracing::info!(event = "password_rehashed", user_id = %credentials.user.id);
        }
        Ok(())
    }

    /// Checks the old password, stores the new one and revokes every session of the user.
    /// In that order: the limits first, then the old password, then the new password's
    /// rules, so that nothing is learnt about the account without a guess being counted.
    pub async fn update_password(
        &self,
        change: PasswordChange,
        caller: &Requester,
    ) -> Result<(), Error> {
        let client = caller.ip;
        let PasswordChange {
            user_id,
            old_password,
            new_password,
        } = change;
        let key = LimitKey::user_id(user_id.as_str());
        let mut attempt = self
            .limiter
            .reserve(Some(&key), client, caller.audit(self.clock.now()))
            .await?;
        attempt.concerns(user_id.as_str());
        let current = attempt
            .step(self.store.credentials(Lookup::Id(&user_id)))
            .await?;
        let Some(current) = current else {
            // Probing ids costs an attempt, like a wrong password.
            attempt.failed(self.clock.now()).await?;
            return Err(Error::NotFound(NO_USER));
        };
        let Some((current, _)) = self
            .check_password(attempt, Some(current), old_password)
            .await?
        else {
            tracing::warn!(event = "password_change_refused", user_id = %user_id.as_str(), client = ?client);
            return Err(Error::Unauthorized(BAD_OLD_PASSWORD));
        };
        // Compare-and-swap on the hash we verified: if another change won the race, the
        // old password this request proved is no longer the current one.
        if !self
            .replace_password(&current, "new_password", new_password, caller)
            .await?
        {
            return Err(Error::Unauthorized(BAD_OLD_PASSWORD));
        }
        tracing::info!(event = "password_changed", user_id = %current.user.id, "sessions revoked");
        Ok(())
    }

    /// Checks `password` against the policy (as the field `field`) and stores its hash
    /// in place of `current`'s, if that is still the stored one; every session of the
    /// user ends with it. False when the hash changed meanwhile.
    async fn replace_password(
        &self,
        current: &Credentials,
        field: &'static str,
        password: Password,
        caller: &Requester,
    ) -> Result<bool, Error> {
        self.policy.check(
            field,
            &password,
            &current.user.username,
            &current.user.email,
        )?;
        let new_hash = self.hasher.hash(password).await?;
        Ok(self
            .store
            .replace_password(
                &current.user.id,
                &current.password_hash,
                &new_hash,
                HashChange::NewPassword {
                    now: self.clock.now(),
                },
                &caller.audit(self.clock.now()),
            )
            .await?)
    }

    /// The operator's password change (`users-service user set-password`): no old
    /// password, but the same policy, and every session of the user ends. A change that
    /// lands meanwhile wins; then this one reports a conflict rather than overwrite it.
    pub async fn set_password(
        &self,
        id: &UserId,
        password: Password,
        caller: &Requester,
    ) -> Result<(), Error> {
        let current = self
            .store
            .credentials(Lookup::Id(id))
            .await?
            .ok_or(Error::NotFound(NO_USER))?;
        if !self
            .replace_password(&current, "password", password, caller)
            .await?
        {
            return Err(Error::internal(
                "the password changed meanwhile; run the command again",
            ));
        }
        tracing::info!(event = "password_set", user_id = %current.user.id, "sessions revoked");
        Ok(())
    }

    /// Forgets the failed password and code checks counted against the account (by its
    /// id, username and e-mail address), lockouts included, and records it
    /// (`lockout.lifted`). Per-address counters are left alone: they belong to the
    /// client, not to the account.
    pub async fn unlock(&self, id: &UserId, caller: &Requester) -> Result<(), Error> {
        let user = self.read(&AccountKey::Id(id.clone())).await?;
        self.limiter
            .lift(
                &account_limit_keys(&user),
                &caller.audit(self.clock.now()),
                &user.id,
            )
            .await?;
        tracing::info!(event = "user_unlocked", user_id = %user.id);
        Ok(())
    }

    /// Whether the account is locked out, and how many checks its identifiers have
    /// counted in their current windows.
    pub async fn lockout(&self, id: &UserId) -> Result<LockoutState, Error> {
        let user = self.read(&AccountKey::Id(id.clone())).await?;
        self.limiter
            .state(&account_limit_keys(&user), self.clock.now())
            .await
    }

    /// The core's clock, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Verifies the password and opens a session. An unknown account costs the same hash
    /// verification as a known one, meets the same limits and gets the same answer.
    pub async fn login(
        &self,
        name: LoginName,
        password: Password,
        caller: &Requester,
    ) -> Result<Session, Error> {
        let client = caller.ip;
        let lookup = match &name {
            LoginName::Username(username) => Lookup::Username(username),
            LoginName::Email(email) => Lookup::Email(email),
        };
        // Counted under the name as typed, whether or not it has an account.
        let mut attempt = self
            .limiter
            .reserve(
                Some(&LimitKey::login_name(&name)),
                client,
                caller.audit(self.clock.now()),
            )
            .await?;
        let found = attempt.step(self.store.credentials(lookup)).await?;
        let known_id = found.as_ref().map(|c| c.user.id.clone());
        if let Some(id) = &known_id {
            attempt.concerns(id);
        }
        let Some((credentials, rehashed)) = self.check_password(attempt, found, password).await?
        else {
            tracing::warn!(event = "login_failed", user_id = ?known_id, client = ?client);
            self.record(caller, EventKind::LoginFailed, known_id.as_deref())
                .await?;
            return Err(Error::Unauthorized(BAD_CREDENTIALS));
        };
        // `rehashed`: the hash was made with weaker parameters than configured, or by
        // another system. The new one is stored with the session, in its transaction.
        if self.has_second_factor(&credentials.user.id).await? {
            // No session yet: the second step does not see the password, so store the
            // new hash now (if nothing changed the password meanwhile).
            if let Some(new_hash) = &rehashed {
                self.rehash(&credentials, new_hash, caller).await?;
            }
            return Err(self
                .challenge(&credentials.user.id, SignInMethod::Password)
                .await?);
        }
        let token = SecretToken::generate();
        let created = self.clock.now();
        let expires = created.saturating_add(self.session_ttl);
        let (ip, user_agent) = caller.client();
        // The session is written only if the hash is still the one just verified, so a
        // password change (which revokes sessions) cannot be outrun by a login that
        // proved the old password; and only while the user has no second factor.
        let opened = self
            .store
            .insert_session(
                NewSession {
                    digest: &token.digest(),
                    user_id: &credentials.user.id,
                    created,
                    expires,
                    client: SessionClient {
                        ip: ip.as_deref(),
                        user_agent,
                    },
                    sign_in: SignIn::one_step(SignInMethod::Password),
                },
                &credentials.password_hash,
                rehashed.as_deref(),
                &caller.audit(created),
            )
            .await?;
        if opened && rehashed.is_some() {
            tracing::info!(event = "password_rehashed", user_id = %credentials.user.id);
        }
        if !opened {
            // TOTP was confirmed since the check above, or the password changed.
            if self.has_second_factor(&credentials.user.id).await? {
                return Err(self
                    .challenge(&credentials.user.id, SignInMethod::Password)
                    .await?);
            }
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
    pub async fn logout(&self, token: &SecretToken, caller: &Requester) -> Result<(), Error> {
        Ok(self
            .store
            .delete_session(&token.digest(), &caller.audit(self.clock.now()))
            .await?)
    }

    pub async fn read_session(&self, token: SecretToken) -> Result<Session, Error> {
        let record = self
            .live_session(&token.digest())
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

    /// The user a live session belongs to, for a request that the session signs. None
    /// for an unknown, expired or idle session.
    pub async fn session_user(&self, token: &SecretToken) -> Result<Option<String>, Error> {
        Ok(self
            .live_session(&token.digest())
            .await?
            .map(|record| record.user_id))
    }

    /// When a session must have been used since, and now, to be live.
    fn liveness(&self) -> Liveness {
        let now = self.clock.now();
        Liveness {
            now,
            seen_since: self
                .idle_timeout
                .map_or(i64::MIN, |idle| now.saturating_sub(idle)),
        }
    }

    /// The live session with this digest; notes that it was seen now, at most once a
    /// minute (or in half the idle timeout), so that a read-heavy app does not turn
    /// every lookup into a write. The note is written a moment later (see `seen`).
    async fn live_session(&self, digest: &TokenDigest) -> Result<Option<SessionRecord>, Error> {
        let live = self.liveness();
        let record = match self.store.session(digest, live).await? {
            Some(record) => record,
            // Idle as the store has it, but used here since: a use not yet written.
            // Without an idle timeout no note can change the answer, and an unknown
            // token does not take the notes' lock.
            None if self.idle_timeout.is_some()
                && self
                    .seen
                    .pending(digest)
                    .is_some_and(|at| at > live.seen_since) =>
            {
                let unexpired = Liveness {
                    seen_since: i64::MIN,
                    ..live
                };
                match self.store.session(digest, unexpired).await? {
                    Some(record) => record,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let interval = self.idle_timeout.map_or(LAST_SEEN_INTERVAL, |idle| {
            (idle / 2).clamp(1, LAST_SEEN_INTERVAL)
        });
        let since = live.now.saturating_sub(interval);
        if record.last_seen.is_some_and(|seen| seen > since) {
            return Ok(Some(record));
        }
        // Another replica sees only what is written: a session that would go idle there
        // soon has its use written now.
        let last_use = record.last_seen.unwrap_or(record.created);
        let urgent = self.idle_timeout.is_some_and(|idle| {
            last_use.saturating_add(idle) <= live.now.saturating_add(seen::URGENT)
        });
        if urgent {
            // Noting the use is not worth failing the request for: a read-only or full
            // database still serves a session.
            if let Err(err) = self
                .store
                .touch_sessions(std::slice::from_ref(digest), live.now)
                .await
            {
                tracing::warn!(error = %err, "a session's last use was not recorded");
            }
        } else {
            self.seen.note(digest, live.now, since);
        }
        Ok(Some(record))
    }

    /// Writes the sessions' uses noted and not yet written (as a clean shutdown does).
    /// A failure is logged, not returned: a note not written is not worth failing a
    /// listing, a sweep or a stop for (a read-only database still lists sessions).
    pub async fn write_session_uses(&self) {
        if let Err(err) = self.seen.flush().await {
            tracing::warn!(error = %crate::error::chain(&err), "sessions' last use was not recorded");
        }
    }

    /// The user's live sessions, newest first (at most [`MAX_LISTED_SESSIONS`]).
    pub async fn list_sessions(&self, id: &UserId) -> Result<Vec<SessionDetails>, Error> {
        self.read(&AccountKey::Id(id.clone())).await?;
        self.write_session_uses().await;
        Ok(self
            .store
            .user_sessions(id.as_str(), self.liveness(), MAX_LISTED_SESSIONS)
            .await?)
    }

    /// Ends one of the user's sessions, named by its handle.
    pub async fn revoke_session(
        &self,
        id: &UserId,
        handle: &SessionHandle,
        caller: &Requester,
    ) -> Result<(), Error> {
        if self
            .store
            .revoke_session(id.as_str(), handle, &caller.audit(self.clock.now()))
            .await?
        {
            tracing::info!(event = "session_revoked", user_id = %id.as_str());
            Ok(())
        } else {
            Err(Error::NotFound(NO_SUCH_SESSION))
        }
    }

    /// Ends every session of the user, or every one but `keep`.
    pub async fn logout_all(
        &self,
        id: &UserId,
        keep: Option<&TokenDigest>,
        caller: &Requester,
    ) -> Result<(), Error> {
        // Checked first so an unknown user is a 404, as for the other per-user methods.
        self.read(&AccountKey::Id(id.clone())).await?;
        let ended = self
            .store
            .delete_sessions(id.as_str(), keep, &caller.audit(self.clock.now()))
            .await?;
        tracing::info!(event = "logged_out_everywhere", user_id = %id.as_str(), sessions = ended);
        Ok(())
    }

    /// Whether `origin` (`scheme://host[:port]`) is this service's own public address.
    pub fn is_own_origin(&self, origin: &str) -> bool {
        url::Url::parse(&self.links.public_url)
            .is_ok_and(|own| own.origin().ascii_serialization() == origin)
    }

    /// The service's public address, as links in e-mails use it.
    pub fn public_url(&self) -> &str {
        &self.links.public_url
    }

    /// How long a new session lives, in seconds.
    pub fn session_ttl(&self) -> i64 {
        self.session_ttl
    }

    /// Whether a browser may be sent to `url` after verification (its own pages always).
    pub fn check_redirect(&self, field: &'static str, url: &RedirectUrl) -> Result<(), Error> {
        let allowed = &self.links.redirect_allowlist;
        if allowed.is_empty()
            || allowed.iter().any(|origin| *origin == url.origin())
            || self.is_own_origin(&url.origin())
        {
            Ok(())
        } else {
            Err(Error::invalid(
                field,
                "is not an allowed redirect address (USERS_REDIRECT_ALLOWLIST)",
            ))
        }
    }

    /// E-mails a link that verifies the address, and then sends the browser to
    /// `redirect` (or `failure` when the link is no longer valid). An address without an
    /// account gets nothing, and the answer is the same.
    pub async fn send_verification_email(
        &self,
        email: Email,
        text: MailText,
        redirect: RedirectUrl,
        failure: RedirectUrl,
    ) -> Result<(), Error> {
        self.check_redirect("redirect_url", &redirect)?;
        self.check_redirect("failure_redirect_url", &failure)?;
        let mut link = url::Url::parse(&format!(
            "{}/v1/user/verify",
            self.links.public_url.trim_end_matches('/')
        ))
        .map_err(Error::internal)?;
        let token = SecretToken::generate();
        link.query_pairs_mut()
            .append_pair("token", token.expose())
            .append_pair("redirectUrl", redirect.as_str())
            .append_pair("failureRedirectUrl", failure.as_str());
        if let Some(tenant) = &self.links.tenant {
            link.query_pairs_mut().append_pair("namespace", tenant);
        }
        let body = text.text.replace(LINK_PLACEHOLDER, link.as_str());
        let kind = TokenMail {
            purpose: Purpose::VerifyEmail,
            ttl: VERIFICATION_TTL,
            default_subject: "Verify your e-mail address",
        };
        self.send_token_mail(&email, &text, kind, |_| (token.digest(), body))
            .await
    }

    /// Uses a verification token: marks the address verified.
    pub async fn verify_email(&self, token: SecretToken, caller: &Requester) -> Result<(), Error> {
        match self
            .store
            .redeem_token(
                &token.digest(),
                Purpose::VerifyEmail,
                &caller.audit(self.clock.now()),
                Redemption::VerifyEmail,
            )
            .await?
        {
            Redeemed::Done { user_id } => {
                tracing::info!(event = "email_verified", user_id = %user_id);
                Ok(())
            }
            Redeemed::Expired => Err(Error::invalid("token", "has expired")),
            Redeemed::NotFound | Redeemed::SecondStepNeeded { .. } | Redeemed::FactorRefused => {
                Err(Error::invalid("token", "is unknown or already used"))
            }
        }
    }

    /// E-mails a password reset code valid for `expiration` seconds. An address without
    /// an account gets nothing, and the answer is the same.
    pub async fn send_password_reset_email(
        &self,
        email: Email,
        text: MailText,
        expiration: i64,
    ) -> Result<(), Error> {
        let code = ResetCode::generate();
        let body = text.text.replace(CODE_PLACEHOLDER, code.expose());
        let kind = TokenMail {
            purpose: Purpose::ResetPassword,
            ttl: expiration,
            default_subject: "Reset your password",
        };
        // A code's digest is bound to its account (see `ResetCode::digest`).
        self.send_token_mail(&email, &text, kind, |user_id| (code.digest(user_id), body))
            .await
    }

    /// Sets a new password with a reset code, which is used up, and ends every session.
    ///
    /// A wrong code counts against the client's address (not against the account's
    /// lockouts, so no one can lock a person out of their own recovery) and against the
    /// code itself, which is void after [`crate::domain::RESET_CODE_MAX_WRONG`] wrong
    /// tries. A right one works even while the account is locked out, and lifts the
    /// lockouts of its username, e-mail address and id.
    pub async fn reset_password(
        &self,
        reset: PasswordReset,
        caller: &Requester,
    ) -> Result<(), Error> {
        let client = caller.ip;
        const BAD_CODE: &str = "is wrong, already used or expired";
        let PasswordReset {
            email,
            code,
            new_password,
        } = reset;
        let now = self.clock.now();
        let mut attempt = self
            .limiter
            .reserve(None, client, caller.audit(now))
            .await?;
        let account = attempt
            .step(self.store.credentials(Lookup::Email(&email)))
            .await?;
        let Some(account) = account else {
            attempt.failed(now).await?;
            return Err(Error::invalid("code", BAD_CODE));
        };
        // Bound to the account (see `ResetCode::digest`); no hashing, so a wrong code
        // costs no CPU.
        let digest = ResetCode::typed(&code).digest(&account.user.id);
        if attempt
            .step(self.store.check_reset_code(&account.user.id, &digest, now))
            .await?
            == CodeCheck::Wrong
        {
            attempt.failed(now).await?;
            return Err(Error::invalid("code", BAD_CODE));
        }
        attempt.succeeded().await?;
        self.policy.check(
            "new_password",
            &new_password,
            &account.user.username,
            &account.user.email,
        )?;
        let hash = self.hasher.hash(new_password).await?;
        match self
            .store
            .redeem_token(
                &digest,
                Purpose::ResetPassword,
                &caller.audit(self.clock.now()),
                Redemption::NewPassword { hash: &hash },
            )
            .await?
        {
            Redeemed::Done { user_id } => {
                self.limiter
                    .clear(&[
                        LimitKey::username(&account.user.username),
                        LimitKey::email(&account.user.email),
                        LimitKey::user_id(&user_id),
                    ])
                    .await?;
                tracing::info!(event = "password_reset", user_id = %user_id, "sessions revoked");
                Ok(())
            }
            // Another request used the code between the check and now, or wrong codes
            // voided it meanwhile.
            Redeemed::Expired
            | Redeemed::NotFound
            | Redeemed::SecondStepNeeded { .. }
            | Redeemed::FactorRefused => Err(Error::invalid("code", BAD_CODE)),
        }
    }

    /// E-mails a link to the app's page `https://<address>/<endpoint>/<token>`, whose
    /// token VerifyToken turns into a session once. An address without an account gets
    /// nothing, and the answer is the same.
    pub async fn send_magic_link(
        &self,
        email: Email,
        text: MailText,
        target: MagicLinkTarget,
    ) -> Result<(), Error> {
        let token = SecretToken::generate();
        let body = text
            .text
            .replace(LINK_PLACEHOLDER, &target.link(token.expose()));
        let kind = TokenMail {
            purpose: Purpose::MagicLink,
            ttl: self.links.magic_link_ttl,
            default_subject: "Your sign-in link",
        };
        self.send_token_mail(&email, &text, kind, |_| (token.digest(), body))
            .await
    }

    /// Uses a magic-link token: a new session the first time, and why not afterwards.
    pub async fn verify_token(
        &self,
        token: SecretToken,
        caller: &Requester,
    ) -> Result<TokenCheck, Error> {
        let session = SecretToken::generate();
        let challenge = SecretToken::generate();
        let now = self.clock.now();
        let expires = now.saturating_add(self.session_ttl);
        let challenge_expires = now.saturating_add(CHALLENGE_TTL);
        let (ip, user_agent) = caller.client();
        match self
            .store
            .redeem_token(
                &token.digest(),
                Purpose::MagicLink,
                &caller.audit(now),
                Redemption::OpenSession {
                    digest: &session.digest(),
                    expires,
                    client: SessionClient {
                        ip: ip.as_deref(),
                        user_agent,
                    },
                    sign_in: SignIn::one_step(SignInMethod::MagicLink),
                    // Filled in with the token's user by the store.
                    challenge: NewToken {
                        digest: &challenge.digest(),
                        user_id: "",
                        purpose: Purpose::SecondStep(SignInMethod::MagicLink),
                        created: now,
                        expires: challenge_expires,
                    },
                },
            )
            .await?
        {
            Redeemed::Done { user_id } => {
                tracing::info!(event = "magic_link_login", user_id = %user_id);
                Ok(TokenCheck::Valid(self.read_session(session).await?))
            }
            Redeemed::SecondStepNeeded { user_id } => {
                tracing::info!(event = "second_step_asked", user_id = %user_id, method = "magic_link");
                Err(Error::SecondFactorRequired {
                    challenge: challenge.into_secret(),
                    expires: challenge_expires,
                })
            }
            Redeemed::Expired => Ok(TokenCheck::Invalid(TOKEN_EXPIRED)),
            Redeemed::NotFound | Redeemed::FactorRefused => {
                Ok(TokenCheck::Invalid(TOKEN_NOT_FOUND))
            }
        }
    }

    /// The common part of the three e-mails: find the account, make the token that
    /// `secret` makes for it (its digest, and the message body that carries it), and
    /// hand both to the store, which counts the e-mail against the per-recipient limit
    /// and, within it, stores the token (replacing the user's previous one of this
    /// purpose) and queues the message, in one transaction. The sender delivers it.
    ///
    /// An address without an account queues nothing, and the caller cannot tell: the
    /// answer is the same, and so is the work (one lookup, one transaction), whether
    /// or not the address has an account and whether or not the SMTP server is up.
    async fn send_token_mail(
        &self,
        email: &Email,
        text: &MailText,
        kind: TokenMail,
        secret: impl FnOnce(&str) -> (TokenDigest, String),
    ) -> Result<(), Error> {
        let TokenMail {
            purpose,
            ttl,
            default_subject,
        } = kind;
        let now = self.clock.now();
        let user_id = self
            .store
            .user(Lookup::Email(email))
            .await?
            .map(|user| user.id);
        let made = user_id.as_deref().map(|id| (id, secret(id)));
        let subject = text.subject.as_deref().unwrap_or(default_subject);
        let mail = made.as_ref().map(|(user_id, (digest, body))| NewMail {
            token: NewToken {
                digest,
                user_id,
                purpose,
                created: now,
                expires: now.saturating_add(ttl),
            },
            recipient: email.as_str(),
            from_name: text.from_name.as_deref(),
            subject,
            body,
        });
        let (key, max) = self.limiter.mail_limit(purpose.as_str(), email.as_str());
        let limit = EventLimit {
            key: key.as_str(),
            max,
            now,
            window: HOUR,
        };
        match self.store.queue_mail(limit, mail).await? {
            Queued::Limited(counter) => {
                self.metrics.limited(LimitName::mail);
                tracing::warn!(
                    event = "mail_limited",
                    kind = purpose.as_str(),
                    "too many e-mails to one address"
                );
                hourly_verdict(&counter, max, now)
            }
            Queued::Queued => {
                let user_id = user_id.unwrap_or_default();
                tracing::info!(event = "mail_queued", kind = purpose.as_str(), user_id = %user_id);
                self.outbox.wake();
                Ok(())
            }
            Queued::Counted => {
                tracing::info!(
                    event = "mail_skipped",
                    kind = purpose.as_str(),
                    "no account has this address"
                );
                Ok(())
            }
        }
    }

    /// Deletes every session, one-time token and passkey sign-in ceremony that has
    /// expired and every rate-limit counter that has been quiet for a day; returns how
    /// many sessions went.
    pub async fn sweep(&self) -> Result<u64, Error> {
        // A session kept alive by a use noted here is not swept as idle.
        self.write_session_uses().await;
        let live = self.liveness();
        let now = live.now;
        let mut total = 0;
        loop {
            let deleted = self
                .store
                .delete_expired_sessions(live, SWEEP_BATCH)
                .await?;
            total += deleted;
            if deleted < u64::from(SWEEP_BATCH) {
                break;
            }
        }
        while self.store.delete_expired_tokens(now, SWEEP_BATCH).await? >= u64::from(SWEEP_BATCH) {}
        while self
            .store
            .delete_expired_passkey_sign_ins(now, SWEEP_BATCH)
            .await?
            >= u64::from(SWEEP_BATCH)
        {}
        let old_mail = now.saturating_sub(MAIL_RETENTION);
        while self.store.delete_old_mail(old_mail, SWEEP_BATCH).await? >= u64::from(SWEEP_BATCH) {}
        self.limiter.sweep(now).await?;
        if let Some(retention) = self.audit_retention {
            let before = now.saturating_sub(retention);
            while self.store.delete_old_events(before, SWEEP_BATCH).await? >= u64::from(SWEEP_BATCH)
            {
            }
        }
        Ok(total)
    }

    /// Records an event that changed nothing (so it has no transaction to go with): a
    /// failed login, a refused admin key. Its outcome is `failure`.
    pub async fn record(
        &self,
        caller: &Requester,
        kind: EventKind,
        user_id: Option<&str>,
    ) -> Result<(), Error> {
        Ok(self
            .store
            .record_event(&caller.audit(self.clock.now()), kind, user_id, "failure")
            .await?)
    }

    /// The audit trail's events that match `query`, newest first.
    pub async fn audit_events(&self, query: &EventQuery) -> Result<AuditPage, Error> {
        Ok(AuditPage::of(self.store.events(query).await?, query))
    }

    /// The e-mail sender, which the server runs.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
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
