//! SQLite point reads without a thread hand-off.
//!
//! sqlx runs every SQLite connection on a thread of its own and sends each statement to
//! it over a channel: a round trip of two wake-ups and two context switches, which on
//! a small machine costs more than the statement and the whole HTTP stack together
//! (docs/performance/inline-reads.md). The hot reads (a session, a user) are single index
//! searches of a few microseconds, so they run here instead, on the calling thread,
//! over a read-only connection that each thread keeps for itself.
//!
//! This is only a fast path. Any error at all (the file cannot be opened, the database
//! is busy, a statement fails) answers `None`, and the caller runs the same query
//! through the sqlx pool, which waits for locks and classifies errors as always. The
//! connection never waits for a lock (busy timeout 0), so the calling thread, a tokio
//! worker, is never blocked for longer than one index search.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, Statement, ToSql};

/// Stores whose connections one thread keeps at most (a process normally has one).
const MAX_PER_THREAD: usize = 4;
/// Prepared statements kept per connection (the store has fewer distinct reads).
const STATEMENTS: usize = 16;
/// How much of the database file each connection reads through a memory map.
///
/// SQLite then takes the pages that the WAL does not hold straight from the operating
/// system's page cache, rather than copying each into its own page cache with `pread`.
/// That cache is one pool for the whole process, behind one mutex, in the SQLite this
/// crate builds (`SQLITE_ENABLE_MEMORY_MANAGEMENT`): every page a point read touches
/// took that mutex, and the two runtime threads reading at once contended for it. With
/// the map, the lookup's share of a ReadSession's CPU fell from 29% to 21.5%
/// (docs/performance/page-cache-allocator-cors.md). Writes never go through the map, only these
/// connections' reads, and a database larger than this is read through the map up to
/// this size and with `pread` beyond it. The address space is reserved, not memory: a
/// page counts towards the process's resident size only once read, and it is the page
/// cache's, shared and reclaimable.
const MMAP_BYTES: i64 = 1 << 30;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's read connections, by reader id, most recently opened last.
    static CONNECTIONS: RefCell<Vec<(u64, Reader)>> = const { RefCell::new(Vec::new()) };
}

/// Inline reads of one SQLite database file.
pub struct InlineReader {
    id: u64,
    path: PathBuf,
    /// Set when the store closes: no new connection is opened or used.
    closed: Arc<AtomicBool>,
    /// Keeps the WAL's read lock taken for the process while nothing is being written.
    anchor: Mutex<Option<Anchor>>,
}

