//! [`Store`] over SQLite or PostgreSQL with sqlx.
//!
//! Every statement is written once, in SQL both databases accept (`$n` parameters,
//! `RETURNING`, `INSERT ... SELECT`), and runs on whichever pool is configured: the
//! [`on_pool!`] macro expands one body per backend, so each is checked by the compiler
//! against its own driver with no runtime translation layer. On SQLite, the hot point
//! reads first try the inline reader (`inline.rs`), which runs the same SQL on the
//! calling thread and leaves anything it cannot answer to the pool.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::DatabaseError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteError, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Transaction};
use std::collections::HashSet;

use super::{
    AccountStore, AttemptLimit, AuditStore, Channel, ClaimedMail, CodeCheck, Counter, CounterStore,
    Credentials, DatabaseUrl, DeletedUser, EventLimit, FactorStore, FactorUse, HashChange,
    Imported, Importer, KeyStore, LiveToken, Liveness, Lookup, MailOutcome, MailStore, NewMail,
    NewPasskeySignIn, NewSession, NewToken, NewUser, PasskeySignInCeremony, PasskeyStore, Queued,
    Redeemed, Redemption, Reservation, ServiceKey, SessionDetails, SessionRecord, SessionStore,
    Store, StoreError, StoredFactors, StoredPasskey, StoredSession, TokenStore, TotpRecord,
    TransferStore,
};
use crate::domain::{
    AccountChanges, Page, Profile, Purpose, SecondFactor, SessionHandle, SignIn, SignInMethod,
    TokenDigest, User, UserId, UserQuery, RESET_CODE_MAX_WRONG,
};
use crate::domain::{Audit, AuditEvent, EventKind, EventQuery};
use crate::error::{Outage, Unique};
use crate::metrics::{EndCause, Metrics, PoolGauge, SqliteCounts};
use durable::GroupSync;
use inline::InlineReader;
use pg_readers::PgReaders;
use read_cache::{ReadCache, SearchKey};
use std::sync::Arc;
use writer::{SqliteWriter, WriterConn};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long SQLite waits for another writer before giving up with SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503.
    pub acquire_timeout: Duration,
    /// On SQLite, the bytes of point reads' answers kept while the database is
    /// unchanged (`read_cache.rs`); 0: none.
    pub read_cache_bytes: usize,
    /// On PostgreSQL, the schema the pool works in (a tenant's), created when missing
    /// if the store may create; `None`: the database's default search path.
    pub schema: Option<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            read_cache_bytes: read_cache::BUDGET,
            schema: None,
        }
    }
}

enum Backend {
    /// SQLite takes one writer at a time. Writes go through one connection, so
    /// concurrent writers wait their turn (`writer.rs`) instead of sleeping in SQLite's
    /// busy handler (which made write latency spike under load); reads have a pool of
    /// their own and never wait for writes (WAL).
    Sqlite {
        reader: SqlitePool,
        writer: Box<SqliteWriter>,
        /// The hot point reads, without sqlx's thread hand-off; falls back to `reader`.
        inline: InlineReader,
        /// The point reads' answers, while the database is unchanged (`read_cache.rs`);
        /// None when turned off.
        cache: Option<Box<ReadCache>>,
        /// Makes the writer's commits durable, many to an fsync (`durable.rs`).
        group_sync: Arc<GroupSync>,
    },
    Postgres {
        /// Writes, transactions and every read but the point reads.
        pool: PgPool,
        /// The point reads, one round trip each (`pg_readers.rs`).
        readers: Box<PgReaders>,
    },
}

pub struct SqlStore {
    backend: Backend,
    /// Where it reports connection waits and ended sessions, once the service has
    /// attached its metrics.
    metrics: std::sync::OnceLock<Arc<Metrics>>,
    /// Where changes are announced, once the service has set it.
    webhooks: std::sync::OnceLock<Arc<Webhooks>>,
}

/// The webhook endpoints that changes are announced to, and the tenant whose pool this
/// store is (named in every payload, so that a receiver of several tenants' events
/// tells them apart).
#[derive(Debug)]
struct Webhooks {
    endpoints: Vec<String>,
    tenant: Option<String>,
}

/// Takes a connection for a write transaction from `$pool`, timing the wait.
macro_rules! acquire {
    ($store:expr, $pool:ident) => {{
        let started = std::time::Instant::now();
        let conn = $pool.acquire().await?;
        if let Some(metrics) = $store.metrics.get() {
            metrics
                .database
                .acquire_wait
                .observe(started.elapsed().as_secs_f64());
        }
        conn
    }};
}

/// Runs `$body`, a read, with `$pool` bound to the store's pool for reading.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { reader: $pool, .. } => $body,
            Backend::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// Runs `$body`, a point read that the inline reader could not answer, with `$conn`
/// bound to SQLite's reading pool or to one of PostgreSQL's reader connections
/// (`pg_readers.rs`; a read on a connection found closed is made once more on a new
/// one).
macro_rules! point_read {
    ($store:expr, $conn:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { reader: $conn, .. } => $body,
            Backend::Postgres { readers, .. } => match readers.slot().await {
                Ok(mut slot) => loop {
                    let read = match slot.connection().await {
                        Ok($conn) => $body,
                        Err(err) => Err(err),
                    };
                    if !slot.finished(&read) {
                        break read;
                    }
                },
                Err(err) => Err(err),
            },
        }
    };
}

