//! SQLite's one writing connection, held by the store rather than by a pool.
//!
//! SQLite takes one writer at a time, so the service writes through one connection and
//! concurrent writers wait their turn here, in order, instead of sleeping in SQLite's
//! busy handler. A pool of one connection did the same, but on every return sqlx's pool
//! sends the connection a ping, through its worker thread, before the next writer may
//! have it: one more thread hand-off in every write, while every other writer waits
//! (docs/performance/group-commit.md). This lock hands the connection over directly.
//!
//! A write whose COMMIT failed leaves the connection in a state nobody knows (SQLite
//! may or may not have rolled the transaction back by itself): it is marked, and the
//! next writer gets a new connection.
//!
//! So does a connection that a write left inside a transaction no one will end. sqlx
//! 0.8 leaves one when a `BEGIN IMMEDIATE` is cancelled (a client hanging up) after the
//! statement ran but before its `Transaction` existed: its depth counter stays at one,
//! and every later `begin_with` fails ("non-zero transaction depth"), which stopped
//! every write until a restart.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteTransactionManager};
use sqlx::{Connection, TransactionManager};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

#[derive(Debug)]
pub(super) struct SqliteWriter {
    /// `None` after the connection was given up, until the next writer connects.
    conn: Arc<Mutex<Option<SqliteConnection>>>,
    /// The connection in the slot must not serve another write.
    spoiled: Arc<AtomicBool>,
    options: Box<SqliteConnectOptions>,
    /// The longest wait for the connection.
    timeout: Duration,
}

impl SqliteWriter {
    /// Connects with `options` (so that the file exists, in WAL mode, before any
    /// reader opens it).
    pub(super) async fn connect(
        options: SqliteConnectOptions,
        timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let conn = SqliteConnection::connect_with(&options).await?;
        Ok(Self {
            conn: Arc::new(Mutex::new(Some(conn))),
            spoiled: Arc::new(AtomicBool::new(false)),
            options: Box::new(options),
            timeout,
        })
    }

    /// The connection, once every writer before has finished with it; within the
    /// timeout, or `PoolTimedOut` as a pool would answer.
    pub(super) async fn acquire(&self) -> Result<WriterConn, sqlx::Error> {
        let mut slot = tokio::time::timeout(self.timeout, self.conn.clone().lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        if self.spoiled.swap(false, Ordering::AcqRel) {
            // Its state is unknown: dropping it ends it without another statement.
            drop(slot.take());
        }
        if let Some(conn) = slot.as_mut() {
            if SqliteTransactionManager::get_transaction_depth(conn) > 0 {
                // A cancelled write's rollback may still be queued on the connection's
                // thread: a ping waits for it. Inside a transaction after that, the
                // connection is lost to its writes (see above), and closing it ends the
                // transaction.
                if conn.ping().await.is_err()
                    || SqliteTransactionManager::get_transaction_depth(conn) > 0
                {
                    tracing::warn!(
                        "the writing connection was left inside a transaction; replaced"
                    );
                    drop(slot.take());
                }
            }
        }
        if slot.is_none() {
            *slot = Some(SqliteConnection::connect_with(&self.options).await?);
        }
        let conn =
            OwnedMutexGuard::try_map(slot, Option::as_mut).map_err(|_| sqlx::Error::PoolClosed)?;
        Ok(WriterConn {
            conn,
            spoiled: self.spoiled.clone(),
            spoil: false,
        })
    }

    /// (in use, idle), as a pool reports them.
    pub(super) fn connections(&self) -> (u32, u32) {
        match self.conn.try_lock() {
            Ok(slot) => (0, u32::from(slot.is_some())),
            Err(_) => (1, 0),
        }
    }

    /// Closes the connection, waiting for the write in progress.
    pub(super) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// The writing connection, held for one write.
pub(super) struct WriterConn {
    conn: OwnedMappedMutexGuard<Option<SqliteConnection>, SqliteConnection>,
    spoiled: Arc<AtomicBool>,
    spoil: bool,
}

impl WriterConn {
    /// Gives the connection up when this write is done with it, as
    /// `PoolConnection::close_on_drop` does.
    pub(super) fn close_on_drop(&mut self) {
        self.spoil = true;
    }
}

impl Deref for WriterConn {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for WriterConn {
    fn drop(&mut self) {
        if self.spoil {
            // Set while the lock is still held: the next writer sees it.
            self.spoiled.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer on a new database with one table, `t (n INTEGER)`.
    async fn writer_with_table(dir: &tempfile::TempDir) -> SqliteWriter {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true);
        let writer = SqliteWriter::connect(options, Duration::from_secs(5))
            .await
            .expect("connects");
        let mut conn = writer.acquire().await.expect("writer");
        sqlx::query("CREATE TABLE t (n INTEGER)")
            .execute(&mut *conn)
            .await
            .expect("table");
        drop(conn);
        writer
    }

    async fn rows(writer: &SqliteWriter) -> i64 {
        let mut conn = writer.acquire().await.expect("writer");
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *conn)
            .await
            .expect("counts");
        count
    }

    /// A write cancelled between its BEGIN and its `Transaction` leaves the connection
    /// in a transaction with nothing to end it; the next writer still writes.
    #[tokio::test]
    async fn a_transaction_left_open_does_not_stop_the_next_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_with_table(&dir).await;
        {
            let mut conn = writer.acquire().await.expect("writer");
            let tx = conn.begin_with("BEGIN IMMEDIATE").await.expect("begins");
            // What the cancelled write leaves: BEGIN done, no one to roll it back.
            std::mem::forget(tx);
        }
        for n in 0..3 {
            let mut conn = writer.acquire().await.expect("writer");
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .expect("begins again");
            sqlx::query("INSERT INTO t VALUES ($1)")
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("inserts");
            tx.commit().await.expect("commits");
        }
        assert_eq!(rows(&writer).await, 3);
    }

    /// A write dropped inside its transaction is rolled back.
    #[tokio::test]
    async fn a_dropped_transaction_is_rolled_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_with_table(&dir).await;
        {
            let mut conn = writer.acquire().await.expect("writer");
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.expect("begins");
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(&mut *tx)
                .await
                .expect("inserts");
        }
        assert_eq!(rows(&writer).await, 0);
    }
}