impl InlineReader {
    pub fn new(path: PathBuf) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            anchor: Mutex::new(Anchor::start(path.clone())),
            path,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops the fast path; this thread's connection is closed now, other threads' when
    /// they next look for one or end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(anchor) = self.anchor.lock().ok().and_then(|mut a| a.take()) {
            anchor.stop();
        }
        let _ = CONNECTIONS.try_with(|c| {
            if let Ok(mut conns) = c.try_borrow_mut() {
                conns.retain(|(id, _)| *id != self.id);
            }
        });
    }

    fn open(&self) -> rusqlite::Result<Reader> {
        let conn = open(&self.path)?;
        conn.pragma_update(None, "query_only", true)?;
        // Never wait for a lock on a runtime thread: a busy database goes to the pool.
        conn.busy_timeout(Duration::ZERO)?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        Ok(Reader::new(conn, |_| RefCell::new(Vec::new())))
    }

    /// Runs `sql` with named parameters (`$1`, `$2`, ...) and maps its first row;
    /// `Some(None)` when there is no row, `None` when the fast path could not answer.
    pub fn query_row<T>(
        &self,
        sql: &'static str,
        params: &[(&str, &dyn ToSql)],
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Option<T>> {
        self.with(sql, |statement| {
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
        sql: &'static str,
        params: &[(&str, &dyn ToSql)],
        mut map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Vec<T>> {
        self.with(sql, |statement| {
            let mut rows = statement.query(params)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(map(row)?);
            }
            Ok(out)
        })
    }

    /// Runs `f` on this thread's prepared statement of `sql`.
    fn with<T>(
        &self,
        sql: &'static str,
        f: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<T>,
    ) -> Option<T> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        CONNECTIONS
            .try_with(|cell| {
                let mut readers = cell.try_borrow_mut().ok()?;
                let index = index_or_add(
                    &mut readers,
                    MAX_PER_THREAD,
                    |(id, _)| *id == self.id,
                    || self.open().map(|reader| (self.id, reader)),
                )
                .ok()?;
                let answer = readers[index].1.with_dependent(|conn, statements| {
                    let mut statements = statements.try_borrow_mut().ok()?;
                    Some(prepared(conn, &mut statements, sql).and_then(f))
                })?;
                match answer {
                    Ok(value) => Some(value),
                    Err(err) => {
                        // The connection is dropped with its statements: whatever went
                        // wrong, the next read starts from a fresh one.
                        readers.remove(index);
                        tracing::trace!(error = %err, "inline read fell back to the pool");
                        None
                    }
                }
            })
            .ok()
            .flatten()
    }
}

/// Prepared statements of one connection, by their SQL.
type Statements<'conn> = RefCell<Vec<(&'static str, Statement<'conn>)>>;

self_cell::self_cell!(
    /// A read connection and the statements prepared on it, kept for the life of the
    /// connection.
    ///
    /// rusqlite's own statement cache (`prepare_cached`) hashes the SQL text to find a
    /// statement and again to put it back, and resets and unbinds it on the way: a
    /// sixth of an inline read's instructions (docs/performance/read-path-syscalls.md). The queries
    /// here are a handful of constants, so a short list compared by text does the same.
    struct Reader {
        owner: Connection,
        #[not_covariant]
        dependent: Statements,
    }
);

/// The statement of `sql` in `statements`, prepared on `conn` the first time.
fn prepared<'s, 'conn>(
    conn: &'conn Connection,
    statements: &'s mut Vec<(&'static str, Statement<'conn>)>,
    sql: &'static str,
) -> rusqlite::Result<&'s mut Statement<'conn>> {
    let index = index_or_add(
        statements,
        STATEMENTS,
        |(text, _)| *text == sql,
        || conn.prepare(sql).map(|statement| (sql, statement)),
    )?;
    Ok(&mut statements[index].1)
}

/// Where in `list` the entry that `matches` is, made by `make` and added last when there
/// is none; past `cap` entries the oldest goes.
fn index_or_add<T, E>(
    list: &mut Vec<T>,
    cap: usize,
    matches: impl Fn(&T) -> bool,
    make: impl FnOnce() -> Result<T, E>,
) -> Result<usize, E> {
    if let Some(index) = list.iter().position(matches) {
        return Ok(index);
    }
    let entry = make()?;
    if list.len() >= cap {
        list.remove(0);
    }
    list.push(entry);
    Ok(list.len() - 1)
}

/// Opens `path` like the pool's connections: read-write, never creating the file. (A
/// connection opened read-only may fall back to a private copy of the WAL index when it
/// cannot map the shared one, on a full disk, and then miss later commits.)
pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// How often the anchor lets go of its read lock and looks again.
const ANCHOR_PERIOD: Duration = Duration::from_millis(100);

/// A connection that holds a read transaction open while the WAL is fully checkpointed,
/// so that the inline reads' own read locks cost no system call.
///
/// Every read transaction takes a shared lock on one of the WAL index's read-mark slots,
/// and releases it at the statement's end. SQLite's unix VFS counts these locks per
/// process and calls `fcntl` only for the first holder of a slot and when the last one
/// lets go: with one reader at a time that is two system calls per read, and on
/// ReadSession the largest cost after the socket (docs/performance/read-anchor.md). While the
/// WAL holds nothing that the database file lacks, every reader takes slot 0, and a
/// transaction held open here on slot 0 makes each of their locks a counter update.
///
/// What a held read transaction must not do is hold back the WAL: a reader on slot 0
/// stops checkpoints from copying frames into the database file, and one on any other
/// slot stops the WAL from starting over from its beginning. Nor may the anchor cost the
/// writes anything. So it lets go every `ANCHOR_PERIOD`, and anchors again only when
/// nothing was committed during that period and a passive checkpoint (run here, on this
/// thread) then finds nothing left to copy, which puts it on slot 0. A write delays the
/// checkpoint of its frames by at most one period; while writes go on, the anchor stays
/// away and checkpoints are the writer's, as without it. It never changes what a reader
/// sees: every inline read is its own transaction.
struct Anchor {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Anchor {
    fn start(path: PathBuf) -> Option<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-anchor".into())
            .spawn(move || {
                let mut conn = None;
                let mut seen = None;
                loop {
                    if conn.is_none() {
                        conn = open(&path)
                            .and_then(|c| c.busy_timeout(Duration::ZERO).map(|()| c))
                            .ok();
                    }
                    if let Some(c) = &conn {
                        if let Err(err) = Self::reanchor(c, &mut seen) {
                            tracing::trace!(error = %err, "sqlite read anchor let go");
                            // A data version belongs to its connection: start afresh.
                            conn = None;
                            seen = None;
                        }
                    }
                    match stopped.recv_timeout(ANCHOR_PERIOD) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .ok()?;
        Some(Self { stop, thread })
    }

    /// Ends the held read transaction, if any, and opens a new one when nothing was
    /// committed since the last look (`seen`: the database's data version then) and a
    /// passive checkpoint leaves nothing in the WAL that the database file lacks.
    /// Answers whether it holds one now.
    fn reanchor(conn: &Connection, seen: &mut Option<i64>) -> rusqlite::Result<bool> {
        if !conn.is_autocommit() {
            conn.execute_batch("COMMIT")?;
        }
        // Changes whenever another connection commits.
        let version: i64 = conn.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        if seen.replace(version) != Some(version) {
            return Ok(false);
        }
        // (busy, frames in the WAL, frames checkpointed); -1 frames: not in WAL mode.
        let (busy, frames, copied): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
        if busy != 0 || frames < 0 || frames != copied {
            return Ok(false);
        }
        conn.execute_batch("BEGIN")?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        Ok(true)
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

impl Drop for InlineReader {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in WAL mode with one table, and the connection that writes to it.
    fn database(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("anchor.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE t (n INTEGER NOT NULL);",
            )
            .unwrap();
        (path, writer)
    }

    fn insert(writer: &Connection, n: i64) {
        writer
            .execute("INSERT INTO t (n) VALUES (?1)", [n])
            .unwrap();
    }

    fn wal_frames(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(1)?, row.get(2)?))
        })
        .unwrap()
    }

    #[test]
    fn index_or_add_finds_adds_and_keeps_at_most_cap() {
        let mut list = vec![1, 2];
        let never = || -> Result<i32, ()> { panic!("made although present") };
        assert_eq!(index_or_add(&mut list, 3, |x| *x == 2, never), Ok(1));
        assert_eq!(
            index_or_add(&mut list, 3, |x| *x == 3, || Ok::<_, ()>(3)),
            Ok(2)
        );
        assert_eq!(list, [1, 2, 3]);
        // Full: the oldest goes to make room.
        assert_eq!(
            index_or_add(&mut list, 3, |x| *x == 4, || Ok::<_, ()>(4)),
            Ok(2)
        );
        assert_eq!(list, [2, 3, 4]);
        // Nothing made, nothing removed.
        assert_eq!(
            index_or_add(&mut list, 3, |x| *x == 5, || Err("no")),
            Err("no")
        );
        assert_eq!(list, [2, 3, 4]);
    }

    #[test]
    fn anchors_only_when_quiet_and_the_wal_is_fully_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let anchor = open(&path).unwrap();
        let mut seen = None;
        insert(&writer, 1);
        // The first look has nothing to compare with; at the second nothing was
        // committed in between and nothing holds the WAL back: the anchor copies the
        // frame and anchors.
        assert!(!Anchor::reanchor(&anchor, &mut seen).unwrap());
        assert!(Anchor::reanchor(&anchor, &mut seen).unwrap());
        assert!(!anchor.is_autocommit());
        let (frames, copied) = wal_frames(&writer);
        assert!(
            frames > 0 && frames == copied,
            "{frames} frames, {copied} copied"
        );

        // A write since the last look: the anchor lets go and stays away.
        insert(&writer, 2);
        assert!(!Anchor::reanchor(&anchor, &mut seen).unwrap());
        assert!(anchor.is_autocommit());

        // Quiet again, but a reader holds an older snapshot: its frames cannot all be
        // copied, so the anchor stays away.
        let reader = open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        insert(&writer, 3);
        assert!(!Anchor::reanchor(&anchor, &mut seen).unwrap());
        assert!(!Anchor::reanchor(&anchor, &mut seen).unwrap());
        assert!(anchor.is_autocommit());

        // Once that reader is gone, the next look copies everything and anchors again.
        reader.execute_batch("COMMIT").unwrap();
        assert!(Anchor::reanchor(&anchor, &mut seen).unwrap());
        let (frames, copied) = wal_frames(&writer);
        assert_eq!(frames, copied);
    }

    #[test]
    fn steps_aside_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let anchor = open(&path).unwrap();
        let mut seen = None;
        Anchor::reanchor(&anchor, &mut seen).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        for _ in 0..5 {
            // Rows of several pages: copying them would grow the database file.
            writer
                .execute("INSERT INTO t (n) VALUES (zeroblob(16384))", [])
                .unwrap();
            // A commit in every period: no anchor, and no checkpoint of the anchor's
            // own: the frames stay in the WAL, for the writer to checkpoint.
            assert!(!Anchor::reanchor(&anchor, &mut seen).unwrap());
            assert!(anchor.is_autocommit());
            assert_eq!(size(), before, "the anchor checkpointed");
        }
        let (frames, copied) = wal_frames(&writer);
        assert!(
            frames >= 5 && copied == frames,
            "{frames} frames, {copied} copied"
        );
        assert!(size() > before);
    }

    #[test]
    fn an_anchor_holds_back_no_frame_past_its_next_look() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let anchor = open(&path).unwrap();
        let mut seen = None;
        Anchor::reanchor(&anchor, &mut seen).unwrap();
        assert!(Anchor::reanchor(&anchor, &mut seen).unwrap());
        for n in 0..50 {
            insert(&writer, n);
        }
        // While anchored, a checkpoint cannot copy the new frames into the database.
        let (frames, copied) = wal_frames(&writer);
        assert!(
            frames > 0 && copied < frames,
            "{frames} frames, {copied} copied"
        );
        // The anchor's next look lets go, so every frame is copied.
        assert!(!Anchor::reanchor(&anchor, &mut seen).unwrap());
        let (frames, copied) = wal_frames(&writer);
        assert_eq!(frames, copied);
        // And the WAL starts over from its beginning at the next write: the anchor holds
        // no read mark that the restart needs.
        insert(&writer, 50);
        let (frames, _) = wal_frames(&writer);
        assert!(frames <= 2, "the WAL did not start over: {frames} frames");
    }

    #[test]
    fn inline_reads_see_every_commit_while_anchored() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let anchor = open(&path).unwrap();
        let reader = InlineReader::new(path.clone());
        let mut seen = None;
        for n in 0..200 {
            if n % 20 == 0 {
                // Twice: the second look sees no commit since the first, and anchors.
                Anchor::reanchor(&anchor, &mut seen).unwrap();
                assert!(Anchor::reanchor(&anchor, &mut seen).unwrap());
            }
            insert(&writer, n);
            let count = reader.query_row("SELECT count(*) FROM t", &[], |r| r.get::<_, i64>(0));
            assert_eq!(count, Some(Some(n + 1)));
        }
        reader.close();
    }

    #[test]
    fn inline_reads_go_through_a_memory_map_and_follow_a_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let reader = InlineReader::new(path.clone());
        let mapped = reader.query_row("PRAGMA mmap_size", &[], |r| r.get::<_, i64>(0));
        assert_eq!(mapped, Some(Some(MMAP_BYTES)));
        let sum = || {
            reader.query_row("SELECT count(*), total(length(n)) FROM t", &[], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
            })
        };
        for round in 1..=8_i64 {
            // 64 KiB a row, each round checkpointed into the file: the mapped file grows
            // under the reader, and pages it has read before change.
            writer
                .execute("INSERT INTO t (n) VALUES (zeroblob(65536))", [])
                .unwrap();
            writer
                .execute("UPDATE t SET n = zeroblob(65536 + ?1)", [round])
                .unwrap();
            assert_eq!(sum(), Some(Some((round, (round * (65536 + round)) as f64))));
            // Waits (the writer's busy timeout) for the anchor to let go, if it holds on.
            let busy: i64 = writer
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .unwrap();
            assert_eq!(busy, 0);
            assert_eq!(sum(), Some(Some((round, (round * (65536 + round)) as f64))));
        }
        assert!(std::fs::metadata(&path).unwrap().len() > 8 * 65536);
        reader.close();
    }
}
