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

use super::inline::InlineReader;
use super::{
    AttemptLimit, ClaimedMail, CodeCheck, Counter, Credentials, DatabaseUrl, DeletedUser,
    EventLimit, HashChange, Imported, Importer, Lookup, MailOutcome, NewMail, NewSession, NewUser,
    Queued, Redeemed, Redemption, Reservation, SessionRecord, Store, StoreError, StoredSession,
};
use crate::domain::TokenDigest;
use crate::domain::{AccountChanges, Page, Profile, User, UserId, UserQuery};
use crate::domain::{Purpose, RESET_CODE_MAX_WRONG};
use crate::error::{Outage, Unique};

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
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

enum Backend {
    /// SQLite takes one writer at a time. Writes go through a pool of one connection,
    /// so concurrent writers wait their turn in the pool's queue instead of sleeping in
    /// SQLite's busy handler (which made write latency spike under load); reads have a
    /// pool of their own and never wait for writes (WAL).
    Sqlite {
        reader: SqlitePool,
        writer: SqlitePool,
        /// The hot point reads, without sqlx's thread hand-off; falls back to `reader`.
        inline: InlineReader,
    },
    Postgres(PgPool),
}

pub struct SqlStore {
    backend: Backend,
}

/// Runs `$body`, a read, with `$pool` bound to the store's pool for reading.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { reader: $pool, .. } => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body`, which writes, with `$pool` bound to the store's pool for writing.
macro_rules! on_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite { writer: $pool, .. } => $body,
            Backend::Postgres($pool) => $body,
        }
    };
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

/// Appends `a, b, c` as bound parameters.
macro_rules! push_list {
    ($query:expr, $values:expr) => {{
        let mut list = $query.separated(", ");
        for value in $values {
            list.push_bind(value);
        }
    }};
}

type UserRow = (String, String, String, i64, i64, bool, i64, String);
type CredentialsRow = (String, String, String, i64, i64, bool, i64, String, String);
type SessionRow = (String, String, String, i64, i64);
type StoredSessionRow = (String, String, i64, i64);
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

