//! Persistence. The core talks to a [`Store`]; [`SqlStore`] implements it once, in SQL
//! that both SQLite and PostgreSQL run unchanged, so both backends pass the same tests.
//!
//! Writes that must not interleave with a concurrent change are conditional statements
//! (compare-and-swap on the password hash) rather than read-then-write transactions, so
//! they stay correct across several replicas on one database.

mod sql;
mod url;

pub use sql::{PoolConfig, SchemaError, SqlStore};
pub use url::{tenant_schema, DatabaseUrl};

use async_trait::async_trait;

use crate::domain::Purpose;
use crate::domain::{AccountChanges, Email, Page, Profile, User, UserId, UserQuery, Username};
use crate::domain::{Audit, AuditEvent, EventKind, EventQuery};
use crate::domain::{SessionHandle, SignIn, TokenDigest};
use crate::error::{FailureKind, Outage, StoreFailure, Unique};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write.
    #[error("{0} is already taken")]
    Conflict(Unique),
    /// The database could not be reached or is refusing writes (busy, read-only, full);
    /// nothing was changed.
    #[error("database unavailable ({0})")]
    Unavailable(Outage, #[source] sqlx::Error),
    #[error("database error")]
    Other(#[source] sqlx::Error),
}

impl StoreError {
    /// Why the database cannot serve the request now, if that is what went wrong.
    pub fn outage(&self) -> Option<Outage> {
        match self {
            Self::Unavailable(outage, _) => Some(*outage),
            _ => None,
        }
    }
}

impl StoreFailure for StoreError {
    fn kind(&self) -> FailureKind {
        match self {
            Self::Conflict(field) => FailureKind::Conflict(*field),
            Self::Unavailable(outage, _) => FailureKind::Unavailable(*outage),
            Self::Other(_) => FailureKind::Fault,
        }
    }
}

/// How to find an account whose password is to be checked.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    Id(&'a UserId),
    Username(&'a Username),
    Email(&'a Email),
}

/// An account with its password hash (a PHC string).
#[derive(Debug)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// A user row as written on Create.
#[derive(Debug)]
pub struct NewUser<'a> {
    pub id: &'a UserId,
    pub username: &'a Username,
    pub email: &'a Email,
    pub password_hash: &'a str,
    pub profile: &'a Profile,
    pub now: i64,
}

/// A session row as written on Login.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub digest: &'a TokenDigest,
    pub user_id: &'a str,
    pub created: i64,
    pub expires: i64,
    pub client: SessionClient<'a>,
    pub sign_in: SignIn,
}

/// When a session is live: it expires after `now`, and (with an idle timeout) it was
/// last seen, or else made, after `seen_since`.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub now: i64,
    pub seen_since: i64,
}

/// Who opened a session, as its user sees it in their list of sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionClient<'a> {
    /// The client's address.
    pub ip: Option<&'a str>,
    /// The `User-Agent` it sent, cut to a bounded length.
    pub user_agent: Option<&'a str>,
}

/// One of a user's live sessions, as ListSessions shows it: never its token or digest,
/// only the digest's first hex digits as a handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetails {
    pub handle: SessionHandle,
    pub created: i64,
    pub expires: i64,
    pub last_seen: Option<i64>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// How it was signed in (None for a session made before that was recorded).
    pub sign_in: Option<SignIn>,
}

/// A live session joined with its user.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub created: i64,
    pub expires: i64,
    pub last_seen: Option<i64>,
}

/// A session as kept in the store: its token digest, never the token.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub digest: TokenDigest,
    pub user_id: String,
    pub created: i64,
    pub expires: i64,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub last_seen: Option<i64>,
    pub sign_in: Option<SignIn>,
}

/// How a password hash is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashChange {
    /// A new password: bumps `updated` and revokes every session of the user.
    NewPassword { now: i64 },
    /// The same password under stronger parameters: nothing else changes.
    Rehash,
}

/// A one-time token as written when it is sent.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    pub digest: &'a TokenDigest,
    pub user_id: &'a str,
    pub purpose: Purpose,
    pub created: i64,
    pub expires: i64,
}