/// Runs `$body`, which writes, with `$pool` bound to the store's pool for writing. Its
/// `Ok` comes back only once what it committed is durable: on SQLite, after the group
/// sync that follows the commit (`durable.rs`), with the writer already free for the
/// next transaction; PostgreSQL syncs at commit. `unsynced` before the body: no wait
/// for the sync, for what no caller is told was done (a read that must see every
/// commit of this process; a lease the outbox takes every second, which a crash may
/// lose at no cost: the message is claimed again). The next synced write's sync
/// covers it anyway.
macro_rules! on_writer {
    ($store:expr, $pool:ident => unsynced $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { writer: $pool, .. } => $body,
            Backend::Postgres { pool: $pool, .. } => $body,
        }
    };
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite {
                writer: $pool,
                group_sync,
                ..
            } => durable_after(group_sync, $body).await,
            Backend::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// `written`, the outcome of a write on SQLite's writer, once what it committed is
/// durable (or the error that says it cannot be made so).
async fn durable_after<T, E: From<sqlx::Error>>(
    group_sync: &GroupSync,
    written: Result<T, E>,
) -> Result<T, E> {
    let done = written?;
    group_sync
        .durable()
        .await
        .map_err(|err| E::from(sqlx::Error::Io(err)))?;
    Ok(done)
}

impl SqlStore {
    /// On SQLite, `write` made on the writer's direct connection (`writer.rs`: in a
    /// transaction shared with the direct writes beside it, without a thread hand-off
    /// per statement) and durable; `None` on PostgreSQL, or when the direct connection
    /// could not make it, and the caller makes the same write through sqlx. `write`
    /// must be one that can be made again after it failed, as
    /// [`SqliteWriter::write_direct`] says.
    async fn write_direct<T: Send + 'static>(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<Option<T>, StoreError> {
        let Backend::Sqlite {
            writer, group_sync, ..
        } = &self.backend
        else {
            return Ok(None);
        };
        match writer.write_direct(write).await.map_err(classify)? {
            Some(done) => durable_after(group_sync, Ok::<_, sqlx::Error>(done))
                .await
                .map(Some)
                .map_err(classify),
            None => Ok(None),
        }
    }

    /// The webhook endpoints, for a direct write to take along.
    fn webhooks(&self) -> Option<Arc<Webhooks>> {
        self.webhooks.get().cloned()
    }
}

/// What [`audit!`] records, on a direct write's transaction `tx`: the event and its
/// deliveries to the webhook `endpoints`. An event whose webhook carries the account is
/// left to the sqlx path (an error here, so the write falls back to it).
fn audit_direct(
    tx: &rusqlite::Transaction<'_>,
    webhooks: Option<&Webhooks>,
    audit: &Audit,
    kind: EventKind,
    user_id: Option<&str>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(INSERT_EVENT)?
        .execute(rusqlite::named_params! {
            "$1": audit.at,
            "$2": kind.as_str(),
            "$3": user_id,
            "$4": audit.client_ip.as_deref(),
            "$5": audit.request_id.as_deref(),
            "$6": "success",
            "$7": audit.actor.as_str(),
        })?;
    if let (Some(webhooks), Some(event_type)) = (webhooks, kind.webhook_type()) {
        if kind.announces_account() {
            return Err(rusqlite::Error::InvalidQuery);
        }
        let body = webhook_payload(webhooks, event_type, audit, user_id, None);
        let mut insert = tx.prepare_cached(INSERT_WEBHOOK)?;
        for endpoint in &webhooks.endpoints {
            insert.execute(rusqlite::named_params! {
                "$1": user_id.unwrap_or(""),
                "$2": event_type,
                "$3": endpoint.as_str(),
                "$4": body,
                "$5": audit.at,
            })?;
        }
    }
    Ok(())
}

/// Answers with `$map(row)` from the inline reader when the store is SQLite and the
/// fast path can answer (see `inline.rs`); otherwise falls through to the pool.
macro_rules! inline_first {
    ($store:expr, $method:ident($sql:expr, [$($name:literal => $value:expr),* $(,)?]), $row:expr, $done:expr) => {
        if let Backend::Sqlite { inline, .. } = &$store.backend {
            if let Some(found) = inline.$method($sql, &[$(($name, &$value as &dyn rusqlite::ToSql)),*], $row) {
                return $done(found);
            }
        }
    };
}

/// Reads a [`UserRow`] (and a password hash after it, for a [`CredentialsRow`]) from a
/// rusqlite row.
fn user_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

fn credentials_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CredentialsRow> {
    let (id, username, email, created, updated, verified, verification_date, profile) =
        user_row(row)?;
    Ok((
        id,
        username,
        email,
        created,
        updated,
        verified,
        verification_date,
        profile,
        row.get(8)?,
    ))
}

/// The columns of a [`User`], in the order of [`UserRow`].
macro_rules! user_columns {
    () => {
        "id, username, email, created, updated, verified, verification_date, profile"
    };
}

/// `SELECT <columns> FROM users WHERE <the lookup's column> = $1`, and the key to bind.
macro_rules! select_by {
    ($lookup:expr, $($columns:expr),+) => {{
        macro_rules! by {
            ($column:literal) => {
                concat!("SELECT ", $($columns),+, " FROM users WHERE ", $column, " = $1")
            };
        }
        match $lookup {
            Lookup::Id(id) => (by!("id"), id.as_str()),
            Lookup::Username(username) => (by!("username"), username.as_str()),
            Lookup::Email(email) => (by!("email"), email.as_str()),
        }
    }};
}