fn stored_session((digest, user_id, created, expires): StoredSessionRow) -> StoredSession {
    StoredSession {
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

impl SqlStore {
    /// Opens the pool. SQLite runs in WAL mode with full fsync on commit, a busy timeout
    /// and foreign keys on; its file is created when missing if `create` is set.
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
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(config.acquire_timeout)
                    .test_before_acquire(false)
                    .connect_with(options.clone())
                    .await
                    .map_err(classify)?;
                let reader = SqlitePoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.acquire_timeout)
                    .test_before_acquire(false)
                    .connect_with(options.create_if_missing(false))
                    .await
                    .map_err(classify)?;
                Backend::Sqlite {
                    reader,
                    writer,
                    inline: InlineReader::new(path.clone()),
                }
            }
            DatabaseUrl::Postgres(url) => {
                let options: PgConnectOptions = url.parse().map_err(StoreError::Other)?;
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(classify)?;
                Backend::Postgres(pool)
            }
        };
        Ok(Self { backend })
    }

    /// On SQLite, commits one transaction that changes nothing, so that the WAL index
    /// records the database's size; nothing on PostgreSQL.
    ///
    /// Until a connection of the process has committed into the current WAL (a WAL is
    /// started afresh whenever the last connection to the file closes), every read
    /// transaction asks the file system for the size of the database file: an `fstat`
    /// per inline read, the one system call a ReadSession makes beside reading the
    /// request and writing the answer (BENCHMARKS.md, finding 5). A server started on
    /// a database would pay it on every read until its first write. Writing the
    /// header's user version back unchanged writes one page to the WAL. Failing is
    /// harmless: the reads are the same, only slower.
    pub async fn prime_wal_index(&self) {
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
            Backend::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies the embedded migrations that the database lacks. Fails without changing
    /// anything when the database has migrations this binary does not know (it is newer).
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let migrator = self.migrator();
        on_writer!(self, pool => migrator.run(pool).await)
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
        on_writer!(self, pool => {
            sqlx::query(sql)
                .bind(now)
                .bind(i64::from(batch))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite {
                reader,
                writer,
                inline,
            } => {
                inline.close();
                reader.close().await;
                writer.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(classify)
    }

    async fn insert_user(&self, new: NewUser<'_>) -> Result<User, StoreError> {
        const SQL: &str =
            "INSERT INTO users (id, username, email, password_hash, created, updated, profile) \
                           VALUES ($1, $2, $3, $4, $5, $5, $6)";
        let profile = profile_json(new.profile);
        // The deleted ids are looked at after the insert, in the same transaction: on
        // PostgreSQL an insert that waited for a concurrent Delete of the same id to
        // commit sees that Delete's tombstone only from a later statement.
        let deleted_id = on_writer!(self, pool => async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            sqlx::query(SQL)
                .bind(new.id.as_str())
                .bind(new.username.as_str())
                .bind(new.email.as_str())
                .bind(new.password_hash)
                .bind(new.now)
                .bind(&profile)
                .execute(&mut *tx)
                .await?;
            let (deleted,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM deleted_users WHERE id = $1")
                    .bind(new.id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            if deleted > 0 {
                tx.rollback().await?;
                return Ok(true);
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(false)
        }
        .await)
        .map_err(classify)?;
        if deleted_id {
            return Err(StoreError::Conflict(Unique::Id));
        }
        Ok(User {
            id: new.id.as_str().to_owned(),
            username: new.username.as_str().to_owned(),
            email: new.email.as_str().to_owned(),
            created: new.now,
            updated: new.now,
            verified: false,
            verification_date: 0,
            profile: new.profile.clone(),
        })
    }

    async fn user(&self, lookup: Lookup<'_>) -> Result<Option<User>, StoreError> {
        let (sql, key) = select_by!(lookup, user_columns!());
        inline_first!(self, query_row(sql, ["$1" => key]), user_row, |row: Option<UserRow>| row
            .map(user)
            .transpose());
        on_pool!(self, pool => {
            sqlx::query_as::<_, UserRow>(sql).bind(key).fetch_optional(pool).await
        })
        .map_err(classify)?
        .map(user)
        .transpose()
    }

    async fn list_users(&self, page: Page) -> Result<Vec<User>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY created, id LIMIT $1 OFFSET $2"
        );
        let offset = i64::try_from(page.offset).unwrap_or(i64::MAX);
        on_pool!(self, pool => {
            sqlx::query_as::<_, UserRow>(SQL)
                .bind(i64::from(page.limit))
                .bind(offset)
                .fetch_all(pool)
                .await
        })
        .map_err(classify)
        .and_then(users)
    }

    async fn credentials(&self, lookup: Lookup<'_>) -> Result<Option<Credentials>, StoreError> {
        let (sql, key) = select_by!(lookup, user_columns!(), ", password_hash");
        inline_first!(self, query_row(sql, ["$1" => key]), credentials_row, |row: Option<
            CredentialsRow,
        >| row
            .map(credentials)
            .transpose());
        on_pool!(self, pool => {
            sqlx::query_as::<_, CredentialsRow>(sql).bind(key).fetch_optional(pool).await
        })
        .map_err(classify)?
        .map(credentials)
        .transpose()
    }

    async fn update_user(
        &self,
        id: &UserId,
        changes: &AccountChanges,
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        // A new e-mail address is not verified, whatever the old one was: the SET
        // expressions read the row's old values, so `email` there is the old address.
        // (The migration's trigger withdraws the tokens mailed to the old address.)
        const SQL: &str = concat!(
            "UPDATE users SET username = COALESCE($2, username), email = COALESCE($3, email), \
             verified = CASE WHEN COALESCE($3, email) = email THEN verified ELSE FALSE END, \
             verification_date = CASE WHEN COALESCE($3, email) = email \
                                 THEN verification_date ELSE 0 END, \
             profile = COALESCE($5, profile), updated = $4 WHERE id = $1 RETURNING ",
            user_columns!()
        );
        let username = changes.username.as_ref().map(|u| u.as_str());
        let email = changes.email.as_ref().map(|e| e.as_str());
        let profile = changes.profile.as_ref().map(profile_json);
        on_writer!(self, pool => {
            // fetch_all, not fetch_optional: sqlx's SQLite driver resets a statement it
            // stops reading early and drops the error of that reset, which is where an
            // UPDATE ... RETURNING commits. A commit failure (disk full) would be lost.
            sqlx::query_as::<_, UserRow>(SQL)
                .bind(id.as_str())
                .bind(username)
                .bind(email)
                .bind(now)
                .bind(&profile)
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?
        .into_iter()
        .next()
        .map(user)
        .transpose()
    }

    async fn delete_user(&self, id: &UserId, now: i64) -> Result<bool, StoreError> {
        // Sessions and tokens go first in the same transaction; the foreign keys' ON
        // DELETE CASCADE would do the same, this keeps the rule visible here. The id is
        // kept, so that it is never issued again.
        const TOMBSTONE: &str = "INSERT INTO deleted_users (id, deleted) \
                                 SELECT id, $2 FROM users WHERE id = $1 \
                                 ON CONFLICT (id) DO NOTHING";
        on_writer!(self, pool => async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            for sql in ["DELETE FROM sessions WHERE user_id = $1", "DELETE FROM tokens WHERE user_id = $1"] {
                sqlx::query(sql).bind(id.as_str()).execute(&mut *tx).await?;
            }
            sqlx::query(TOMBSTONE)
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(deleted == 1)
        }
        .await)
        .map_err(classify)
    }

    async fn search_users(&self, query: &UserQuery) -> Result<Vec<User>, StoreError> {
        macro_rules! search {
            ($filter:literal) => {
                concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE ",
                    $filter,
                    " ORDER BY created, id LIMIT $3 OFFSET $4"
                )
            };
        }
        let sql = match (&query.username, &query.email) {
            (Some(_), Some(_)) => search!("username = $1 AND email = $2"),
            (Some(_), None) => search!("username = $1 AND $2 IS NULL"),
            _ => search!("email = $2 AND $1 IS NULL"),
        };
        let limit = i64::from(query.page.limit);
        let offset = i64::try_from(query.page.offset).unwrap_or(i64::MAX);
        let username = query.username.as_ref().map(|u| u.as_str());
        let email = query.email.as_ref().map(|e| e.as_str());
        inline_first!(
            self,
            query_all(sql, ["$1" => username, "$2" => email, "$3" => limit, "$4" => offset]),
            user_row,
            users
        );
        on_pool!(self, pool => {
            sqlx::query_as::<_, UserRow>(sql)
                .bind(username)
                .bind(email)
                .bind(limit)
                .bind(offset)
                .fetch_all(pool)
                .await
        })
        .map_err(classify)
        .and_then(users)
    }

    async fn replace_password(
        &self,
        id: &str,
        expected: &str,
        new_hash: &str,
        change: HashChange,
    ) -> Result<bool, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let replaced = match change {
                HashChange::NewPassword { now } => sqlx::query(
                    "UPDATE users SET password_hash = $3, updated = $4 \
                     WHERE id = $1 AND password_hash = $2",
                )
                .bind(id)
                .bind(expected)
                .bind(new_hash)
                .bind(now),
                HashChange::Rehash => sqlx::query(
                    "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                )
                .bind(id)
                .bind(expected)
                .bind(new_hash),
            }
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if replaced && matches!(change, HashChange::NewPassword { .. }) {
                sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(replaced)
        }
        .await)
        .map_err(classify)
    }

    async fn insert_session(
        &self,
        session: NewSession<'_>,
        expected_hash: &str,
    ) -> Result<bool, StoreError> {
        macro_rules! insert_if_unchanged {
            () => {
                "INSERT INTO sessions (token_hash, user_id, created, expires) \
                 SELECT $1, id, $3, $4 FROM users WHERE id = $2 AND password_hash = $5"
            };
        }
        // On PostgreSQL, READ COMMITTED would let this read the old hash while a password
        // change is still uncommitted, and insert after that change deleted the user's
        // sessions. FOR SHARE waits for such a change and rechecks the hash after it.
        // SQLite runs one writer at a time, so the plain statement is already safe there.
        let sql = match self.backend {
            Backend::Sqlite { .. } => insert_if_unchanged!(),
            Backend::Postgres(_) => concat!(insert_if_unchanged!(), " FOR SHARE"),
        };
        on_writer!(self, pool => {
            sqlx::query(sql)
                .bind(session.digest.as_str())
                .bind(session.user_id)
                .bind(session.created)
                .bind(session.expires)
                .bind(expected_hash)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(classify)
    }

    async fn session(
        &self,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        const SQL: &str = "SELECT s.user_id, u.username, u.email, s.created, s.expires \
                           FROM sessions s JOIN users u ON u.id = s.user_id \
                           WHERE s.token_hash = $1 AND s.expires > $2";
        let record = |(user_id, username, email, created, expires): SessionRow| SessionRecord {
            user_id,
            username,
            email,
            created,
            expires,
        };
        inline_first!(
            self,
            query_row(SQL, ["$1" => digest.as_str(), "$2" => now]),
            |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
            |row: Option<SessionRow>| Ok(row.map(record))
        );
        on_pool!(self, pool => {
            sqlx::query_as::<_, SessionRow>(SQL)
                .bind(digest.as_str())
                .bind(now)
                .fetch_optional(pool)
                .await
        })
        .map(|row| row.map(record))
        .map_err(classify)
    }

    async fn delete_session(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        on_writer!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                .bind(digest.as_str())
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(classify)
    }

    async fn delete_sessions(&self, user_id: &str) -> Result<u64, StoreError> {
        on_writer!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)
    }

    async fn queue_mail(
        &self,
        limit: EventLimit<'_>,
        mail: Option<NewMail<'_>>,
    ) -> Result<Queued, StoreError> {
        // The user's previous token of this purpose goes first (its queued message with
        // it). The token is written from the user's row, so nothing is written for a
        // user deleted meanwhile; the WHERE clause also tells SQLite's parser that ON
        // CONFLICT is the insert's. A conflict means a concurrent request for the same
        // user and purpose stored its token first: that one is sent.
        const REPLACE: &str = "DELETE FROM tokens WHERE user_id = $1 AND purpose = $2";
        const TOKEN: &str = "INSERT INTO tokens (token_hash, user_id, purpose, created, expires) \
                             SELECT $1, id, $3, $4, $5 FROM users WHERE id = $2 \
                             ON CONFLICT DO NOTHING";
        const MESSAGE: &str = "INSERT INTO outbox (token_hash, user_id, kind, recipient, \
                               from_name, subject, body, state, attempts, next_attempt, \
                               lease_until, created) \
                               VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, 0, $8)";
        on_writer!(self, pool => async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            sqlx::query(add_event!())
                .bind(limit.key)
                .bind(limit.now)
                .bind(limit.window)
                .execute(&mut *tx)
                .await?;
            let counted: CounterRow = sqlx::query_as(SELECT_COUNTER)
                .bind(limit.key)
                .fetch_one(&mut *tx)
                .await?;
            let counted = counter(counted);
            let outcome = match mail {
                _ if !counted.within(limit.max) => Queued::Limited(counted),
                None => Queued::Counted,
                Some(mail) => {
                    let token = &mail.token;
                    sqlx::query(REPLACE)
                        .bind(token.user_id)
                        .bind(token.purpose.as_str())
                        .execute(&mut *tx)
                        .await?;
                    let stored = sqlx::query(TOKEN)
                        .bind(token.digest.as_str())
                        .bind(token.user_id)
                        .bind(token.purpose.as_str())
                        .bind(token.created)
                        .bind(token.expires)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                    if stored {
                        sqlx::query(MESSAGE)
                            .bind(token.digest.as_str())
                            .bind(token.user_id)
                            .bind(token.purpose.as_str())
                            .bind(mail.recipient)
                            .bind(mail.from_name)
                            .bind(mail.subject)
                            .bind(mail.body)
                            .bind(limit.now)
                            .execute(&mut *tx)
                            .await?;
                        Queued::Queued
                    } else {
                        Queued::Counted
                    }
                }
            };
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(outcome)
        }
        .await)
        .map_err(classify)
    }

    async fn claim_mail(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedMail>, StoreError> {
        macro_rules! claim {
            ($lock:literal) => {
                concat!(
                    "UPDATE outbox SET attempts = attempts + 1, lease_until = $2 \
                     WHERE lease_until <= $1 AND id IN (SELECT id FROM outbox \
                     WHERE state = 'queued' AND next_attempt <= $1 AND lease_until <= $1 \
                     AND (token_hash IS NULL OR EXISTS (SELECT 1 FROM tokens t \
                     WHERE t.token_hash = outbox.token_hash AND t.expires > $1)) \
                     ORDER BY next_attempt, id LIMIT $3",
                    $lock,
                    ") RETURNING id, user_id, kind, recipient, from_name, subject, body, \
                     attempts, lease_until"
                )
            };
        }
        // SQLite runs one writer at a time, so its claims never overlap; PostgreSQL's
        // concurrent claims skip the rows another has locked.
        let sql = match self.backend {
            Backend::Sqlite { .. } => claim!(""),
            Backend::Postgres(_) => claim!(" FOR UPDATE SKIP LOCKED"),
        };
        type Row = (
            i64,
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            i64,
            i64,
        );
        on_writer!(self, pool => {
            sqlx::query_as::<_, Row>(sql)
                .bind(now)
                .bind(lease_until)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map(|rows| {
            rows.into_iter()
                .map(
                    |(
                        id,
                        user_id,
                        kind,
                        recipient,
                        from_name,
                        subject,
                        body,
                        attempts,
                        lease_until,
                    )| {
                        ClaimedMail {
                            id,
                            user_id,
                            kind,
                            recipient,
                            from_name,
                            subject,
                            body,
                            attempts,
                            lease_until,
                        }
                    },
                )
                .collect()
        })
        .map_err(classify)
    }

    async fn mail_attempted(
        &self,
        mail: &ClaimedMail,
        outcome: MailOutcome,
    ) -> Result<(), StoreError> {
        // Only under the claim it was sent under: a message that went with its token
        // meanwhile, or whose lease ran out and another sender took, is left alone.
        macro_rules! claimed {
            ($set:literal) => {
                concat!(
                    "UPDATE outbox SET ",
                    $set,
                    ", lease_until = 0 WHERE id = $1 AND state = 'queued' AND lease_until = $2"
                )
            };
        }
        on_writer!(self, pool => async {
            match outcome {
                MailOutcome::Sent => {
                    sqlx::query(claimed!("state = 'sent', body = ''"))
                        .bind(mail.id)
                        .bind(mail.lease_until)
                        .execute(pool)
                        .await?;
                }
                MailOutcome::Retry { next_attempt } => {
                    sqlx::query(claimed!("next_attempt = $3"))
                        .bind(mail.id)
                        .bind(mail.lease_until)
                        .bind(next_attempt)
                        .execute(pool)
                        .await?;
                }
                MailOutcome::GiveUp => {
                    // The message is kept (without its body or token) as a record that
                    // it was given up; the token no one will receive is withdrawn.
                    let mut conn = pool.acquire().await?;
                    let mut tx = conn.begin().await?;
                    let token: Option<(Option<String>,)> = sqlx::query_as(
                        "SELECT token_hash FROM outbox \
                         WHERE id = $1 AND state = 'queued' AND lease_until = $2",
                    )
                    .bind(mail.id)
                    .bind(mail.lease_until)
                    .fetch_optional(&mut *tx)
                    .await?;
                    sqlx::query(claimed!("state = 'dead', body = '', token_hash = NULL"))
                        .bind(mail.id)
                        .bind(mail.lease_until)
                        .execute(&mut *tx)
                        .await?;
                    if let Some((Some(token),)) = token {
                        sqlx::query("DELETE FROM tokens WHERE token_hash = $1")
                            .bind(token)
                            .execute(&mut *tx)
                            .await?;
                    }
                    commit!(tx, conn);
                }
            }
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn delete_old_mail(&self, before: i64, batch: u32) -> Result<u64, StoreError> {
        self.delete_expired(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
             WHERE state <> 'queued' AND created <= $1 LIMIT $2)",
            before,
            batch,
        )
        .await
    }

    async fn check_reset_code(
        &self,
        user_id: &str,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<CodeCheck, StoreError> {
        // One statement finds the account's live code, counts a wrong try against it
        // and tells whether the code matched, so concurrent wrong codes each count.
        const SQL: &str = "UPDATE tokens SET attempts = attempts + \
                           CASE WHEN token_hash = $2 THEN 0 ELSE 1 END \
                           WHERE user_id = $1 AND purpose = $3 AND expires > $4 \
                           AND attempts < $5 RETURNING token_hash";
        let found = on_writer!(self, pool => {
            // fetch_all for the reason given in update_user.
            sqlx::query_as::<_, (String,)>(SQL)
                .bind(user_id)
                .bind(digest.as_str())
                .bind(Purpose::ResetPassword.as_str())
                .bind(now)
                .bind(RESET_CODE_MAX_WRONG)
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        Ok(match found.first() {
            Some((hash,)) if hash == digest.as_str() => CodeCheck::Valid,
            _ => CodeCheck::Wrong,
        })
    }

    async fn redeem_token(
        &self,
        digest: &TokenDigest,
        purpose: Purpose,
        now: i64,
        effect: Redemption<'_>,
    ) -> Result<Redeemed, StoreError> {
        // Deleting the row is what uses the token: of two transactions deleting it, the
        // second deletes nothing (PostgreSQL makes it wait for the first and re-check;
        // SQLite runs one writer at a time) and reports the token not found. A plain
        // DELETE, not DELETE ... RETURNING: on SQLite a failing RETURNING statement
        // inside a transaction (a full disk) left the connection unusable.
        const FIND: &str = "SELECT user_id, expires, attempts FROM tokens \
                            WHERE token_hash = $1 AND purpose = $2";
        const CONSUME: &str = "DELETE FROM tokens WHERE token_hash = $1 AND purpose = $2";
        on_writer!(self, pool => async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let found: Option<(String, i64, i64)> = sqlx::query_as(FIND)
                .bind(digest.as_str())
                .bind(purpose.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some((user_id, expires, attempts)) = found else {
                return Ok(Redeemed::NotFound);
            };
            // A reset code that too many wrong codes were tried against is void.
            if attempts >= RESET_CODE_MAX_WRONG {
                return Ok(Redeemed::NotFound);
            }
            let consumed = sqlx::query(CONSUME)
                .bind(digest.as_str())
                .bind(purpose.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if consumed != 1 {
                return Ok(Redeemed::NotFound);
            }
            if expires <= now {
                commit!(tx, conn);
                return Ok(Redeemed::Expired);
            }
            match effect {
                Redemption::VerifyEmail => {
                    sqlx::query(
                        "UPDATE users SET verified = TRUE, verification_date = $2, updated = $2 \
                         WHERE id = $1",
                    )
                    .bind(&user_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Redemption::NewPassword { hash } => {
                    sqlx::query("UPDATE users SET password_hash = $2, updated = $3 WHERE id = $1")
                        .bind(&user_id)
                        .bind(hash)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                        .bind(&user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                Redemption::OpenSession { digest, expires } => {
                    sqlx::query(
                        "INSERT INTO sessions (token_hash, user_id, created, expires) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(digest.as_str())
                    .bind(&user_id)
                    .bind(now)
                    .bind(expires)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(Redeemed::Done { user_id })
        }
        .await)
        .map_err(classify)
    }

    async fn delete_expired_tokens(&self, now: i64, batch: u32) -> Result<u64, StoreError> {
        self.delete_expired(
            "DELETE FROM tokens WHERE token_hash IN \
             (SELECT token_hash FROM tokens WHERE expires <= $1 LIMIT $2)",
            now,
            batch,
        )
        .await
    }

    async fn delete_expired_sessions(&self, now: i64, batch: u32) -> Result<u64, StoreError> {
        self.delete_expired(
            "DELETE FROM sessions WHERE token_hash IN \
             (SELECT token_hash FROM sessions WHERE expires <= $1 LIMIT $2)",
            now,
            batch,
        )
        .await
    }

    async fn reserve_attempts(
        &self,
        limits: &[AttemptLimit<'_>],
        now: i64,
        window: i64,
    ) -> Result<Reservation, StoreError> {
        // Counts the attempt unless the key is locked out or its window is full. One
        // statement per key decides and counts, under the row's lock: concurrent
        // reservations (on any replica) queue on it, and each sees the count the one
        // before it left. The keys share one transaction, so a refusal by the second
        // takes back the first. No RETURNING inside the transaction: on SQLite a
        // RETURNING statement that fails there (a full disk) leaves the connection
        // inside a transaction that never ends.
        const RESERVE: &str = "INSERT INTO rate_limits \
             (key, count, window_start, blocked_until, strikes, updated) \
             VALUES ($1, 1, $2, 0, 0, $2) \
             ON CONFLICT (key) DO UPDATE SET \
             count = CASE WHEN rate_limits.window_start <= $2 - $3 THEN 1 \
                          ELSE rate_limits.count + 1 END, \
             window_start = CASE WHEN rate_limits.window_start <= $2 - $3 THEN $2 \
                                 ELSE rate_limits.window_start END, \
             updated = $2 \
             WHERE rate_limits.blocked_until <= $2 \
             AND (rate_limits.window_start <= $2 - $3 OR rate_limits.count < $4)";
        on_writer!(self, pool => async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let mut window_starts = Vec::with_capacity(limits.len());
            for limit in limits {
                let counted = sqlx::query(RESERVE)
                    .bind(limit.key)
                    .bind(now)
                    .bind(window)
                    .bind(i64::from(limit.max))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                let row: Option<CounterRow> = sqlx::query_as(SELECT_COUNTER)
                    .bind(limit.key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let counter = row.map(counter).unwrap_or(Counter {
                    count: 0,
                    window_start: now,
                    blocked_until: 0,
                    strikes: 0,
                });
                if !counted {
                    tx.rollback().await?;
                    return Ok(Reservation::Refused(counter));
                }
                window_starts.push(counter.window_start);
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(Reservation::Granted { window_starts })
        }
        .await)
        .map_err(classify)
    }

    async fn counter(&self, key: &str) -> Result<Option<Counter>, StoreError> {
        // On the writer: on SQLite it has seen every commit of this process, so a
        // failure reported right after its reservation finds it counted.
        on_writer!(self, pool => {
            sqlx::query_as::<_, CounterRow>(SELECT_COUNTER)
                .bind(key)
                .fetch_optional(pool)
                .await
        })
        .map(|row| row.map(counter))
        .map_err(classify)
    }

    async fn lock(
        &self,
        key: &str,
        now: i64,
        until: i64,
        strikes: i64,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE rate_limits SET blocked_until = $3, strikes = strikes + 1, \
                           count = 0, window_start = $2, updated = $2 \
                           WHERE key = $1 AND blocked_until <= $2 AND strikes = $4";
        on_writer!(self, pool => {
            sqlx::query(SQL)
                .bind(key)
                .bind(now)
                .bind(until)
                .bind(strikes)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(classify)
    }

    async fn attempt_succeeded(
        &self,
        forget: Option<&str>,
        give_back: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        const FORGET: &str = "DELETE FROM rate_limits WHERE key = $1";
        const GIVE_BACK: &str = "UPDATE rate_limits SET count = count - 1 \
                                 WHERE key = $1 AND window_start = $2 AND count > 0";
        on_writer!(self, pool => async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin().await?;
            if let Some(key) = forget {
                sqlx::query(FORGET).bind(key).execute(&mut *tx).await?;
            }
            if let Some((key, window_start)) = give_back {
                sqlx::query(GIVE_BACK)
                    .bind(key)
                    .bind(window_start)
                    .execute(&mut *tx)
                    .await?;
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn forget_counters(&self, keys: &[&str]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        on_writer!(self, pool => {
            let mut query = QueryBuilder::new("DELETE FROM rate_limits WHERE key IN (");
            push_list!(query, keys.iter().copied());
            query.push(")");
            query.build().execute(pool).await.map(drop)
        })
        .map_err(classify)
    }

    async fn count_event(&self, key: &str, now: i64, window: i64) -> Result<Counter, StoreError> {
        on_writer!(self, pool => {
            // fetch_all for the reason given in update_user.
            sqlx::query_as::<_, CounterRow>(COUNT_EVENT)
                .bind(key)
                .bind(now)
                .bind(window)
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?
        .into_iter()
        .next()
        .map(counter)
        .ok_or(StoreError::Other(sqlx::Error::RowNotFound))
    }

    async fn delete_stale_counters(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM rate_limits WHERE updated < $1 AND blocked_until <= $2";
        on_writer!(self, pool => {
            sqlx::query(SQL)
                .bind(before)
                .bind(now)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)
    }

    async fn users_page(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Credentials>, StoreError> {
        // Keyset pagination on the (created, id) index: each page is a short query, so a
        // long export never holds a read transaction open or skips rows.
        const SQL: &str = concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE (created, id) > ($1, $2) \
             ORDER BY created, id LIMIT $3"
        );
        let (created, id) = after.unwrap_or((i64::MIN, String::new()));
        on_pool!(self, pool => {
            sqlx::query_as::<_, CredentialsRow>(SQL)
                .bind(created)
                .bind(&id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?
        .into_iter()
        .map(credentials)
        .collect()
    }

    async fn sessions_page(
        &self,
        after: Option<TokenDigest>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<StoredSession>, StoreError> {
        const SQL: &str = "SELECT token_hash, user_id, created, expires FROM sessions \
                           WHERE token_hash > $1 AND expires > $2 ORDER BY token_hash LIMIT $3";
        let after = after.map(|d| d.as_str().to_owned()).unwrap_or_default();
        on_pool!(self, pool => {
            sqlx::query_as::<_, StoredSessionRow>(SQL)
                .bind(&after)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map(|rows| rows.into_iter().map(stored_session).collect())
        .map_err(classify)
    }

    async fn deleted_users_page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeletedUser>, StoreError> {
        const SQL: &str =
            "SELECT id, deleted FROM deleted_users WHERE id > $1 ORDER BY id LIMIT $2";
        on_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64)>(SQL)
                .bind(after.unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map(|rows| {
            rows.into_iter()
                .map(|(id, deleted)| DeletedUser { id, deleted })
                .collect()
        })
        .map_err(classify)
    }

    async fn begin_import(&self, skip_existing: bool) -> Result<Box<dyn Importer>, StoreError> {
        let importer = match &self.backend {
            Backend::Sqlite { writer, .. } => {
                SqlImporter::Sqlite(writer.begin().await.map_err(classify)?, skip_existing)
            }
            Backend::Postgres(pool) => {
                SqlImporter::Postgres(pool.begin().await.map_err(classify)?, skip_existing)
            }
        };
        Ok(Box::new(importer))
    }
}

/// The values `$sql` (a query of one text column ending in `IN (`) finds for the list
/// `$values`, as a set, read inside the import's transaction `$tx`.
macro_rules! select_set {
    ($tx:expr, $sql:expr, $values:expr) => {{
        let mut query = QueryBuilder::new($sql);
        push_list!(query, $values);
        query.push(")");
        query
            .build_query_as::<(String,)>()
            .fetch_all(&mut **$tx)
            .await?
            .into_iter()
            .map(|(value,)| value)
            .collect::<HashSet<String>>()
    }};
}

/// An import's transaction on whichever backend the store has.
enum SqlImporter {
    Sqlite(Transaction<'static, Sqlite>, bool),
    Postgres(Transaction<'static, Postgres>, bool),
}

/// Runs `$body` with `$tx` bound to the import's open transaction.
macro_rules! on_tx {
    ($importer:expr, $tx:ident, $skip:ident => $body:expr) => {
        match $importer {
            SqlImporter::Sqlite($tx, $skip) => $body,
            SqlImporter::Postgres($tx, $skip) => $body,
        }
    };
}

#[async_trait]
impl Importer for SqlImporter {
    async fn users(&mut self, batch: &[Credentials]) -> Result<Vec<Imported>, StoreError> {
        // Conflicts are looked up first rather than caught from the INSERT: on
        // PostgreSQL a failed statement would abort the whole import's transaction, and
        // the import wants to report every conflict, not just the first. One query per
        // batch looks them up and one multi-row INSERT writes the rest.
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, skip_existing => async {
            let mut query = QueryBuilder::new("SELECT id, username, email FROM users WHERE id IN (");
            push_list!(query, batch.iter().map(|c| c.user.id.as_str()));
            query.push(") OR username IN (");
            push_list!(query, batch.iter().map(|c| c.user.username.as_str()));
            query.push(") OR email IN (");
            push_list!(query, batch.iter().map(|c| c.user.email.as_str()));
            query.push(")");
            let existing: Vec<(String, String, String)> =
                query.build_query_as().fetch_all(&mut **tx).await?;
            let deleted = select_set!(
                tx,
                "SELECT id FROM deleted_users WHERE id IN (",
                batch.iter().map(|c| c.user.id.as_str())
            );
            let mut ids: HashSet<String> = HashSet::new();
            let mut usernames: HashSet<String> = HashSet::new();
            let mut emails: HashSet<String> = HashSet::new();
            for (id, username, email) in existing {
                ids.insert(id);
                usernames.insert(username);
                emails.insert(email);
            }
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for record in batch {
                let u = &record.user;
                // Earlier records of this batch count as existing too.
                let outcome = if ids.contains(&u.id) {
                    if *skip_existing { Imported::Skipped } else { Imported::Taken(Unique::Id) }
                } else if deleted.contains(&u.id) {
                    if *skip_existing { Imported::Skipped } else { Imported::Deleted }
                } else if usernames.contains(&u.username) {
                    Imported::Taken(Unique::Username)
                } else if emails.contains(&u.email) {
                    Imported::Taken(Unique::Email)
                } else {
                    ids.insert(u.id.clone());
                    usernames.insert(u.username.clone());
                    emails.insert(u.email.clone());
                    fresh.push(record);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO users (id, username, email, password_hash, created, updated, \
                     verified, verification_date, profile) ",
                );
                insert.push_values(fresh, |mut row, record| {
                    row.push_bind(record.user.id.as_str())
                        .push_bind(record.user.username.as_str())
                        .push_bind(record.user.email.as_str())
                        .push_bind(record.password_hash.as_str())
                        .push_bind(record.user.created)
                        .push_bind(record.user.updated)
                        .push_bind(record.user.verified)
                        .push_bind(record.user.verification_date)
                        .push_bind(profile_json(&record.user.profile));
                });
                insert.build().execute(&mut **tx).await?;
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn sessions(&mut self, batch: &[StoredSession]) -> Result<Vec<Imported>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, skip_existing => async {
            let mut tokens = select_set!(
                tx,
                "SELECT token_hash FROM sessions WHERE token_hash IN (",
                batch.iter().map(|s| s.digest.as_str())
            );
            let users = select_set!(
                tx,
                "SELECT id FROM users WHERE id IN (",
                batch.iter().map(|s| s.user_id.as_str())
            );
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for session in batch {
                let outcome = if tokens.contains(session.digest.as_str()) {
                    if *skip_existing { Imported::Skipped } else { Imported::Taken(Unique::Id) }
                } else if !users.contains(&session.user_id) {
                    Imported::UnknownUser
                } else {
                    tokens.insert(session.digest.as_str().to_owned());
                    fresh.push(session);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert =
                    QueryBuilder::new("INSERT INTO sessions (token_hash, user_id, created, expires) ");
                insert.push_values(fresh, |mut row, session| {
                    row.push_bind(session.digest.as_str())
                        .push_bind(session.user_id.as_str())
                        .push_bind(session.created)
                        .push_bind(session.expires);
                });
                insert.build().execute(&mut **tx).await?;
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn deleted_users(&mut self, batch: &[DeletedUser]) -> Result<Vec<Imported>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, _skip_existing => async {
            let ids = || batch.iter().map(|d| d.id.as_str());
            let live = select_set!(tx, "SELECT id FROM users WHERE id IN (", ids());
            let mut known = select_set!(tx, "SELECT id FROM deleted_users WHERE id IN (", ids());
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for deleted in batch {
                let outcome = if live.contains(&deleted.id) {
                    Imported::Taken(Unique::Id)
                } else if !known.insert(deleted.id.clone()) {
                    Imported::Skipped
                } else {
                    fresh.push(deleted);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert = QueryBuilder::new("INSERT INTO deleted_users (id, deleted) ");
                insert.push_values(fresh, |mut row, deleted| {
                    row.push_bind(deleted.id.as_str()).push_bind(deleted.deleted);
                });
                insert.build().execute(&mut **tx).await?;
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        match *self {
            SqlImporter::Sqlite(tx, _) => tx.commit().await,
            SqlImporter::Postgres(tx, _) => tx.commit().await,
        }
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
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
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
        store.prime_wal_index().await;
        // The WAL's header, then one frame: its header and a page (4 KiB by default).
        assert_eq!(wal_bytes(&path), 32 + 24 + 4096);
        let (version,): (i64,) = on_pool!(store, pool => {
            sqlx::query_as("PRAGMA user_version").fetch_one(pool).await
        })
        .unwrap();
        assert_eq!(version, 7);
        store.close().await;
    }
}
