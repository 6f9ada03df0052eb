//! SQLite's WAL checkpoints, made beside the writer instead of inside its commits.
//!
//! In WAL mode a commit appends pages to the WAL, and a checkpoint copies them back
//! into the database file (then syncs it). By default SQLite runs one inside the commit
//! that takes the WAL past 1,000 pages, while that connection still holds the write
//! lock: every writer queued behind it waits for a thousand page copies and two fsyncs.
//! Under a steady write load that is the tail of every write's latency
//! (docs/performance/group-commit.md).
//!
//! Here a thread of its own, on a connection of its own, copies the WAL into the file
//! while the writer goes on (a `PASSIVE` checkpoint takes no write lock). That alone
//! would let the WAL grow without end: SQLite starts it over only in a write that
//! *begins* with every page already copied, and under load a write is always in
//! progress. So once the WAL is past [`RESTART_AT`] pages, the thread copies until
//! little is left and then takes the writer's lock for one last short pass: the next
//! write then finds the WAL fully copied and starts it over. SQLite's own checkpoint
//! stays as a fallback, at [`FALLBACK_AT`] pages, for a thread that falls behind.
//!
//! Nothing changes for durability: SQLite syncs the WAL before a pass copies from it,
//! the thread syncs the database file after what its passes copied, and SQLite syncs
//! the file again in the pass that reaches the WAL's end, the only kind after which the
//! WAL starts over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// WAL pages past which a pass ends with a short one under the writer's lock, so that
/// the WAL starts over: 32 MiB of 4 KiB pages. (Under a steady load the WAL grows
/// further while the passes before it catch up: to about 20,000 pages at 12,000
/// Logouts a second on two cores.)
const RESTART_AT: i64 = 8_192;

/// SQLite's own checkpoint, in the commit that takes the WAL past this many pages, if
/// the thread falls behind.
pub(super) const FALLBACK_AT: i64 = 8 * RESTART_AT;

/// When the passes run.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// See [`RESTART_AT`].
    restart_at: i64,
    /// The shortest time from a write to the pass after it: the writes of that time
    /// are copied together.
    pace: Duration,
}

const LIMITS: Limits = Limits {
    restart_at: RESTART_AT,
    pace: Duration::from_millis(50),
};

/// Rounds of copy-then-sync at most before the pass under the lock, each leaving less
/// to it; they stop early once a round finds at most [`LEFT_SMALL`] new pages.
const CATCH_UP: usize = 4;
const LEFT_SMALL: i64 = 256;

#[derive(Debug, Default)]
struct State {
    /// Writes reported so far.
    writes: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Passes made, and of them the ones under the writer's lock.
    passes: AtomicU64,
    locked: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain counters, never left half-updated.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The checkpointing thread of one database file; it ends when this is dropped or
/// closed.
#[derive(Debug)]
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
}

impl Checkpointer {
    /// Starts the thread for the database at `path`, whose writer's lock is `writer`.
    pub(super) fn start<T: Send + 'static>(
        path: PathBuf,
        writer: Arc<tokio::sync::Mutex<T>>,
    ) -> std::io::Result<Self> {
        Self::start_with(path, writer, LIMITS)
    }

    fn start_with<T: Send + 'static>(
        path: PathBuf,
        writer: Arc<tokio::sync::Mutex<T>>,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&thread, &path, &writer, limits))?;
        Ok(Self { shared })
    }

    /// A write was committed: the WAL has grown.
    pub(super) fn wrote(&self) {
        self.shared.state().writes += 1;
        self.shared.wake.notify_one();
    }

    /// Stops the thread (it finishes the pass in progress).
    pub(super) fn close(&self) {
        self.shared.state().closed = true;
        self.shared.wake.notify_one();
    }

    /// (passes made, of them under the writer's lock so that the WAL starts over).
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.shared.passes.load(Ordering::Relaxed),
            self.shared.locked.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.close();
    }
}