/// Commits the transaction `$tx` on the pooled connection `$conn`, returning the error
/// from the enclosing block when it fails. Then the connection is closed rather than
/// put back in the pool: on SQLite, a COMMIT that fails (a full disk) may have rolled
/// the transaction back by itself or not, and a connection whose transaction state is
/// unknown must not serve another request.
macro_rules! commit {
    ($tx:ident, $conn:ident) => {
        if let Err(err) = $tx.commit().await {
            $conn.close_on_drop();
            return Err(err);
        }
    };
}

/// Begins a transaction that is going to write. On SQLite it takes the write lock at
/// once (`BEGIN IMMEDIATE`), waiting for another replica's writer if need be: a
/// transaction that read first and then wrote would fail at once with SQLITE_BUSY when
/// another connection to the file wrote in between. PostgreSQL locks rows as it goes.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(&mut self) -> BoxFuture<'_, Result<Transaction<'_, Self::Db>, sqlx::Error>>;
}

impl BeginWrite for WriterConn {
    type Db = Sqlite;
    fn begin_write(&mut self) -> BoxFuture<'_, Result<Transaction<'_, Sqlite>, sqlx::Error>> {
        (**self).begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for sqlx::pool::PoolConnection<Postgres> {
    type Db = Postgres;
    fn begin_write(&mut self) -> BoxFuture<'_, Result<Transaction<'_, Postgres>, sqlx::Error>> {
        (**self).begin()
    }
}

/// Appends `a, b, c` as bound parameters.
macro_rules! push_list {
    ($query:expr, $values:expr) => {{
        let mut list = $query.separated(", ");
        for value in $values {
            list.push_bind(value);
        }
    }};
}

/// Replaces the user's token of a purpose: the previous one goes (`$1` user, `$2`
/// purpose), then the new one is written from the user's row, so nothing is written for
/// a user deleted meanwhile. The WHERE clause also tells SQLite's parser that ON CONFLICT
/// is the insert's; a conflict means a concurrent request stored its token first.
const REPLACE_TOKEN: &str = "DELETE FROM tokens WHERE user_id = $1 AND purpose = $2";
const INSERT_TOKEN: &str = "INSERT INTO tokens (token_hash, user_id, purpose, created, expires) \
                            SELECT $1, id, $3, $4, $5 FROM users WHERE id = $2 \
                            ON CONFLICT DO NOTHING";

/// Stores the [`NewToken`] `$token` on `$conn` (a connection or transaction) as
/// [`REPLACE_TOKEN`] and [`INSERT_TOKEN`] say; whether it was written.
macro_rules! store_token {
    ($conn:expr, $token:expr) => {{
        let token: &NewToken<'_> = $token;
        sqlx::query(REPLACE_TOKEN)
            .bind(token.user_id)
            .bind(token.purpose.as_str())
            .execute(&mut *$conn)
            .await?;
        sqlx::query(INSERT_TOKEN)
            .bind(token.digest.as_str())
            .bind(token.user_id)
            .bind(token.purpose.as_str())
            .bind(token.created)
            .bind(token.expires)
            .execute(&mut *$conn)
            .await?
            .rows_affected()
            == 1
    }};
}

/// Whether user `$user_id` has confirmed TOTP, read on `$conn`.
macro_rules! has_totp {
    ($conn:expr, $user_id:expr) => {
        sqlx::query_as::<_, (i64,)>(
            "SELECT last_step FROM totp WHERE user_id = $1 AND confirmed IS NOT NULL",
        )
        .bind($user_id)
        .fetch_optional(&mut *$conn)
        .await?
        .is_some()
    };
}

/// Uses up the [`FactorUse`] `$factor` of user `$user_id` on `$conn`; whether it was
/// accepted (a TOTP step later than every one before, an unused recovery code).
macro_rules! use_factor {
    ($conn:expr, $user_id:expr, $factor:expr) => {
        match $factor {
            FactorUse::TotpStep(step) => {
                sqlx::query(
                    "UPDATE totp SET last_step = $2 \
                 WHERE user_id = $1 AND confirmed IS NOT NULL AND last_step < $2",
                )
                .bind($user_id)
                .bind(step)
                .execute(&mut *$conn)
                .await?
                .rows_affected()
                    == 1
            }
            FactorUse::RecoveryCode(digest) => {
                sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1 AND code_hash = $2")
                    .bind($user_id)
                    .bind(digest.as_str())
                    .execute(&mut *$conn)
                    .await?
                    .rows_affected()
                    == 1
            }
            FactorUse::Passkey {
                credential_id,
                counter,
                new_counter,
                passkey,
                now,
            } => {
                sqlx::query(
                    "UPDATE passkeys SET passkey = $4, counter = $5, last_used = $6 \
                     WHERE user_id = $1 AND credential_id = $2 AND counter = $3",
                )
                .bind($user_id)
                .bind(credential_id)
                .bind(counter)
                .bind(passkey)
                .bind(new_counter)
                .bind(now)
                .execute(&mut *$conn)
                .await?
                .rows_affected()
                    == 1
            }
        }
    };
}

/// Opens a session of `$user_id` on `$conn`: `$digest`, made at `$now`, until
/// `$expires`, by the [`super::SessionClient`] `$client`, signed in as `$sign_in`.
macro_rules! open_session {
    ($conn:expr, $digest:expr, $user_id:expr, $now:expr, $expires:expr, $client:expr, $sign_in:expr) => {{
        let sign_in: SignIn = $sign_in;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created, expires, client_ip, user_agent, \
             method, second_factor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind($digest.as_str())
        .bind($user_id)
        .bind($now)
        .bind($expires)
        .bind($client.ip)
        .bind($client.user_agent)
        .bind(sign_in.method.as_str())
        .bind(sign_in.second_factor.map(SecondFactor::as_str))
        .execute(&mut *$conn)
        .await?;
        sign_in.method
    }};
}

/// Writes one audit event.
const INSERT_EVENT: &str = "INSERT INTO audit_events \
     (at, kind, user_id, client_ip, request_id, outcome, actor) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Records the event `$kind` about `$user_id` (done by `$audit`'s actor) in the audit
/// trail, on `$conn`: the transaction of the change it records, so that the event is
/// there if and only if the change is.
///
/// With webhooks configured, the event's webhook (if its kind has one) is queued in the
/// outbox for each endpoint in the same transaction: announced if and only if it
/// happened.
macro_rules! audit {
    ($store:expr, $conn:expr, $audit:expr, $kind:expr, $user_id:expr) => {{
        let audit: &Audit = $audit;
        let kind: EventKind = $kind;
        let user_id: Option<&str> = $user_id;
        event_insert(audit, kind, user_id, "success")
            .execute(&mut *$conn)
            .await?;
        if let (Some(webhooks), Some(event_type)) = ($store.webhooks.get(), kind.webhook_type()) {
            let account = if kind.announces_account() {
                match user_id {
                    Some(id) => sqlx::query_as::<_, UserRow>(concat!(
                        "SELECT ",
                        user_columns!(),
                        " FROM users WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(&mut *$conn)
                    .await?
                    .and_then(|row| user(row).ok()),
                    None => None,
                }
            } else {
                None
            };
            let body = webhook_payload(webhooks, event_type, audit, user_id, account.as_ref());
            for endpoint in &webhooks.endpoints {
                sqlx::query(INSERT_WEBHOOK)
                    .bind(user_id.unwrap_or(""))
                    .bind(event_type)
                    .bind(endpoint.as_str())
                    .bind(&body)
                    .bind(audit.at)
                    .execute(&mut *$conn)
                    .await?;
            }
        }
    }};
}

/// The statement that writes one audit event, for any database.
fn event_insert<'q, DB: sqlx::Database>(
    audit: &'q Audit,
    kind: EventKind,
    user_id: Option<&'q str>,
    outcome: &'q str,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(INSERT_EVENT)
        .bind(audit.at)
        .bind(kind.as_str())
        .bind(user_id)
        .bind(audit.client_ip.as_deref())
        .bind(audit.request_id.as_deref())
        .bind(outcome)
        .bind(audit.actor.as_str())
}

/// Queues one webhook delivery.
const INSERT_WEBHOOK: &str = "INSERT INTO outbox (token_hash, user_id, kind, recipient, \
     from_name, subject, body, state, attempts, next_attempt, lease_until, created, channel) \
     VALUES (NULL, $1, $2, $3, NULL, $2, $4, 'queued', 0, $5, 0, $5, 'webhook')";

/// A webhook's JSON payload, as Standard Webhooks shapes it: `type`, `timestamp` and
/// `data` (the account, who acted and in which request; the account as it is now, for
/// the events that change it; with tenants, the tenant).
fn webhook_payload(
    webhooks: &Webhooks,
    event_type: &str,
    audit: &Audit,
    user_id: Option<&str>,
    account: Option<&User>,
) -> String {
    let mut data = serde_json::json!({
        "user_id": user_id,
        "actor": audit.actor.as_str(),
        "request_id": audit.request_id.as_deref(),
    });
    if let Some(tenant) = &webhooks.tenant {
        data["tenant"] = serde_json::json!(tenant);
    }
    if let Some(user) = account {
        data["user"] = serde_json::json!({
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "verified": user.verified,
            "created": user.created,
            "updated": user.updated,
            "profile": user.profile.as_map(),
        });
    }
    serde_json::json!({
        "type": event_type,
        "timestamp": crate::domain::rfc3339(audit.at),
        "data": data,
    })
    .to_string()
}

type UserRow = (String, String, String, i64, i64, bool, i64, String);
type CredentialsRow = (String, String, String, i64, i64, bool, i64, String, String);
type SessionRow = (String, String, String, i64, i64, Option<i64>);
type StoredSessionRow = (
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);
type CounterRow = (i64, i64, i64, i64);

/// The columns of a [`Counter`], in the order of [`CounterRow`].
macro_rules! counter_columns {
    () => {
        "count, window_start, blocked_until, strikes"
    };
}

const SELECT_COUNTER: &str = concat!(
    "SELECT ",
    counter_columns!(),
    " FROM rate_limits WHERE key = $1"
);

/// Adds one event to the counter `$1` at `$2`, starting a new window when the current
/// one (of `$3` seconds) is over. One statement, so concurrent events on several
/// replicas never lose a count.
macro_rules! add_event {
    () => {
        "INSERT INTO rate_limits (key, count, window_start, blocked_until, strikes, updated) \
         VALUES ($1, 1, $2, 0, 0, $2) \
         ON CONFLICT (key) DO UPDATE SET \
         count = CASE WHEN rate_limits.window_start <= $2 - $3 THEN 1 \
                      ELSE rate_limits.count + 1 END, \
         window_start = CASE WHEN rate_limits.window_start <= $2 - $3 THEN $2 \
                             ELSE rate_limits.window_start END, \
         updated = $2"
    };
}

/// [`add_event!`], answering the counter.
const COUNT_EVENT: &str = concat!(add_event!(), " RETURNING ", counter_columns!());

fn counter((count, window_start, blocked_until, strikes): CounterRow) -> Counter {
    Counter {
        count,
        window_start,
        blocked_until,
        strikes,
    }
}

fn credentials(
    (id, username, email, created, updated, verified, verification_date, profile, password_hash): CredentialsRow,
) -> Result<Credentials, StoreError> {
    Ok(Credentials {
        user: user((
            id,
            username,
            email,
            created,
            updated,
            verified,
            verification_date,
            profile,
        ))?,
        password_hash,
    })
}

/// How a session was signed in, from its `method` and `second_factor` columns (None for
/// a session made before they were recorded).
fn sign_in(method: Option<&str>, second_factor: Option<&str>) -> Option<SignIn> {
    Some(SignIn {
        method: SignInMethod::from_stored(method?)?,
        second_factor: second_factor.and_then(SecondFactor::from_stored),
    })
}

/// The `(method, second_factor)` columns of a session signed in as `sign_in`.
fn sign_in_columns(sign_in: Option<SignIn>) -> (Option<&'static str>, Option<&'static str>) {
    match sign_in {
        Some(SignIn {
            method,
            second_factor,
        }) => (
            Some(method.as_str()),
            second_factor.map(SecondFactor::as_str),
        ),
        None => (None, None),
    }
}

fn stored_session(
    (digest, user_id, created, expires, client_ip, user_agent, last_seen, method, second): StoredSessionRow,
) -> StoredSession {
    StoredSession {
        sign_in: sign_in(method.as_deref(), second.as_deref()),
        client_ip,
        user_agent,
        last_seen,
        digest: TokenDigest::from_stored(digest),
        user_id,
        created,
        expires,
    }
}

/// Why a database's schema does not fit this binary.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has no users-service schema: run `users-service migrate`")]
    NotMigrated,
    #[error(
        "the database schema is older than this binary (migration {0} is missing): \
         run `users-service migrate`"
    )]
    Older(i64),
    #[error(
        "the database schema is newer than this binary (it has migration {0}, which this \
         version of users-service does not know): upgrade users-service"
    )]
    Newer(i64),
    #[error("cannot read the schema version")]
    Store(#[source] StoreError),
}