/// A passkey sign-in ceremony as written when it starts.
#[derive(Debug, Clone, Copy)]
pub struct NewPasskeySignIn<'a> {
    pub digest: &'a TokenDigest,
    /// The account it was started for by name; None for one started without a name
    /// (the passkey the browser picks names the account).
    pub user_id: Option<&'a str>,
    /// webauthn-rs's state of the ceremony, as JSON.
    pub state: &'a str,
    pub created: i64,
    pub expires: i64,
}

/// A live passkey sign-in ceremony as the store has it.
#[derive(Debug, Clone)]
pub struct PasskeySignInCeremony {
    pub user_id: Option<String>,
    pub state: String,
}

/// A counter of events: the one at `now` counts under `key`, allowed up to `max` per
/// window of `window` seconds (0: no limit, but still counted).
#[derive(Debug, Clone, Copy)]
pub struct EventLimit<'a> {
    pub key: &'a str,
    pub max: u32,
    pub now: i64,
    pub window: i64,
}

/// An e-mail carrying a one-time token, to queue.
#[derive(Debug)]
pub struct NewMail<'a> {
    pub token: NewToken<'a>,
    pub recipient: &'a str,
    pub from_name: Option<&'a str>,
    pub subject: &'a str,
    pub body: &'a str,
}

/// What queueing an e-mail did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Over the hourly limit: nothing stored. The counter, for the time to wait.
    Limited(Counter),
    /// The token is stored and the message queued.
    Queued,
    /// Counted; there was nothing to queue, or its account no longer exists.
    Counted,
}

/// A message a sender has claimed.
#[derive(Debug, Clone)]
pub struct ClaimedMail {
    pub id: i64,
    pub user_id: String,
    pub kind: String,
    pub recipient: String,
    pub from_name: Option<String>,
    pub subject: String,
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// The claim's lease, which identifies it.
    pub lease_until: i64,
}

/// Which sender takes an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Mail,
    /// `recipient` is the endpoint's URL, `subject` the event type, `body` the payload.
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mail => "mail",
            Self::Webhook => "webhook",
        }
    }
}

/// How an attempt to send a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailOutcome {
    /// The SMTP server took it: it is sent, and its body is erased.
    Sent,
    /// It failed; it is tried again at `next_attempt`.
    Retry { next_attempt: i64 },
    /// It failed for the last time: it is given up, its body erased and its token
    /// withdrawn (no one will receive it).
    GiveUp,
}

/// What using a one-time token does, in the same transaction that consumes it.
#[derive(Debug, Clone, Copy)]
pub enum Redemption<'a> {
    /// Marks the user's e-mail address verified.
    VerifyEmail,
    /// Sets a new password hash and revokes every session of the user.
    NewPassword { hash: &'a str },
    /// Opens a session, unless the user has a second factor: then it stores
    /// `challenge` instead, for the second step to redeem.
    OpenSession {
        digest: &'a TokenDigest,
        expires: i64,
        client: SessionClient<'a>,
        sign_in: SignIn,
        challenge: NewToken<'a>,
    },
    /// Adds a passkey to the token's user (a registration ceremony's token); refused
    /// (`FactorRefused`) when the credential is registered already.
    AddPasskey { passkey: &'a StoredPasskey },
    /// The second step of a sign-in: uses up `factor` and opens a session.
    SecondStep {
        digest: &'a TokenDigest,
        expires: i64,
        client: SessionClient<'a>,
        sign_in: SignIn,
        factor: FactorUse<'a>,
    },
}

/// A second factor a sign-in shows, used up as it is accepted.
#[derive(Debug, Clone, Copy)]
pub enum FactorUse<'a> {
    /// A TOTP code of this time step: accepted only after every step accepted before.
    TotpStep(i64),
    /// A recovery code (its digest), which goes.
    RecoveryCode(&'a TokenDigest),
    /// A passkey's signature: its credential is replaced by `passkey` (with its new
    /// `new_counter`) if its counter is still `counter`, so that of two sign-ins with
    /// one signature, or with a clone of the credential, one counts.
    Passkey {
        credential_id: &'a str,
        counter: i64,
        new_counter: i64,
        passkey: &'a str,
        now: i64,
    },
}

/// A live one-time token as the store has it.
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub user_id: String,
    /// What it is for, as stored (see [`Purpose::as_str`]).
    pub purpose: String,
    /// The state of a passkey ceremony kept with it.
    pub state: Option<String>,
    pub expires: i64,
}

