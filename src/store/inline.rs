//! SQLite point reads without a thread hand-off.
//!
//! sqlx runs every SQLite connection on a thread of its own and sends each statement to
//! it over a channel: a round trip of two wake-ups and two context switches, which on
//! a small machine costs more than the statement and the whole HTTP stack together
//! (BENCHMARKS.md, finding 1). The hot reads (a session, a user) are single index
//! searches of a few microseconds, so they run here instead, on the calling thread,
//! over a read-only connection that each thread keeps for itself.
//!
//! This is only a fast path. Any error at all (the file cannot be opened, the database
//! is busy, a statement fails) answers `None`, and the caller runs the same query
//! through the sqlx pool, which waits for locks and classifies errors as always. The
//! connection never waits for a lock (busy timeout 0), so the calling thread, a tokio
//! worker, is never blocked for longer than one index search.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, ToSql};

/// Stores whose connections one thread keeps at most (a process normally has one).
const MAX_PER_THREAD: usize = 4;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 16;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's read connections, by reader id, most recently opened last.
    static CONNECTIONS: RefCell<Vec<(u64, Connection)>> = const { RefCell::new(Vec::new()) };
}

/// Inline reads of one SQLite database file.
pub struct InlineReader {
    id: u64,
    path: PathBuf,
    /// Set when the store closes: no new connection is opened or used.
    closed: Arc<AtomicBool>,
}

impl InlineReader {
    pub fn new(path: PathBuf) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops the fast path; this thread's connection is closed now, other threads' when
    /// they next look for one or end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = CONNECTIONS.try_with(|c| {
            if let Ok(mut conns) = c.try_borrow_mut() {
                conns.retain(|(id, _)| *id != self.id);
            }
        });
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Opened like the pool's connections (read-write, never creating the file) and
        // then limited to queries: a connection opened read-only may fall back to a
        // private copy of the WAL index when it cannot map the shared one (a full
        // disk), and then miss later commits.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "query_only", true)?;
        // Never wait for a lock on a runtime thread: a busy database goes to the pool.
        conn.busy_timeout(Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// Runs `sql` with named parameters (`$1`, `$2`, ...) and maps its first row;
    /// `Some(None)` when there is no row, `None` when the fast path could not answer.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[(&str, &dyn ToSql)],
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Option<T>> {
        self.with(|conn| {
            let mut statement = conn.prepare_cached(sql)?;
            let mut rows = statement.query(params)?;
            match rows.next()? {
                Some(row) => map(row).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Runs `sql` and maps every row; `None` when the fast path could not answer.
    pub fn query_all<T>(
        &self,
        sql: &str,
        params: &[(&str, &dyn ToSql)],
        mut map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Vec<T>> {
        self.with(|conn| {
            let mut statement = conn.prepare_cached(sql)?;
            let mut rows = statement.query(params)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(map(row)?);
            }
            Ok(out)
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        CONNECTIONS
            .try_with(|cell| {
                let mut conns = cell.try_borrow_mut().ok()?;
                let index = match conns.iter().position(|(id, _)| *id == self.id) {
                    Some(index) => index,
                    None => {
                        let conn = self.open().ok()?;
                        if conns.len() >= MAX_PER_THREAD {
                            conns.remove(0);
                        }
                        conns.push((self.id, conn));
                        conns.len() - 1
                    }
                };
                match f(&conns[index].1) {
                    Ok(value) => Some(value),
                    Err(err) => {
                        // The connection is dropped with its statements: whatever went
                        // wrong, the next read starts from a fresh one.
                        conns.remove(index);
                        tracing::trace!(error = %err, "inline read fell back to the pool");
                        None
                    }
                }
            })
            .ok()
            .flatten()
    }
}

impl Drop for InlineReader {
    fn drop(&mut self) {
        self.close();
    }
}