/// Creates the database file, empty, readable and writable by its owner only, if it
/// does not exist yet. SQLite gives its `-wal` and `-shm` files the database file's
/// permissions, so they are private too. Failing is left to SQLite to report when it
/// opens the file.
fn create_private_file(path: &std::path::Path) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let _ = options.open(path);
}

fn user(
    (id, username, email, created, updated, verified, verification_date, profile): UserRow,
) -> Result<User, StoreError> {
    // The profile is a JSON object of strings, written only by this service.
    let profile: Profile = serde_json::from_str(&profile)
        .map_err(|e| StoreError::Other(sqlx::Error::Decode(Box::new(e))))?;
    Ok(User {
        id,
        username,
        email,
        created,
        updated,
        verified,
        verification_date,
        profile,
    })
}

fn users(rows: Vec<UserRow>) -> Result<Vec<User>, StoreError> {
    rows.into_iter().map(user).collect()
}

/// A profile as stored: compact JSON.
fn profile_json(profile: &Profile) -> String {
    // A map of strings always serialises.
    serde_json::to_string(profile).unwrap_or_else(|_| "{}".to_string())
}

/// Creates `schema` unless it exists. Two replicas starting at once may both try: the
/// one that loses finds it made.
async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), StoreError> {
    // The name is a checked tenant's (`[a-z][a-z0-9_]*`): nothing to quote.
    debug_assert!(schema
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    let mut conn = sqlx::PgConnection::connect_with(options)
        .await
        .map_err(classify)?;
    let made = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    match made {
        Ok(_) => Ok(()),
        // 23505 unique_violation and 42P06 duplicate_schema: made meanwhile.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("23505" | "42P06")) =>
        {
            Ok(())
        }
        Err(err) => Err(classify(err)),
    }
}

impl SqlStore {
    /// Opens the pool. SQLite runs in WAL mode with a busy timeout and foreign keys on;
    /// every commit is durable before it is acknowledged (the writer's through the group
    /// sync); its file is created when missing if `create` is set.
    pub async fn connect(
        url: &DatabaseUrl,
        config: &PoolConfig,
        create: bool,
    ) -> Result<Self, StoreError> {
        let backend = match url {
            DatabaseUrl::Sqlite(path) => {
                if create {
                    create_private_file(path);
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(create)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true);
                // A connection to a local file does not go stale: skip the ping that
                // would otherwise cost a thread round trip on every request. The writer
                // connects first, so the file exists and is in WAL mode for the readers.
                // The writer commits without a sync of its own; `GroupSync` makes its
                // commits durable before they are acknowledged.
                let writer = while_busy(|| {
                    SqliteWriter::connect(
                        options.clone().synchronous(SqliteSynchronous::Normal),
                        config.acquire_timeout,
                    )
                })
                .await
                .map_err(classify)?;
                let group_sync = GroupSync::for_database(path)
                    .map(Arc::new)
                    .map_err(|err| StoreError::Other(sqlx::Error::Io(err)))?;
                let reader = while_busy(|| {
                    SqlitePoolOptions::new()
                        .max_connections(config.max_connections)
                        .acquire_timeout(config.acquire_timeout)
                        .test_before_acquire(false)
                        .connect_with(options.clone().create_if_missing(false))
                })
                .await
                .map_err(classify)?;
                Backend::Sqlite {
                    reader,
                    writer: Box::new(writer),
                    inline: InlineReader::new(path.clone()),
                    cache: (config.read_cache_bytes > 0)
                        .then(|| Box::new(ReadCache::new(path, config.read_cache_bytes))),
                    group_sync,
                }
            }
            DatabaseUrl::Postgres(url) => {
                let mut options: PgConnectOptions = url.parse().map_err(StoreError::Other)?;
                if let Some(schema) = &config.schema {
                    if create {
                        create_schema(&options, schema).await?;
                    }
                    options = options.options([("search_path", schema.as_str())]);
                }
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.acquire_timeout)
                    .connect_with(options.clone())
                    .await
                    .map_err(classify)?;
                Backend::Postgres {
                    pool,
                    readers: Box::new(PgReaders::new(
                        options,
                        config.max_connections,
                        config.acquire_timeout,
                    )),
                }
            }
        };
        Ok(Self {
            backend,
            metrics: std::sync::OnceLock::new(),
            webhooks: std::sync::OnceLock::new(),
        })
    }

    /// Queues a webhook delivery to each of `endpoints` with every change that has one,
    /// from now on; the payloads name `tenant`, the tenant whose pool this store is.
    pub fn attach_webhooks(&self, endpoints: Vec<String>, tenant: Option<&str>) {
        let _ = self.webhooks.set(Arc::new(Webhooks {
            endpoints,
            tenant: tenant.map(str::to_owned),
        }));
    }

    /// Reports connection waits and ended sessions to `metrics` from now on.
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Counts a session opened, once it is committed.
    fn opened(&self, method: SignInMethod) {
        if let Some(metrics) = self.metrics.get() {
            metrics.session_created(method.as_str());
        }
    }

    /// The read cache, on SQLite when it is on.
    fn read_cache(&self) -> Option<&ReadCache> {
        match &self.backend {
            Backend::Sqlite {
                cache: Some(cache), ..
            } => Some(cache),
            Backend::Sqlite { cache: None, .. } | Backend::Postgres { .. } => None,
        }
    }

    /// A point read through the read cache on SQLite (`read_cache.rs`): the answer
    /// `hit` finds kept, if the database has not changed since it was kept; else
    /// `read`'s, which `keep` keeps under the database's version read before it began.
    /// On PostgreSQL, `read`'s.
    async fn through_cache<T>(
        &self,
        hit: impl FnOnce(&ReadCache, read_cache::Version) -> Option<T>,
        read: impl std::future::Future<Output = Result<T, StoreError>>,
        keep: impl FnOnce(&ReadCache, read_cache::Version, &T),
    ) -> Result<T, StoreError> {
        let cached = self
            .read_cache()
            .and_then(|cache| cache.version().map(|at| (cache, at)));
        let Some((cache, at)) = cached else {
            return read.await;
        };
        if let Some(found) = hit(cache, at) {
            return Ok(found);
        }
        let found = read.await?;
        keep(cache, at, &found);
        Ok(found)
    }

    /// Counts `count` sessions ended for `cause`, once their deletion is committed.
    fn ended(&self, cause: EndCause, count: u64) {
        if let Some(metrics) = self.metrics.get() {
            metrics.sessions_ended(cause, count);
        }
    }

    /// Whatever the database needs before it serves requests, after its schema is in
    /// place. On SQLite: one committed transaction that changes nothing, so that the
    /// WAL index records the database's size; on PostgreSQL, nothing.
    ///
    /// Until a connection of the process has committed into the current WAL (a WAL is
    /// started afresh whenever the last connection to the file closes), every read
    /// transaction asks the file system for the size of the database file: an `fstat`
    /// per inline read, the one system call a ReadSession makes beside reading the
    /// request and writing the answer (docs/performance/read-path-syscalls.md). A server started on
    /// a database would pay it on every read until its first write. Writing the
    /// header's user version back unchanged writes one page to the WAL. Failing is
    /// harmless: the reads are the same, only slower.
    pub async fn prepare_to_serve(&self) {
        let Backend::Sqlite { writer, .. } = &self.backend else {
            return;
        };
        let primed = async {
            let mut conn = writer.acquire().await?;
            let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
                .fetch_one(&mut *conn)
                .await?;
            // A pragma takes no bound parameters; the value is an integer read just now.
            sqlx::query(&format!("PRAGMA user_version = {version}"))
                .execute(&mut *conn)
                .await
        };
        if let Err(err) = primed.await {
            tracing::debug!(error = %err, "could not prime the WAL index");
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite { .. } => &SQLITE_MIGRATIONS,
            Backend::Postgres { .. } => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies the embedded migrations that the database lacks. Fails without changing
    /// anything when the database has migrations this binary does not know (it is newer).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let migrator = self.migrator();
        // `run_direct`, not `run`: `run`'s future is not `Send` for every lifetime
        // (sqlx's own note on it), and a reload opens tenants' stores from a task.
        match &self.backend {
            // sqlx's migrator takes no lock on SQLite, so two processes opening a new
            // file at once (replicas starting, or reloading the same new tenant) would
            // both apply the first migration. Under one write transaction, the second
            // waits for the first and then finds every migration applied. (Each
            // migration's own transaction is a savepoint inside it.)
            Backend::Sqlite { .. } => on_writer!(self, pool => async {
                let mut conn = acquire!(self, pool);
                let mut tx = conn.begin_write().await?;
                migrator.run_direct(&mut *tx).await?;
                if let Err(err) = tx.commit().await {
                    conn.close_on_drop();
                    return Err(err.into());
                }
                Ok(())
            }
            .await),
            // It takes PostgreSQL's advisory lock.
            Backend::Postgres { .. } => on_writer!(self, pool => async {
                let mut conn = acquire!(self, pool);
                migrator.run_direct(&mut *conn).await
            }
            .await),
        }
    }

    /// Checks, without changing anything, that the database has exactly the migrations
    /// this binary carries.
    pub async fn check_schema(&self) -> Result<(), SchemaError> {
        const SQL: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        let applied =
            on_pool!(self, pool => sqlx::query_as::<_, (i64,)>(SQL).fetch_all(pool).await);
        let applied: Vec<i64> = match applied {
            Ok(rows) => rows.into_iter().map(|(v,)| v).collect(),
            // No bookkeeping table: this database was never migrated.
            Err(sqlx::Error::Database(db)) if outage(db.as_ref()).is_none() => {
                return Err(SchemaError::NotMigrated)
            }
            Err(err) => return Err(SchemaError::Store(classify(err))),
        };
        let known: Vec<i64> = self
            .migrator()
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| m.version)
            .collect();
        if let Some(newer) = applied.iter().find(|v| !known.contains(v)) {
            return Err(SchemaError::Newer(*newer));
        }
        if let Some(missing) = known.iter().find(|v| !applied.contains(v)) {
            return Err(if applied.is_empty() {
                SchemaError::NotMigrated
            } else {
                SchemaError::Older(*missing)
            });
        }
        Ok(())
    }

    /// Runs one of the sweeper's bounded deletes (`$1` now, `$2` the batch); returns how
    /// many rows went. Bounded batches keep each write transaction short, so a large
    /// backlog of expired rows never holds SQLite's write lock for long.
    async fn delete_expired(&self, sql: &str, now: i64, batch: u32) -> Result<u64, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query(sql)
                .bind(now)
                .bind(i64::from(batch))
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected())
        }
        .await)
        .map_err(classify)
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite {
                reader,
                writer,
                inline,
                ..
            } => {
                inline.close();
                reader.close().await;
                writer.close().await;
            }
            Backend::Postgres { pool, readers } => {
                readers.close().await;
                pool.close().await;
            }
        }
    }
}

