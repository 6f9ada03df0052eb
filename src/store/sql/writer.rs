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
//!
//! Beside it, the writer keeps a second connection to the same file, opened with
//! rusqlite, for the hot writes (a Logout): `write_direct` runs a whole transaction on
//! it on the calling thread, while holding the same lock, instead of one thread round
//! trip through sqlx per statement (five for a Logout: BEGIN, a read, a delete, the
//! audit event, COMMIT). It never waits for SQLite's lock (busy timeout 0), so a
//! runtime thread is held for the statements alone, and anything it cannot do (another
//! process is writing, a statement fails) is left to the sqlx connection, which waits
//! and classifies errors as always. The direct writes that queue up while the writer
//! is busy are made together, in one transaction with a savepoint each, by whichever
//! of them gets the lock first: one BEGIN, one COMMIT and one write of the WAL's pages
//! for all of them.
//!
//! Neither connection checkpoints the WAL in its commits (unless far behind): a thread
//! beside the writer does, and takes this same lock only for a short last pass
//! (`checkpoint.rs`). Every write tells it when it is done.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::TransactionBehavior;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteTransactionManager};
use sqlx::{Connection, TransactionManager};
use tokio::sync::{oneshot, Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::checkpoint::{Checkpointer, FALLBACK_AT};

/// Direct writes made in one transaction at most: a batch holds a runtime thread for
/// its statements (a few microseconds each).
const BATCH: usize = 64;

/// A direct write: run in the batch's transaction, it says whether it succeeded and
/// how it is to be answered once the batch is over (committed or not).
type Job = Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> (bool, Finish) + Send>;
type Finish = Box<dyn FnOnce(bool) + Send>;

/// A direct write in the queue, taken out when its caller gives it up.
struct Queued<'a> {
    writer: &'a SqliteWriter,
    id: u64,
}

impl Queued<'_> {
    /// Whether it was still queued (and now never runs).
    fn take_out(&self) -> bool {
        let mut queue = self.writer.queue();
        let at = queue.iter().position(|(queued, _)| *queued == self.id);
        at.map(|at| queue.remove(at)).is_some()
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.take_out();
    }
}

/// The writer's two connections to the file, used by one write at a time.
#[derive(Debug, Default)]
struct Slot {
    /// `None` after the connection was given up, until the next writer connects.
    sqlx: Option<SqliteConnection>,
    /// The direct connection, opened by the first direct write; `None` again after one
    /// failed, so that the next starts on a fresh connection.
    direct: Option<rusqlite::Connection>,
}

pub(super) struct SqliteWriter {
    conn: Arc<Mutex<Slot>>,
    /// The connection in the slot must not serve another write.
    spoiled: Arc<AtomicBool>,
    options: Box<SqliteConnectOptions>,
    /// Direct writes waiting for a batch, by number.
    queued: std::sync::Mutex<Vec<(u64, Job)>>,
    next_job: std::sync::atomic::AtomicU64,
    /// Batches and direct writes committed, for the metrics.
    batches: std::sync::atomic::AtomicU64,
    batched: std::sync::atomic::AtomicU64,
    /// The longest wait for the connection.
    timeout: Duration,
    /// Copies the WAL into the file beside the writes, told of each one.
    checkpoint: Arc<Checkpointer>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("file", &self.options.get_filename())
            .field("queued", &self.queue().len())
            .finish_non_exhaustive()
    }
}

impl SqliteWriter {
    /// Connects with `options` (so that the file exists, in WAL mode, before any
    /// reader opens it).
    pub(super) async fn connect(
        options: SqliteConnectOptions,
        timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        // SQLite's own checkpoint only if the checkpointing thread falls behind.
        let options = options.pragma("wal_autocheckpoint", FALLBACK_AT.to_string());
        let sqlx = SqliteConnection::connect_with(&options).await?;
        let conn = Arc::new(Mutex::new(Slot {
            sqlx: Some(sqlx),
            direct: None,
        }));
        let checkpoint = Checkpointer::start(options.get_filename().to_path_buf(), conn.clone())
            .map(Arc::new)
            .map_err(sqlx::Error::Io)?;
        Ok(Self {
            conn,
            checkpoint,
            spoiled: Arc::new(AtomicBool::new(false)),
            queued: std::sync::Mutex::new(Vec::new()),
            next_job: std::sync::atomic::AtomicU64::new(0),
            batches: std::sync::atomic::AtomicU64::new(0),
            batched: std::sync::atomic::AtomicU64::new(0),
            options: Box::new(options),
            timeout,
        })
    }