/// A passkey as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    /// The WebAuthn credential id, base64url.
    pub credential_id: String,
    pub user_id: String,
    pub name: String,
    /// The credential as webauthn-rs serialises it (JSON).
    pub passkey: String,
    pub counter: i64,
    pub created: i64,
    pub last_used: Option<i64>,
}

/// A key the service made for itself (`service_keys`), as an export carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceKey {
    pub name: String,
    /// The key, base64url; a secret.
    pub value: String,
    pub created: i64,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKey")
            .field("name", &self.name)
            .field("value", &"[redacted]")
            .field("created", &self.created)
            .finish()
    }
}

/// A user's TOTP secret.
#[derive(Debug, Clone)]
pub struct TotpRecord {
    /// Base32, as the authenticator app was given it.
    pub secret: String,
    pub created: i64,
    /// When enrolment was confirmed: None while it is only started.
    pub confirmed: Option<i64>,
    /// The last time step a code was accepted for.
    pub last_step: i64,
}

/// The outcome of using a one-time token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// It was live: it is used up now and its effect is done.
    Done { user_id: String },
    /// It was live and is used up, but its user has a second factor: the challenge is
    /// stored instead of the session.
    SecondStepNeeded { user_id: String },
    /// It was live, but the second factor was not accepted (a TOTP step already used, a
    /// recovery code already used, or the factor was turned off): nothing changed.
    FactorRefused,
    /// It had expired: it is deleted and nothing else happened.
    Expired,
    /// No such token (never issued, already used, or replaced by a newer one).
    NotFound,
}

/// A rate-limit counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Events (or reserved attempts) in the current window.
    pub count: i64,
    pub window_start: i64,
    /// Locked out until then (0: never locked).
    pub blocked_until: i64,
    /// How many times the key was locked out before.
    pub strikes: i64,
}

impl Counter {
    /// Whether an hourly counter that has just counted an event is within `max` (0: no
    /// limit).
    pub fn within(&self, max: u32) -> bool {
        max == 0 || self.count <= i64::from(max)
    }
}

/// At most `max` attempts per window under `key`.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimit<'a> {
    pub key: &'a str,
    pub max: u32,
}

/// The outcome of reserving an attempt under several limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// One attempt is counted under every limit; the start of each one's window, in
    /// the order the limits were given.
    Granted { window_starts: Vec<i64> },
    /// Nothing was counted: the limit at `limit` (its place in the order given) has its
    /// key locked out, or its window holds its maximum of attempts already.
    Refused { limit: usize, counter: Counter },
}

/// How checking a reset code went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// The code is the account's live one, not yet void; it is not used up yet.
    Valid,
    /// It is not: counted against the account's live code, if it has one.
    Wrong,
}

/// The id of a deleted account, never to be issued again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedUser {
    pub id: String,
    pub deleted: i64,
}

/// What an import did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Inserted,
    /// The id (or session) already existed and skipping was asked for; or the deleted id
    /// was already known.
    Skipped,
    /// A unique value is taken by an existing record (for a deleted id: by a live user).
    Taken(Unique),
    /// The user's id belongs to a deleted account.
    Deleted,
    /// A session whose user is neither in the store nor earlier in the import.
    UnknownUser,
}

/// A user's second factors as export and import carry them.
#[derive(Debug, Clone)]
pub struct StoredFactors {
    pub user_id: String,
    pub totp: TotpRecord,
    /// Digests of the unused recovery codes.
    pub recovery_codes: Vec<TokenDigest>,
}