mod accounts;
mod audit;
mod checkpoint;
mod counters;
mod durable;
mod factors;
mod inline;
mod keys;
mod mail;
mod passkeys;
mod pg_readers;
mod read_cache;
mod sessions;
mod tokens;
use tokens::OneTimeRow;
mod transfer;
mod writer;

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(classify)
    }
}

/// Sorts a driver error into what the caller can act on.
fn classify(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(unique_field(db.as_ref()))
        }
        sqlx::Error::Database(db) => match outage(db.as_ref()) {
            Some(kind) => StoreError::Unavailable(kind, err),
            None => StoreError::Other(err),
        },
        // A connection closed in the middle of the protocol (a proxy in front of a
        // server that is not up yet) is the database not answering, too.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Outage::Unreachable, err),
        _ => StoreError::Other(err),
    }
}

/// Which unique attribute a violation is about: PostgreSQL names the constraint
/// (`users_username_key`), SQLite names the column (`UNIQUE constraint failed: users.username`).
fn unique_field(db: &dyn DatabaseError) -> Unique {
    let name = db.constraint().unwrap_or_else(|| db.message());
    if name.contains("username") {
        Unique::Username
    } else if name.contains("email") {
        Unique::Email
    } else {
        Unique::Id
    }
}

/// Opens a SQLite connection with `open`, again while SQLite answers "busy" without
/// waiting, for up to [`SQLITE_BUSY_TIMEOUT`]. It does so when processes open a new
/// file at once: each must lock it whole to turn it to WAL mode, and SQLite answers
/// one of them at once rather than let both wait for each other.
async fn while_busy<T, F: std::future::Future<Output = Result<T, sqlx::Error>>>(
    mut open: impl FnMut() -> F,
) -> Result<T, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + SQLITE_BUSY_TIMEOUT;
    loop {
        match open().await {
            Err(sqlx::Error::Database(db))
                if outage(db.as_ref()) == Some(Outage::Busy)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            done => return done,
        }
    }
}