    /// Both connections, once every writer before has finished with them; within the
    /// timeout, or `PoolTimedOut` as a pool would answer.
    async fn lock(&self) -> Result<OwnedMutexGuard<Slot>, sqlx::Error> {
        tokio::time::timeout(self.timeout, self.conn.clone().lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)
    }

    /// Makes `write` on the direct connection, in a transaction shared with the direct
    /// writes queued beside it, on the thread of whichever of them takes the lock
    /// first: `Some` with its outcome once committed, `None` when it was not (the
    /// database is locked by another connection, the connection cannot be opened, the
    /// write or the COMMIT failed) and the write is to be made through
    /// [`acquire`](Self::acquire) instead.
    ///
    /// Each write runs inside a savepoint of its own: one that fails is rolled back
    /// alone, and the others commit. After a failed COMMIT, whose outcome SQLite does
    /// not always say, the connection is closed and every write of the batch goes to
    /// sqlx, so `write` must be one that can be made again after it (a Logout can: the
    /// second finds the session gone).
    pub(super) async fn write_direct<T: Send + 'static>(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<Option<T>, sqlx::Error> {
        let (answer, mut answered) = oneshot::channel::<Option<T>>();
        let job: Job = Box::new(move |tx| match write(tx) {
            Ok(done) => (
                true,
                Box::new(move |committed: bool| {
                    // The caller may have stopped waiting (a client hanging up).
                    let _ = answer.send(committed.then_some(done));
                }),
            ),
            Err(err) => {
                tracing::debug!(error = %err, "a direct write fell back to sqlx");
                (
                    false,
                    Box::new(move |_| {
                        let _ = answer.send(None);
                    }),
                )
            }
        });
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        self.queue().push((id, job));
        // Given up before a batch took it (the caller stopped waiting, or the wait
        // timed out), the write is taken out of the queue and never made.
        let queued = Queued { writer: self, id };
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            tokio::select! {
                biased;
                done = &mut answered => return Ok(done.ok().flatten()),
                slot = tokio::time::timeout_at(deadline, self.conn.clone().lock_owned()) => {
                    let Ok(mut slot) = slot else {
                        // Still queued: taken out, it will never run. Otherwise a
                        // batch holds it and answers in a moment.
                        if queued.take_out() {
                            return Err(sqlx::Error::PoolTimedOut);
                        }
                        return Ok((&mut answered).await.ok().flatten());
                    };
                    self.run_batch(&mut slot);
                }
            }
        }
    }

    /// The queue of direct writes waiting for a batch.
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Job)>> {
        // A job is pushed or taken whole: a panic elsewhere leaves the list sound.
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes the queued direct writes (up to `BATCH` of them) in one transaction on
    /// the direct connection, and answers each.
    fn run_batch(&self, slot: &mut Slot) {
        let jobs: Vec<(u64, Job)> = {
            let mut queue = self.queue();
            let take = queue.len().min(BATCH);
            queue.drain(..take).collect()
        };
        if jobs.is_empty() {
            return;
        }
        let conn = match slot.direct.take() {
            Some(conn) => Ok(conn),
            None => self.open_direct(),
        };
        let mut finishes = Vec::with_capacity(jobs.len());
        let outcome = conn.and_then(|mut conn| {
            let committed = Self::batch(&mut conn, jobs, &mut finishes);
            // A connection that only found the database locked is kept; any other
            // that failed is closed, which rolls back whatever it may still hold.
            let busy = committed.as_ref().err().and_then(|e| e.sqlite_error_code())
                == Some(rusqlite::ErrorCode::DatabaseBusy);
            if committed.is_ok() || (busy && conn.is_autocommit()) {
                slot.direct = Some(conn);
            }
            committed
        });
        match &outcome {
            Ok(()) => {
                self.checkpoint.wrote();
                self.batches.fetch_add(1, Ordering::Relaxed);
                let made = finishes.iter().filter(|(ok, _)| *ok).count();
                self.batched.fetch_add(made as u64, Ordering::Relaxed);
            }
            Err(err) => {
                tracing::debug!(error = %err, "a batch of direct writes fell back to sqlx");
            }
        }
        for (ok, finish) in finishes {
            finish(ok && outcome.is_ok());
        }
    }

    /// One transaction of `jobs`, each in a savepoint; what each job did, and how it
    /// is to be answered, goes into `finishes` (every job's, whatever happens).
    fn batch(
        conn: &mut rusqlite::Connection,
        jobs: Vec<(u64, Job)>,
        finishes: &mut Vec<(bool, Finish)>,
    ) -> rusqlite::Result<()> {
        let mut jobs = jobs.into_iter();
        let run = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (_, job) in jobs.by_ref() {
                tx.execute_batch("SAVEPOINT direct_write")?;
                let (ok, finish) = job(&tx);
                finishes.push((ok, finish));
                if !ok {
                    tx.execute_batch("ROLLBACK TO direct_write")?;
                }
                tx.execute_batch("RELEASE direct_write")?;
            }
            tx.commit()
        })();
        // Jobs not run (the batch failed first) are answered as not made.
        for (_, job) in jobs {
            finishes.push((false, Box::new(move |_| drop(job))));
        }
        run
    }

    /// The direct connection: the sqlx writer's settings, but no wait for a lock.
    fn open_direct(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = super::inline::open(self.options.get_filename())?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "wal_autocheckpoint", FALLBACK_AT)?;
        Ok(conn)
    }

    /// The connection, once every writer before has finished with it; within the
    /// timeout, or `PoolTimedOut` as a pool would answer.
    pub(super) async fn acquire(&self) -> Result<WriterConn, sqlx::Error> {
        let mut guard = self.lock().await?;
        let slot = &mut guard.sqlx;
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
        let conn = OwnedMutexGuard::try_map(guard, |slot| slot.sqlx.as_mut())
            .map_err(|_| sqlx::Error::PoolClosed)?;
        Ok(WriterConn {
            conn,
            checkpoint: self.checkpoint.clone(),
            spoiled: self.spoiled.clone(),
            spoil: false,
        })
    }

    /// (transactions, writes) committed by batches of direct writes.
    pub(super) fn batches(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.batched.load(Ordering::Relaxed),
        )
    }

    /// (checkpoints made beside the writer, of them under its lock so that the WAL
    /// starts over).
    pub(super) fn checkpoints(&self) -> (u64, u64) {
        self.checkpoint.counts()
    }

    /// (in use, idle), as a pool reports them.
    pub(super) fn connections(&self) -> (u32, u32) {
        match self.conn.try_lock() {
            Ok(slot) => (0, u32::from(slot.sqlx.is_some())),
            Err(_) => (1, 0),
        }
    }

    /// Closes the connections, waiting for the write in progress.
    ///
    /// The WAL is first copied into the database and emptied (a `TRUNCATE` checkpoint):
    /// SQLite deletes it only as the last connection of all closes, and a connection
    /// still open somewhere (another thread's inline reader as the process exits) would
    /// otherwise leave it whole, up to tens of MiB, for the next start to read back.
    pub(super) async fn close(&self) {
        self.checkpoint.close();
        let mut slot = self.conn.lock().await;
        drop(slot.direct.take());
        if let Some(mut conn) = slot.sqlx.take() {
            if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut conn)
                .await
            {
                tracing::debug!(error = %err, "the WAL was not emptied at close");
            }
            let _ = conn.close().await;
        }
    }
}