/// One import, inside one transaction: nothing is visible until `commit`, and dropping
/// the importer rolls everything back. Records come in batches, and each gets its own
/// outcome; earlier records of the import count as existing for later ones.
#[async_trait]
pub trait Importer: Send {
    async fn users(&mut self, batch: &[Credentials]) -> Result<Vec<Imported>, StoreError>;
    async fn sessions(&mut self, batch: &[StoredSession]) -> Result<Vec<Imported>, StoreError>;
    async fn deleted_users(&mut self, batch: &[DeletedUser]) -> Result<Vec<Imported>, StoreError>;
    async fn factors(&mut self, batch: &[StoredFactors]) -> Result<Vec<Imported>, StoreError>;
    async fn passkeys(&mut self, batch: &[StoredPasskey]) -> Result<Vec<Imported>, StoreError>;
    /// Keys the store has none of by their names are added; one it has with the same
    /// value is `Skipped`, one with another value `Taken` (or `Skipped`, keeping the
    /// store's, when skipping was asked for).
    async fn service_keys(&mut self, batch: &[ServiceKey]) -> Result<Vec<Imported>, StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Accounts: users with their password hashes, and the ids of deleted accounts.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Inserts a user; `Conflict` names the unique field that was taken, `id` also when
    /// the id belonged to a deleted account.
    async fn insert_user(&self, user: NewUser<'_>, audit: &Audit) -> Result<User, StoreError>;

    async fn user(&self, lookup: Lookup<'_>) -> Result<Option<User>, StoreError>;

    /// One page of every user, in (created, id) order.
    async fn list_users(&self, page: Page) -> Result<Vec<User>, StoreError>;

    async fn credentials(&self, lookup: Lookup<'_>) -> Result<Option<Credentials>, StoreError>;

    /// Applies the given changes and bumps `updated` (to `audit.at`); `None` when the
    /// user does not exist.
    async fn update_user(
        &self,
        id: &UserId,
        changes: &AccountChanges,
        audit: &Audit,
    ) -> Result<Option<User>, StoreError>;

    /// Deletes the user with its sessions and tokens, and keeps its id as deleted at
    /// `audit.at`, atomically; false when it did not exist.
    async fn delete_user(&self, id: &UserId, audit: &Audit) -> Result<bool, StoreError>;

    async fn search_users(&self, query: &UserQuery) -> Result<Vec<User>, StoreError>;

    /// Replaces the password hash if it is still `expected`, in one transaction with what
    /// `change` implies. False (and no change) if the hash had changed meanwhile.
    async fn replace_password(
        &self,
        id: &str,
        expected: &str,
        new_hash: &str,
        change: HashChange,
        audit: &Audit,
    ) -> Result<bool, StoreError>;
}

/// Sessions, kept under the digests of their tokens.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Creates a session if the user's password hash is still `expected_hash` (the one the
    /// password was verified against) and the user has no second factor. False when the
    /// password changed meanwhile, the user was deleted or has confirmed TOTP. With
    /// `rehash`, the same transaction also replaces the hash with that one (a stronger
    /// hash of the same password): both happen, or neither.
    async fn insert_session(
        &self,
        session: NewSession<'_>,
        expected_hash: &str,
        rehash: Option<&str>,
        audit: &Audit,
    ) -> Result<bool, StoreError>;

    /// The session with this digest, if it is live.
    async fn session(
        &self,
        digest: &TokenDigest,
        live: Liveness,
    ) -> Result<Option<SessionRecord>, StoreError>;

    async fn delete_session(&self, digest: &TokenDigest, audit: &Audit) -> Result<(), StoreError>;

    /// The user's live sessions, newest first, at most `limit`.
    async fn user_sessions(
        &self,
        user_id: &str,
        live: Liveness,
        limit: u32,
    ) -> Result<Vec<SessionDetails>, StoreError>;

    /// Deletes the user's session with this handle (its digest's first hex digits); false when
    /// the user has none such.
    async fn revoke_session(
        &self,
        user_id: &str,
        handle: &SessionHandle,
        audit: &Audit,
    ) -> Result<bool, StoreError>;

    /// Records that these sessions were used at `at` (at most a few hundred), where
    /// that is later than the use recorded; sessions that are gone are skipped.
    async fn touch_sessions(&self, digests: &[TokenDigest], at: i64) -> Result<(), StoreError>;

    /// Deletes every session of the user but `keep`; returns how many.
    async fn delete_sessions(
        &self,
        user_id: &str,
        keep: Option<&TokenDigest>,
        audit: &Audit,
    ) -> Result<u64, StoreError>;

    /// Deletes up to `batch` sessions that are no longer live; returns how many.
    async fn delete_expired_sessions(&self, live: Liveness, batch: u32) -> Result<u64, StoreError>;
}

/// One-time tokens sent by e-mail: checking and using them.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Checks `digest` against the user's live password reset code without using it
    /// up. A wrong code counts against the live code, which is void once
    /// [`crate::domain::RESET_CODE_MAX_WRONG`] wrong codes were tried.
    async fn check_reset_code(
        &self,
        user_id: &str,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<CodeCheck, StoreError>;

    /// Consumes the token (once: of concurrent callers, one gets `Done`) and, if it was
    /// live, applies `effect` in the same transaction (at `audit.at`), with its audit
    /// event.
    async fn redeem_token(
        &self,
        digest: &TokenDigest,
        purpose: Purpose,
        audit: &Audit,
        effect: Redemption<'_>,
    ) -> Result<Redeemed, StoreError>;

    /// Stores a token that is handed to its user directly (a sign-in's challenge, a
    /// passkey ceremony with its `state`), replacing the user's previous one of the same
    /// purpose.
    async fn insert_token(
        &self,
        token: NewToken<'_>,
        state: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Keeps `state` with a live token of `purpose` (a passkey ceremony that answers a
    /// sign-in's challenge); false when there is no such token.
    async fn set_token_state(
        &self,
        digest: &TokenDigest,
        purpose: Purpose,
        state: &str,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// A live token, without using it up.
    async fn live_token(
        &self,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<Option<LiveToken>, StoreError>;

    /// Deletes up to `batch` tokens that expired at or before `now`; returns how many.
    async fn delete_expired_tokens(&self, now: i64, batch: u32) -> Result<u64, StoreError>;
}

/// The e-mail outbox: messages queued with the tokens they carry, claimed by senders.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// Counts one e-mail against its hourly `limit` and, when the count is within it,
    /// stores `mail`'s token (replacing the user's previous one of the same purpose,
    /// whose queued message goes with it) and queues the message, all in one
    /// transaction. With no `mail` (an address without an account), only counts, but
    /// through the same statements (on an id no account has), so that the time taken
    /// does not tell the two apart.
    async fn queue_mail(
        &self,
        limit: EventLimit<'_>,
        mail: Option<NewMail<'_>>,
    ) -> Result<Queued, StoreError>;

    /// Claims up to `limit` queued messages due at `now`, whose token (if any) is still
    /// live, for one sender until `lease_until`: no other sender takes them meanwhile
    /// (on PostgreSQL, concurrent claims skip each other's rows). Each claim counts as
    /// an attempt.
    async fn claim_mail(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        channel: Channel,
    ) -> Result<Vec<ClaimedMail>, StoreError>;

    /// Records how the attempt at a claimed message ended, if the message is still
    /// queued under that claim.
    async fn mail_attempted(
        &self,
        mail: &ClaimedMail,
        outcome: MailOutcome,
    ) -> Result<(), StoreError>;

    /// How many messages of `channel` wait to be sent (queued, claimed or not).
    async fn queued_mail(&self, channel: Channel) -> Result<u64, StoreError>;

    /// Deletes up to `batch` sent or given-up messages created at or before `before`;
    /// returns how many.
    async fn delete_old_mail(&self, before: i64, batch: u32) -> Result<u64, StoreError>;
}

/// Rate-limit counters, shared by every replica.
#[async_trait]
pub trait CounterStore: Send + Sync {
    /// Reserves one attempt under each limit, all or none, atomically (across
    /// replicas too): refused when a key is locked out at `now` or its current window
    /// (of `window` seconds) holds `max` attempts already.
    async fn reserve_attempts(
        &self,
        limits: &[AttemptLimit<'_>],
        now: i64,
        window: i64,
    ) -> Result<Reservation, StoreError>;

    /// The counter of `key`, if it has one.
    async fn counter(&self, key: &str) -> Result<Option<Counter>, StoreError>;

    /// Locks `key` out until `until`, counts a strike and starts a new, empty window at
    /// `now`; only if it is not locked at `now` and still has `strikes` strikes (so of
    /// concurrent callers, one locks it). Whether it did.
    /// The lockout is recorded in the audit trail with `event`: who caused it, and the
    /// account it is about, if known.
    async fn lock(
        &self,
        key: &str,
        now: i64,
        until: i64,
        strikes: i64,
        event: (&Audit, Option<&str>),
    ) -> Result<bool, StoreError>;

    /// A reserved attempt succeeded, or could not be checked, in one transaction:
    /// forgets the counter of `forget` (if any), and takes the attempt off the count of
    /// each `give_back` key whose window still starts at the given time (it was counted
    /// in it).
    async fn attempt_succeeded(
        &self,
        forget: Option<&str>,
        give_back: &[(&str, i64)],
    ) -> Result<(), StoreError>;

    /// Forgets the counters of `keys` (their counts, lockouts and strikes). With
    /// `lifted` (who acted, and the account), records a `lockout.lifted` event in the
    /// same transaction.
    async fn forget_counters(
        &self,
        keys: &[&str],
        lifted: Option<(&Audit, &str)>,
    ) -> Result<(), StoreError>;

    /// Adds one event to `key`, starting a new window when the current one (of
    /// `window` seconds) is over.
    async fn count_event(&self, key: &str, now: i64, window: i64) -> Result<Counter, StoreError>;

    /// Deletes counters untouched since `before` and not blocked after `now`.
    async fn delete_stale_counters(&self, before: i64, now: i64) -> Result<u64, StoreError>;
}

/// Second factors: TOTP secrets and recovery codes.
#[async_trait]
pub trait FactorStore: Send + Sync {
    /// The user's TOTP secret, confirmed or only started.
    async fn totp(&self, user_id: &str) -> Result<Option<TotpRecord>, StoreError>;

    /// Starts (or starts again) enrolment with a new secret, unless TOTP is confirmed
    /// already: false then, and nothing changed.
    async fn start_totp(&self, user_id: &str, secret: &str, now: i64) -> Result<bool, StoreError>;

    /// Confirms enrolment of `secret` with a code of `step`, in one transaction: stores
    /// the recovery codes (replacing any), and ends every session of the user but
    /// `keep`. False when that secret is no longer the one being enrolled.
    async fn confirm_totp(
        &self,
        user_id: &str,
        secret: &str,
        step: i64,
        audit: &Audit,
        recovery_codes: &[TokenDigest],
        keep: Option<&TokenDigest>,
    ) -> Result<bool, StoreError>;

    /// Removes the user's TOTP secret and recovery codes; false when there was none.
    async fn remove_second_factors(&self, user_id: &str, audit: &Audit)
        -> Result<bool, StoreError>;

    /// Uses up a factor outside a sign-in (to turn TOTP off with a code); false when it
    /// was not accepted.
    async fn use_factor(&self, user_id: &str, factor: FactorUse<'_>) -> Result<bool, StoreError>;

    /// How many unused recovery codes the user has.
    async fn recovery_codes_left(&self, user_id: &str) -> Result<i64, StoreError>;

    /// How many stored TOTP secrets start with `prefix`, by the `len` characters after
    /// it (which key sealed them), and, under None, how many do not (in clear).
    async fn totp_secrets_by_prefix(
        &self,
        prefix: &str,
        len: u32,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError>;

    /// Replaces the user's stored TOTP secret `old` with `new` (the same secret, sealed
    /// anew); false when it is no longer `old` (changed meanwhile), and nothing written.
    async fn replace_totp_secret(
        &self,
        user_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;
}

/// Passkeys: listing, naming and deleting them, and the ceremonies of signing in with
/// one (adding one goes with a token, see [`Redemption`]).
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// The user's passkeys, oldest first.
    async fn passkeys(&self, user_id: &str) -> Result<Vec<StoredPasskey>, StoreError>;

    /// Renames one of the user's passkeys; false when the user has none such.
    async fn rename_passkey(
        &self,
        user_id: &str,
        credential_id: &str,
        name: &str,
    ) -> Result<bool, StoreError>;

    /// Deletes one of the user's passkeys; false when the user has none such.
    async fn delete_passkey(
        &self,
        user_id: &str,
        credential_id: &str,
        audit: &Audit,
    ) -> Result<bool, StoreError>;

    /// Deletes every passkey of the user; how many.
    async fn delete_passkeys(&self, user_id: &str, audit: &Audit) -> Result<u64, StoreError>;

    /// The passkey with this credential id, whoever's it is (a sign-in without a name).
    async fn passkey(&self, credential_id: &str) -> Result<Option<StoredPasskey>, StoreError>;

    /// Stores a passkey sign-in ceremony. Each is its own: starting one withdraws no
    /// other (anyone may start one for a name). One for an account deleted meanwhile is
    /// not written, and so never found.
    async fn insert_passkey_sign_in(
        &self,
        ceremony: NewPasskeySignIn<'_>,
    ) -> Result<(), StoreError>;

    /// A live passkey sign-in ceremony, without using it up.
    async fn passkey_sign_in(
        &self,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<Option<PasskeySignInCeremony>, StoreError>;

    /// Uses up the ceremony `digest` for `user_id` (the account it was started for, or
    /// any account for one started without a name) and applies `effect` as
    /// [`TokenStore::redeem_token`] does: once, of concurrent callers.
    async fn redeem_passkey_sign_in(
        &self,
        digest: &TokenDigest,
        user_id: &str,
        audit: &Audit,
        effect: Redemption<'_>,
    ) -> Result<Redeemed, StoreError>;

    /// Deletes up to `batch` ceremonies that expired at or before `now`; how many.
    async fn delete_expired_passkey_sign_ins(
        &self,
        now: i64,
        batch: u32,
    ) -> Result<u64, StoreError>;
}

/// Export, a page at a time, and the all-or-nothing import.
#[async_trait]
pub trait TransferStore: Send + Sync {
    /// Up to `limit` users with their hashes, in (created, id) order, after `after`.
    async fn users_page(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Credentials>, StoreError>;

    /// Up to `limit` sessions live at `now`, in digest order, after `after`.
    async fn sessions_page(
        &self,
        after: Option<TokenDigest>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<StoredSession>, StoreError>;

    /// Up to `limit` ids of deleted accounts with when they were deleted, in id order,
    /// after `after`.
    async fn deleted_users_page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeletedUser>, StoreError>;

    /// Up to `limit` users' second factors, in user id order, after `after`.
    async fn factors_page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredFactors>, StoreError>;

    /// Up to `limit` passkeys, in credential id order, after `after`.
    async fn passkeys_page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredPasskey>, StoreError>;

    /// Every key the service made for itself, by name.
    async fn service_keys(&self) -> Result<Vec<ServiceKey>, StoreError>;

    /// Starts an all-or-nothing import.
    async fn begin_import(&self, skip_existing: bool) -> Result<Box<dyn Importer>, StoreError>;
}

/// The audit trail. Changes write their events in their own transactions (the store's
/// write methods take an [`Audit`]); what changes nothing is recorded here.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records an event that goes with no change (a failed login, a refused key).
    async fn record_event(
        &self,
        audit: &Audit,
        kind: EventKind,
        user_id: Option<&str>,
        outcome: &str,
    ) -> Result<(), StoreError>;

    /// Events matching `query`, newest first.
    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError>;

    /// Deletes up to `batch` events recorded before `before`; returns how many.
    async fn delete_old_events(&self, before: i64, batch: u32) -> Result<u64, StoreError>;
}

/// Keys the service makes for itself on first use, kept in the database so that every
/// replica, and the next start, holds the same one.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The key named `name`: the one stored, or `fresh` (stored now, at `now`) when
    /// none is. Of replicas that ask at once, every one gets the same key.
    async fn service_key(&self, name: &str, fresh: &str, now: i64) -> Result<String, StoreError>;
}

/// All of the store, as the core holds it: each concern's trait, and a health check.
/// A part of the core that needs one concern only takes that trait.
#[async_trait]
pub trait Store:
    AccountStore
    + SessionStore
    + TokenStore
    + MailStore
    + CounterStore
    + FactorStore
    + PasskeyStore
    + TransferStore
    + AuditStore
    + KeyStore
    + 'static
{
    /// One round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;
}