/// Errors that say "not now" rather than "never": the database is unreachable, busy,
/// read-only or out of space. Retrying later can succeed.
fn outage(db: &dyn DatabaseError) -> Option<Outage> {
    let code = db.code()?;
    if db.try_downcast_ref::<SqliteError>().is_some() {
        // Primary result codes.
        return match code.parse::<i32>().map(|c| c & 0xff).unwrap_or(0) {
            5 | 6 => Some(Outage::Busy),     // BUSY, LOCKED
            8 => Some(Outage::ReadOnly),     // READONLY
            10 => Some(Outage::Storage),     // IOERR
            13 => Some(Outage::DiskFull),    // FULL
            14 => Some(Outage::Unreachable), // CANTOPEN
            _ => None,
        };
    }
    // SQLSTATE classes and codes.
    match code.as_ref() {
        "53100" => Some(Outage::DiskFull),
        "25006" => Some(Outage::ReadOnly),
        "40001" | "40P01" => Some(Outage::Busy),
        c if c.starts_with("53") => Some(Outage::Busy),
        c if c.starts_with("08") || c.starts_with("57P") => Some(Outage::Unreachable),
        _ => None,
    }
}

impl PoolGauge for SqlStore {
    fn connections(&self) -> (u32, u32) {
        fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> (u32, u32) {
            let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
            (pool.size().saturating_sub(idle), idle)
        }
        match &self.backend {
            Backend::Sqlite { reader, writer, .. } => {
                let (r, w) = (of(reader), writer.connections());
                (r.0 + w.0, r.1 + w.1)
            }
            Backend::Postgres { pool, .. } => of(pool),
        }
    }