fn run<T>(shared: &Shared, path: &Path, writer: &tokio::sync::Mutex<T>, limits: Limits) {
    let mut seen = 0;
    let mut conn: Option<rusqlite::Connection> = None;
    loop {
        {
            let mut state = shared.state();
            while state.writes == seen && !state.closed {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.closed {
                return;
            }
            seen = state.writes;
        }
        // Pacing, not synchronisation: the writes of the next moments join this pass.
        std::thread::sleep(limits.pace);
        if shared.state().closed {
            return;
        }
        if conn.is_none() {
            conn = open(path)
                .map_err(|err| tracing::debug!(error = %err, "the checkpoint's connection"))
                .ok();
        }
        if let Some(open) = &conn {
            let locked = || writer.blocking_lock();
            if let Err(err) = pass(open, path, limits.restart_at, shared, locked) {
                // SQLite's own checkpoint is the fallback; a fresh connection next time.
                tracing::debug!(error = %err, "a WAL checkpoint failed");
                conn = None;
            }
        }
    }
}

fn open(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = super::inline::open(path)?;
    conn.busy_timeout(Duration::ZERO)?;
    // Syncs the WAL before copying and the database file after a pass that reaches
    // the WAL's end.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Copies the WAL into the database file; past `restart_at` pages, to its end, the
/// last of it holding what `lock_writer` returns (the writer's lock).
fn pass<G>(
    conn: &rusqlite::Connection,
    path: &Path,
    restart_at: i64,
    shared: &Shared,
    lock_writer: impl FnOnce() -> G,
) -> Result<(), PassFailed> {
    let (mut log, mut copied) = passive(conn)?;
    shared.passes.fetch_add(1, Ordering::Relaxed);
    if log < restart_at {
        return Ok(());
    }
    // SQLite syncs the file only after a pass that reaches the WAL's very end, which
    // under load only the pass under the lock does: the passes before it sync what
    // they copied, so that the one under the lock has only its own few pages to copy
    // and sync (a sync of everything copied since the last restart took 30 ms).
    for _ in 0..CATCH_UP {
        sync(path)?;
        let before = log;
        (log, copied) = passive(conn)?;
        if log - before <= LEFT_SMALL {
            break;
        }
    }
    if log - copied > LEFT_SMALL {
        // A reader on an older snapshot (an export, say) holds pages back: the WAL
        // cannot start over before it ends, and the lock would stop the writes for
        // nothing.
        return Ok(());
    }
    sync(path)?;
    let _writer = lock_writer();
    passive(conn)?;
    shared.locked.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Why a pass stopped short.
#[derive(Debug, thiserror::Error)]
enum PassFailed {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("an fsync of the database file failed: {0}")]
    Sync(#[from] std::io::Error),
}

/// `fdatasync` of the database file, on a file description of its own. (Linux reports
/// a failed write-back to every description open when it failed, so SQLite's own sync
/// still sees an error this one saw, and does not start the WAL over after it.)
fn sync(path: &Path) -> std::io::Result<()> {
    super::durable::sync_file(path).inspect_err(|err| {
        tracing::warn!(error = %err, "an fsync of the SQLite database file failed");
    })
}

/// A `PASSIVE` checkpoint: (pages in the WAL, pages of it copied). A reader still on
/// an older snapshot may keep some from being copied; the next pass gets them.
fn passive(conn: &rusqlite::Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A database in WAL mode with no checkpoint of SQLite's own, and a table `t`.
    fn database(dir: &tempfile::TempDir) -> (PathBuf, rusqlite::Connection) {
        let path = dir.path().join("db.sqlite");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             PRAGMA wal_autocheckpoint=0; CREATE TABLE t (n INTEGER, pad BLOB);",
        )
        .unwrap();
        (path, conn)
    }

    /// Writes row `n`: a page or more of the WAL.
    fn write(conn: &rusqlite::Connection, n: i64) {
        conn.execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [n])
            .unwrap();
    }

    /// The writes made while a pass waits for the writer's lock are the ones no pass
    /// without it copies; the pass under the lock copies them, and the next write
    /// starts the WAL over.
    #[test]
    fn the_pass_under_the_lock_copies_the_last_writes_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = database(&dir);
        for n in 0..100 {
            write(&conn, n);
        }
        let writer = Arc::new(std::sync::Mutex::new(conn));
        let held = writer.lock().unwrap();
        let (waiting, waits) = std::sync::mpsc::channel();
        let checkpointing = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let conn = open(&path).unwrap();
                let shared = Shared::default();
                pass(&conn, &path, 64, &shared, || {
                    waiting.send(()).unwrap();
                    writer.lock().unwrap()
                })
                .unwrap();
                shared.locked.into_inner()
            })
        };
        waits.recv().unwrap();
        for n in 100..110 {
            write(&held, n);
        }
        drop(held);
        assert_eq!(checkpointing.join().unwrap(), 1, "one pass under the lock");
        let conn = writer.lock().unwrap();
        write(&conn, 110);
        let (after, _) = passive(&conn).unwrap();
        assert!(
            after < 8,
            "the WAL did not start over: {after} pages after the next write"
        );
        let rows: i64 = conn
            .query_row("SELECT count(DISTINCT n) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 111);
    }

    /// While a reader holds an older snapshot, pages stay behind, and the pass does not
    /// stop the writer for a WAL that cannot start over.
    #[test]
    fn a_reader_holding_pages_back_keeps_the_pass_from_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = database(&dir);
        write(&conn, 0);
        let reader = rusqlite::Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        for n in 1..400 {
            write(&conn, n);
        }
        let checkpointing = open(&path).unwrap();
        let shared = Shared::default();
        pass(&checkpointing, &path, 64, &shared, || {
            panic!("the pass took the writer's lock while a reader held pages back")
        })
        .unwrap();
        assert_eq!(shared.locked.into_inner(), 0);
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(seen, 1);
    }

    /// A writer takes the lock for each write, as the store's do, while the thread
    /// checkpoints beside it with a threshold of 64 pages: every write is kept.
    #[test]
    fn the_thread_keeps_the_wal_short_and_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = database(&dir);
        let writer = Arc::new(tokio::sync::Mutex::new(conn));
        let limits = Limits {
            restart_at: 64,
            pace: Duration::ZERO,
        };
        let checkpointer = Checkpointer::start_with(path, writer.clone(), limits).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut written: i64 = 0;
        while checkpointer.counts().1 < 3 {
            assert!(
                Instant::now() < deadline && written < 200_000,
                "{written} writes and {:?} passes: fewer than 3 under the lock",
                checkpointer.counts()
            );
            write(&writer.blocking_lock(), written);
            written += 1;
            checkpointer.wrote();
        }
        checkpointer.close();
        let conn = writer.blocking_lock();
        let (wal, _) = passive(&conn).unwrap();
        assert!(
            wal < written,
            "the WAL never started over: {wal} pages after {written} writes"
        );
        let (rows, sum): (i64, i64) = conn
            .query_row("SELECT count(*), sum(n) FROM t", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        assert_eq!((rows, sum), (written, written * (written - 1) / 2));
    }
}