/// The writing connection, held for one write.
pub(super) struct WriterConn {
    conn: OwnedMappedMutexGuard<Slot, SqliteConnection>,
    checkpoint: Arc<Checkpointer>,
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
        self.checkpoint.wrote();
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
        writer_waiting_at_most(dir, Duration::from_secs(5)).await
    }

    /// The same, whose writers wait for the connection at most `timeout`.
    async fn writer_waiting_at_most(dir: &tempfile::TempDir, timeout: Duration) -> SqliteWriter {
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("w.db"))
            .create_if_missing(true);
        let writer = SqliteWriter::connect(options, timeout)
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

    /// Inserts `n` into `t` as a direct write; `fail` makes it fail after its insert.
    async fn insert_direct(
        writer: &SqliteWriter,
        n: i64,
        fail: bool,
    ) -> Result<Option<i64>, sqlx::Error> {
        writer
            .write_direct(move |tx| {
                tx.execute("INSERT INTO t VALUES (?1)", [n])?;
                if fail {
                    tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                }
                Ok(n)
            })
            .await
    }

    async fn values(writer: &SqliteWriter) -> Vec<i64> {
        let mut conn = writer.acquire().await.expect("writer");
        sqlx::query_as::<_, (i64,)>("SELECT n FROM t ORDER BY n")
            .fetch_all(&mut *conn)
            .await
            .expect("reads")
            .into_iter()
            .map(|(n,)| n)
            .collect()
    }

    /// A direct write is made, and it is the only row of `t`: the write before it left
    /// nothing.
    async fn the_next_direct_write_is_the_only_one(writer: &SqliteWriter) {
        assert_eq!(
            insert_direct(writer, 2, false).await.expect("writes"),
            Some(2)
        );
        assert_eq!(values(writer).await, [2]);
    }

    /// Direct writes queued while the writer is busy are made in one transaction, and
    /// the one that fails is rolled back alone.
    #[tokio::test]
    async fn direct_writes_share_a_transaction_and_keep_their_own_outcomes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Arc::new(writer_with_table(&dir).await);
        // Holding the writer, so that all of them queue up behind it.
        let held = writer.acquire().await.expect("writer");
        let writes: Vec<_> = (0..10)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { insert_direct(&writer, n, n == 4).await })
            })
            .collect();
        for _ in 0..100_000 {
            if writer.queue().len() == 10 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            writer.queue().len(),
            10,
            "every write queued behind the writer"
        );
        drop(held);
        let mut outcomes = Vec::new();
        for write in writes {
            outcomes.push(write.await.expect("joins").expect("no timeout"));
        }
        let expected: Vec<_> = (0..10).map(|n| (n != 4).then_some(n)).collect();
        assert_eq!(outcomes, expected);
        assert_eq!(values(&writer).await, [0, 1, 2, 3, 5, 6, 7, 8, 9]);
        let (batches, _) = writer.batches();
        assert_eq!(batches, 1, "the queued writes were made in one transaction");
    }

    /// A direct write whose wait times out while it is still queued is never made.
    #[tokio::test]
    async fn a_direct_write_given_up_in_the_queue_is_never_made() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_waiting_at_most(&dir, Duration::from_millis(50)).await;
        let conn = writer.acquire().await.expect("writer");
        let given_up = insert_direct(&writer, 1, false).await;
        assert!(
            matches!(given_up, Err(sqlx::Error::PoolTimedOut)),
            "{given_up:?}"
        );
        drop(conn);
        the_next_direct_write_is_the_only_one(&writer).await;
    }

    /// When another connection holds the database's write lock, a direct write does
    /// not wait for it: it answers `None`, for the caller to write through sqlx.
    #[tokio::test]
    async fn a_direct_write_leaves_a_locked_database_to_sqlx() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = writer_with_table(&dir).await;
        let other = rusqlite::Connection::open(dir.path().join("w.db")).expect("opens");
        other.execute_batch("BEGIN IMMEDIATE").expect("locks");
        assert_eq!(
            insert_direct(&writer, 1, false).await.expect("answers"),
            None
        );
        other.execute_batch("ROLLBACK").expect("unlocks");
        the_next_direct_write_is_the_only_one(&writer).await;
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