    fn sqlite_counts(&self) -> Option<SqliteCounts> {
        match &self.backend {
            Backend::Sqlite {
                group_sync,
                writer,
                cache,
                ..
            } => {
                let (syncs, synced) = group_sync.counts();
                let (cache_hits, cache_misses) = cache.as_ref().map_or((0, 0), |c| c.counts());
                let (batches, batched) = writer.batches();
                let (checkpoints, wal_resets) = writer.checkpoints();
                Some(SqliteCounts {
                    syncs,
                    synced,
                    batches,
                    batched,
                    checkpoints,
                    wal_resets,
                    cache_hits,
                    cache_misses,
                })
            }
            Backend::Postgres { .. } => None,
        }
    }
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_bytes(db: &std::path::Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    #[tokio::test]
    async fn priming_commits_one_page_into_a_fresh_wal_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA user_version = 7; CREATE TABLE t (x);",
            )
            .unwrap();
        }
        // The last connection to close checkpointed the WAL and removed it.
        assert_eq!(wal_bytes(&path), 0);

        let url = DatabaseUrl::Sqlite(path.clone());
        let store = SqlStore::connect(&url, &PoolConfig::default(), false)
            .await
            .unwrap();
        assert_eq!(wal_bytes(&path), 0, "connecting alone writes nothing");
        store.prepare_to_serve().await;
        // The WAL's header, then one frame: its header and a page (4 KiB by default).
        assert_eq!(wal_bytes(&path), 32 + 24 + 4096);
        let (version,): (i64,) = on_pool!(store, pool => {
            sqlx::query_as("PRAGMA user_version").fetch_one(pool).await
        })
        .unwrap();
        assert_eq!(version, 7);
        store.close().await;
    }

    #[tokio::test]
    async fn a_read_cache_of_zero_bytes_is_off() {
        for (bytes, hits) in [(read_cache::BUDGET, 2), (0, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let url = DatabaseUrl::Sqlite(dir.path().join("users.db"));
            let config = PoolConfig {
                read_cache_bytes: bytes,
                ..PoolConfig::default()
            };
            let store = SqlStore::connect(&url, &config, true).await.unwrap();
            store.migrate().await.unwrap();
            rusqlite::Connection::open(dir.path().join("users.db"))
                .unwrap()
                .execute(
                    "INSERT INTO users (id, username, email, password_hash, created, updated, \
                     profile) VALUES ('u1', 'asim', 'asim@example.com', 'x', 1, 1, '{}')",
                    [],
                )
                .unwrap();
            let id = UserId::parse("id", Some("u1".into())).unwrap();
            for _ in 0..3 {
                let user = store.user(Lookup::Id(&id)).await.unwrap().unwrap();
                assert_eq!(user.username, "asim");
            }
            let counts = store.sqlite_counts().unwrap();
            assert_eq!(counts.cache_hits, hits, "{bytes} bytes");
            assert_eq!(counts.cache_misses, if bytes > 0 { 1 } else { 0 });
            store.close().await;
        }
    }

    /// The once-a-second note of sessions' last uses does not empty the read cache:
    /// the sessions kept are read from memory after it, with the use it wrote.
    #[tokio::test]
    async fn noting_sessions_uses_keeps_them_in_the_read_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let store = SqlStore::connect(
            &DatabaseUrl::Sqlite(path.clone()),
            &PoolConfig::default(),
            true,
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let digest = TokenDigest::of(b"a session's token");
        let sql = format!(
            "INSERT INTO users (id, username, email, password_hash, created, updated, profile) \
             VALUES ('u1', 'asim', 'asim@example.com', 'x', 1, 1, '{{}}'); \
             INSERT INTO sessions (token_hash, user_id, created, expires) \
             VALUES ('{}', 'u1', 100, 10000);",
            digest.as_str()
        );
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(&sql)
            .unwrap();
        let live = Liveness {
            now: 200,
            seen_since: i64::MIN,
        };
        let read = || async { store.session(&digest, live).await.unwrap().unwrap() };
        assert_eq!(read().await.last_seen, None);
        store
            .touch_sessions(std::slice::from_ref(&digest), 150)
            .await
            .unwrap();
        let before = store.sqlite_counts().unwrap();
        assert_eq!(read().await.last_seen, Some(150));
        let after = store.sqlite_counts().unwrap();
        assert_eq!(after.cache_hits, before.cache_hits + 1, "read from memory");
        assert_eq!(after.cache_misses, before.cache_misses);
        // A note that changes no row commits nothing: the cache stays as it is.
        store
            .touch_sessions(std::slice::from_ref(&digest), 120)
            .await
            .unwrap();
        assert_eq!(read().await.last_seen, Some(150));
        assert_eq!(
            store.sqlite_counts().unwrap().cache_hits,
            after.cache_hits + 1
        );
        store.close().await;
    }

    #[tokio::test]
    async fn closing_empties_the_wal_though_another_connection_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let url = DatabaseUrl::Sqlite(path.clone());
        let store = SqlStore::connect(&url, &PoolConfig::default(), true)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        // Another connection, as a thread's inline reader still open at exit.
        let other = rusqlite::Connection::open(&path).unwrap();
        let _: i64 = other
            .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
            .unwrap();
        assert!(wal_bytes(&path) > 0, "the migrations are in the WAL");
        store.close().await;
        assert_eq!(
            wal_bytes(&path),
            0,
            "the next start has no WAL to read back"
        );
        let users: i64 = other
            .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
            .unwrap();
        assert_eq!(users, 0);
    }
}
