//! An exact cache of session lookups on SQLite.
//!
//! A session check is the service's most frequent call, and on SQLite the lookup was a
//! tenth of its CPU: a read transaction (the WAL index's locks), an index search and a
//! join (docs/performance/session-cache.md). Here the sessions found are kept in memory,
//! and each is trusted only while the database has not changed since it was read.
//!
//! Whether it has is told by the WAL index header, the 48 bytes at the start of the
//! `-shm` file that every connection of every process updates in the commit of each
//! write transaction, before the commit returns, and reads to begin each read
//! transaction (<https://www.sqlite.org/walformat.html>). It holds a count of
//! transactions, the WAL's last frame and the WAL's salts, which change when the WAL
//! starts over. The header is read with one `pread` of its two copies, which SQLite
//! writes one after the other: two copies that differ are a commit being made, and
//! answer "changed".
//!
//! The `-shm` file is never removed while any connection of any process has the
//! database open (SQLite unlinks it only as the last one closes), and the store keeps
//! its writer's connection open for its whole life: the file opened here is the one
//! every connection uses.
//!
//! So a Logout, a password change or a deleted account, through this process, another
//! replica on the same file or the command line, is seen by the next lookup that
//! begins after its commit: the header it reads is not the one the cached session was
//! read under, and the whole cache is dropped. Any commit drops it (a sign-in, a
//! session's last use noted), which costs the next lookups a read each, as without the
//! cache. A session's liveness (expiry, idle time) is judged again at each hit against
//! the time of the lookup.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::store::{Liveness, SessionRecord};

/// Sessions kept at most; past it the cache starts again empty.
pub const CAPACITY: usize = 16_384;

/// The WAL index header's size; the file starts with two copies of it.
const HEADER: usize = 48;
/// The header's format version, the first four bytes (in the machine's byte order).
const WAL_INDEX_VERSION: u32 = 3_007_000;
/// The byte that is 1 once the header has been written.
const IS_INIT: usize = 12;

/// The database's state as the WAL index header last told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version([u8; HEADER]);

/// Sessions found, valid while the database is at `version`.
pub struct SessionCache {
    shm: PathBuf,
    /// The `-shm` file, opened at the first lookup that finds it.
    file: OnceLock<File>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    version: Option<Version>,
    sessions: HashMap<String, SessionRecord>,
}

impl SessionCache {
    /// The cache of the database file at `database`.
    pub fn new(database: &Path) -> Self {
        let mut shm = database.as_os_str().to_owned();
        shm.push("-shm");
        Self {
            shm: PathBuf::from(shm),
            file: OnceLock::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// The database's version now, read before a lookup; None when it cannot be told
    /// (no WAL index yet, or a commit being made), and then the cache is not used.
    pub fn version(&self) -> Option<Version> {
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let opened = File::open(&self.shm).ok()?;
                self.file.get_or_init(|| opened)
            }
        };
        let mut both = [0u8; 2 * HEADER];
        file.read_exact_at(&mut both, 0).ok()?;
        let (first, second) = both.split_at(HEADER);
        let written =
            first == second && first[IS_INIT] == 1 && first[..4] == WAL_INDEX_VERSION.to_ne_bytes();
        let mut header = [0u8; HEADER];
        header.copy_from_slice(first);
        written.then_some(Version(header))
    }

    /// The session of `digest` read at `version`, if it is kept and still live.
    pub fn get(&self, version: Version, digest: &str, live: Liveness) -> Option<SessionRecord> {
        let mut state = self.lock();
        if state.version != Some(version) {
            state.sessions.clear();
            state.version = Some(version);
            return None;
        }
        state
            .sessions
            .get(digest)
            .filter(|s| s.expires > live.now && s.last_seen.unwrap_or(s.created) > live.seen_since)
            .cloned()
    }

    /// Keeps `record`, read by a lookup that began at `version`, unless the database
    /// has been seen to change since.
    pub fn put(&self, version: Version, digest: &str, record: &SessionRecord) {
        let mut state = self.lock();
        if state.version != Some(version) {
            return;
        }
        if state.sessions.len() >= CAPACITY {
            state.sessions.clear();
        }
        state.sessions.insert(digest.to_owned(), record.clone());
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a cache: whatever a panic left in it is dropped.
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            *state = State::default();
            state
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn live(now: i64) -> Liveness {
        Liveness {
            now,
            seen_since: i64::MIN,
        }
    }

    fn record(expires: i64) -> SessionRecord {
        SessionRecord {
            user_id: "u1".into(),
            username: "asim".into(),
            email: "asim@example.com".into(),
            created: 100,
            expires,
            last_seen: None,
        }
    }

    /// A WAL database with a table, and the connection that made it.
    fn database(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("users.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER);")
            .unwrap();
        (path, conn)
    }

    #[test]
    fn a_session_is_kept_until_any_connection_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let cache = SessionCache::new(&path);
        let at = cache.version().expect("a version");
        assert!(cache.get(at, "d1", live(150)).is_none());
        cache.put(at, "d1", &record(200));
        assert_eq!(cache.version(), Some(at), "no commit, no change");
        assert_eq!(cache.get(at, "d1", live(150)).unwrap().username, "asim");
        // Another connection, as another process would, commits a write.
        let other = Connection::open(&path).unwrap();
        other.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let after = cache.version().expect("a version");
        assert!(after != at, "a commit changes the header");
        assert!(cache.get(after, "d1", live(150)).is_none());
        // A lookup that began before the commit keeps nothing now.
        cache.put(at, "d1", &record(200));
        assert!(cache.get(after, "d1", live(150)).is_none());
        // Every commit counts, the first connection's too.
        cache.put(after, "d1", &record(200));
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let third = cache.version().unwrap();
        assert!(third != after);
        assert!(cache.get(third, "d1", live(150)).is_none());
    }

    #[test]
    fn a_kept_session_is_live_only_until_it_expires_or_goes_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _writer) = database(dir.path());
        let cache = SessionCache::new(&path);
        let at = cache.version().unwrap();
        cache.get(at, "d1", live(0));
        cache.put(at, "d1", &record(200));
        assert!(cache.get(at, "d1", live(199)).is_some());
        assert!(cache.get(at, "d1", live(200)).is_none(), "expired");
        let idle = Liveness {
            now: 150,
            seen_since: 100,
        };
        assert!(
            cache.get(at, "d1", idle).is_none(),
            "idle since it was made"
        );
        let seen = SessionRecord {
            last_seen: Some(120),
            ..record(200)
        };
        cache.put(at, "d1", &seen);
        assert!(cache.get(at, "d1", idle).is_some(), "seen since");
    }

    #[test]
    fn a_header_being_written_or_missing_tells_no_version() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SessionCache::new(&dir.path().join("none.db"))
            .version()
            .is_none());
        let (path, _writer) = database(dir.path());
        let cache = SessionCache::new(&path);
        assert!(cache.version().is_some());
        // Copies that differ: a commit between its two writes.
        let shm = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("users.db-shm"))
            .unwrap();
        shm.write_all_at(&[0xff], 20).unwrap();
        assert!(cache.version().is_none());
    }

    #[test]
    fn a_full_cache_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _writer) = database(dir.path());
        let cache = SessionCache::new(&path);
        let at = cache.version().unwrap();
        cache.get(at, "", live(0));
        for i in 0..CAPACITY {
            cache.put(at, &format!("d{i}"), &record(200));
        }
        assert!(cache.get(at, "d0", live(150)).is_some());
        cache.put(at, "one more", &record(200));
        assert!(cache.get(at, "d0", live(150)).is_none());
        assert!(cache.get(at, "one more", live(150)).is_some());
    }
}
