//! An exact cache of the hot point reads on SQLite: session checks, users read by id,
//! username or address, and searches.
//!
//! A session check is the service's most frequent call, and on SQLite the lookup was a
//! tenth of its CPU: a read transaction (the WAL index's locks), an index search and a
//! join (docs/performance/read-cache.md). Here what the lookups found is kept in
//! memory, and each answer is trusted only while the database has not changed since it
//! was read.
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
//! One commit does not empty the cache: the service's own note of sessions' last uses
//! (`last_seen`, written about once a second). It is made through this process's
//! writer, with the header read before it ([`ReadCache::note_begins`]) and after it
//! ([`Note::written`]), and it was the only commit between the two when the header's
//! count of transactions moved by exactly one (every commit of every connection adds
//! one; a WAL started over changes the salts, not the count). The sessions kept then
//! get the `last_seen` the statement wrote, and the cache goes on under the new header.
//! Until the writer has looked, a lookup that reads a newer header misses without
//! emptying the cache; two commits or more, and it is emptied as for any other.
//!
//! The `-shm` file is never removed while any connection of any process has the
//! database open (SQLite unlinks it only as the last one closes), and the store keeps
//! its writer's connection open for its whole life: the file opened here is the one
//! every connection uses.
//!
//! So a Logout, a password change, a new username or a deleted account, through this
//! process, another replica on the same file or the command line, is seen by the next
//! lookup that begins after its commit: the header it reads is not the one the cached
//! answer was read under, and the whole cache is dropped. Any other commit drops it (a
//! sign-in, a change of any account), which costs the next lookups a read each, as
//! without the cache. A session's liveness (expiry, idle time) is judged again at each
//! hit against the time of the lookup.
//!
//! What is kept is bounded by an estimate of its bytes ([`BUDGET`]): profiles reach
//! 256 KiB, so a count of entries alone would not bound the memory.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::domain::{User, UserQuery};
use crate::store::{Liveness, Lookup, SessionRecord};

/// The bytes kept at most by default, as [`Cost`] estimates them; past its budget the
/// cache starts again empty (`--db-read-cache-mib`).
pub const BUDGET: usize = 32 << 20;
/// What an entry costs beyond its strings: the map's slot, the strings' and the
/// structures' headers, the allocator's rounding.
const ENTRY: usize = 160;
/// What each string of a profile costs beyond its bytes.
const PROFILE_ENTRY: usize = 64;

/// The WAL index header's size; the file starts with two copies of it.
const HEADER: usize = 48;
/// The header's format version, the first four bytes (in the machine's byte order).
const WAL_INDEX_VERSION: u32 = 3_007_000;
/// The byte that is 1 once the header has been written.
const IS_INIT: usize = 12;
/// Where the header keeps its count of committed transactions (`iChange`, a `u32` in
/// the machine's byte order), and the WAL's salts, new each time the WAL starts over.
const COMMITS: usize = 8;
const SALTS: std::ops::Range<usize> = 32..40;
/// How far behind the cache's a lookup's header may be counted as read before it (a
/// lookup that read the header just before a commit): further, and it is taken for a
/// WAL rebuilt from scratch.
const BEHIND: u32 = 16;

/// The database's state as the WAL index header last told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version([u8; HEADER]);

impl Version {
    /// The count of transactions committed.
    fn commits(&self) -> u32 {
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| self.0[COMMITS + i]);
        u32::from_ne_bytes([a, b, c, d])
    }

    /// Whether this header was read before `later`, a few commits into the same WAL.
    fn before(&self, later: &Version) -> bool {
        self.0[SALTS] == later.0[SALTS]
            && (1..=BEHIND).contains(&later.commits().wrapping_sub(self.commits()))
    }
}

/// Answers found, valid while the database is at `version`.
pub struct ReadCache {
    shm: PathBuf,
    /// The bytes kept at most; an answer larger than a sixteenth of it is not kept.
    budget: usize,
    /// The `-shm` file, opened at the first lookup that finds it.
    file: OnceLock<File>,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct State {
    version: Option<Version>,
    /// The estimated bytes of what is kept.
    bytes: usize,
    /// Sessions under their token's digest.
    sessions: HashMap<String, SessionRecord>,
    /// Users by id, by username and by address.
    users: [HashMap<String, User>; 3],
    searches: HashMap<SearchKey, Vec<User>>,
    /// The header a note of sessions' uses began at, while the writer writes it.
    noting: Option<Version>,
}

/// A note of sessions' uses being written ([`ReadCache::note_begins`]).
pub struct Note<'a> {
    cache: &'a ReadCache,
    before: Version,
    ended: bool,
}

impl Note<'_> {
    /// The note was written: it set `last_seen` to `at` for the sessions of `digests`
    /// last seen before `at`; `changed`: whether any row was (a statement that changes
    /// none commits nothing). When the header shows that commit alone since the note
    /// began, the sessions kept get the same `last_seen` and the cache holds the new
    /// header's answers. Otherwise nothing changes here, and the next lookup sees a
    /// header unlike the cache's and empties it.
    pub fn written<'a>(
        mut self,
        changed: bool,
        digests: impl IntoIterator<Item = &'a str>,
        at: i64,
    ) {
        self.ended = true;
        let used = changed.then_some((digests.into_iter(), at));
        self.cache.note_ends(self.before, used);
    }
}

impl Drop for Note<'_> {
    /// A note given up (its statement failed, or its task was cancelled) keeps nothing.
    fn drop(&mut self) {
        if !self.ended {
            self.cache
                .note_ends(self.before, None::<(std::iter::Empty<&str>, i64)>);
        }
    }
}

impl State {
    fn clear(&mut self) {
        self.bytes = 0;
        self.sessions.clear();
        self.users.iter_mut().for_each(HashMap::clear);
        self.searches.clear();
    }
}

/// A search's terms and page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchKey {
    username: Option<String>,
    email: Option<String>,
    limit: u32,
    offset: u64,
}

impl SearchKey {
    pub fn of(query: &UserQuery) -> Self {
        Self {
            username: query.username.as_ref().map(|u| u.as_str().to_owned()),
            email: query.email.as_ref().map(|e| e.as_str().to_owned()),
            limit: query.page.limit,
            offset: query.page.offset,
        }
    }
}

/// An estimate of the memory an answer holds.
trait Cost {
    fn cost(&self) -> usize;
}

impl Cost for SessionRecord {
    fn cost(&self) -> usize {
        ENTRY + self.user_id.len() + self.username.len() + self.email.len()
    }
}

impl Cost for User {
    fn cost(&self) -> usize {
        let profile: usize = (self.profile.as_map().iter())
            .map(|(key, value)| PROFILE_ENTRY + key.len() + value.len())
            .sum();
        ENTRY + self.id.len() + self.username.len() + self.email.len() + profile
    }
}

impl Cost for Vec<User> {
    fn cost(&self) -> usize {
        ENTRY + self.iter().map(Cost::cost).sum::<usize>()
    }
}

/// Which of the user maps a lookup reads, and its key.
fn user_key(lookup: Lookup<'_>) -> (usize, &str) {
    match lookup {
        Lookup::Id(id) => (0, id.as_str()),
        Lookup::Username(username) => (1, username.as_str()),
        Lookup::Email(email) => (2, email.as_str()),
    }
}

impl ReadCache {
    /// The cache of the database file at `database`, keeping at most `budget` bytes.
    pub fn new(database: &Path, budget: usize) -> Self {
        let mut shm = database.as_os_str().to_owned();
        shm.push("-shm");
        Self {
            shm: PathBuf::from(shm),
            budget,
            file: OnceLock::new(),
            state: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The database's version now, read before a lookup; None when it cannot be told
    /// (no WAL index yet, or a commit being made), and then the cache is not used.
    pub fn version(&self) -> Option<Version> {
        let version = self.header();
        if version.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        version
    }

    /// A note of sessions' uses about to be written by this process's writer, which
    /// holds the writer until the note is [`Note::written`] or dropped. None when the
    /// cache holds no answers of the database as it is now.
    ///
    /// Until then, a lookup that reads a newer header misses without emptying the
    /// cache: the newer header may be the note's commit alone, and the sessions kept
    /// are then kept through it.
    pub fn note_begins(&self) -> Option<Note<'_>> {
        let before = self.header()?;
        let mut state = self.lock();
        if state.version != Some(before) {
            return None;
        }
        state.noting = Some(before);
        Some(Note {
            cache: self,
            before,
            ended: false,
        })
    }

    /// Ends the note begun at `before`; `used`: what it wrote, when it committed.
    fn note_ends<'a>(&self, before: Version, used: Option<(impl Iterator<Item = &'a str>, i64)>) {
        // The header after it matters only when the note committed.
        let after = used.as_ref().and_then(|_| self.header());
        let mut state = self.lock();
        if state.noting != Some(before) {
            return;
        }
        state.noting = None;
        let (Some((digests, at)), Some(after)) = (used, after) else {
            return;
        };
        // The note's commit, and no other since `before`.
        if state.version != Some(before) || after.commits() != before.commits().wrapping_add(1) {
            return;
        }
        for digest in digests {
            if let Some(session) = state.sessions.get_mut(digest) {
                if session.last_seen.is_none_or(|seen| seen < at) {
                    session.last_seen = Some(at);
                }
            }
        }
        state.version = Some(after);
    }

    fn header(&self) -> Option<Version> {
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

    /// (hits, misses) since the store opened: lookups answered from memory, and those
    /// that read the database.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The session of `digest` read at `version`, if it is kept and still live.
    pub fn session(&self, version: Version, digest: &str, live: Liveness) -> Option<SessionRecord> {
        self.found(version, |state| {
            state.sessions.get(digest).filter(|s| {
                s.expires > live.now && s.last_seen.unwrap_or(s.created) > live.seen_since
            })
        })
    }

    /// The user `lookup` finds at `version`, if it is kept.
    pub fn user(&self, version: Version, lookup: Lookup<'_>) -> Option<User> {
        let (map, key) = user_key(lookup);
        self.found(version, |state| state.users[map].get(key))
    }

    /// The users `search` found at `version`, if they are kept.
    pub fn search(&self, version: Version, search: &SearchKey) -> Option<Vec<User>> {
        self.found(version, |state| state.searches.get(search))
    }

    /// Keeps `record`, read by a lookup that began at `version`.
    pub fn keep_session(&self, version: Version, digest: &str, record: &SessionRecord) {
        self.keep(version, digest.len() + record.cost(), |state| {
            state.sessions.insert(digest.to_owned(), record.clone());
        });
    }

    /// Keeps `user`, found by `lookup` that began at `version`.
    pub fn keep_user(&self, version: Version, lookup: Lookup<'_>, user: &User) {
        let (map, key) = user_key(lookup);
        self.keep(version, key.len() + user.cost(), |state| {
            state.users[map].insert(key.to_owned(), user.clone());
        });
    }

    /// Keeps `users`, found by `search` that began at `version`.
    pub fn keep_search(&self, version: Version, search: SearchKey, users: &Vec<User>) {
        let terms = search.username.as_ref().map_or(0, String::len)
            + search.email.as_ref().map_or(0, String::len);
        self.keep(version, terms + users.cost(), |state| {
            state.searches.insert(search, users.clone());
        });
    }

    /// What `pick` finds kept, if the database is still at `version`. Else the cache
    /// is emptied and now holds `version`'s answers, unless `version` is older than
    /// the cache's (a lookup that read the header just before a commit): then the
    /// lookup reads the database and the cache is left as it is.
    fn found<T: Clone>(
        &self,
        version: Version,
        pick: impl FnOnce(&State) -> Option<&T>,
    ) -> Option<T> {
        let found = {
            let mut state = self.lock();
            match state.version {
                Some(held) if held == version => pick(&state).cloned(),
                Some(held) if version.before(&held) => None,
                // Newer, perhaps by the note being written alone.
                Some(held) if state.noting == Some(held) => None,
                _ => {
                    state.clear();
                    state.version = Some(version);
                    None
                }
            }
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Adds an answer of `cost` bytes with `insert`, unless the database has been seen
    /// to change since `version`, the lookup's, or the answer is too large to keep.
    fn keep(&self, version: Version, cost: usize, insert: impl FnOnce(&mut State)) {
        if cost > self.budget / 16 {
            return;
        }
        let mut state = self.lock();
        if state.version != Some(version) {
            return;
        }
        if state.bytes + cost > self.budget {
            state.clear();
            state.version = Some(version);
        }
        state.bytes += cost;
        insert(&mut state);
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
        let cache = ReadCache::new(&path, BUDGET);
        let at = cache.version().expect("a version");
        assert!(cache.session(at, "d1", live(150)).is_none());
        cache.keep_session(at, "d1", &record(200));
        assert_eq!(cache.version(), Some(at), "no commit, no change");
        assert_eq!(cache.session(at, "d1", live(150)).unwrap().username, "asim");
        // Another connection, as another process would, commits a write.
        let other = Connection::open(&path).unwrap();
        other.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let after = cache.version().expect("a version");
        assert!(after != at, "a commit changes the header");
        assert!(cache.session(after, "d1", live(150)).is_none());
        // A lookup that began before the commit keeps nothing now.
        cache.keep_session(at, "d1", &record(200));
        assert!(cache.session(after, "d1", live(150)).is_none());
        // Every commit counts, the first connection's too.
        cache.keep_session(after, "d1", &record(200));
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let third = cache.version().unwrap();
        assert!(third != after);
        assert!(cache.session(third, "d1", live(150)).is_none());
    }

    #[test]
    fn the_writers_own_note_of_session_uses_keeps_what_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let cache = ReadCache::new(&path, BUDGET);
        let at = cache.version().unwrap();
        let id = crate::domain::UserId::parse("id", Some("u1".into())).unwrap();
        assert!(cache.session(at, "d1", live(0)).is_none());
        cache.keep_session(at, "d1", &record(200));
        let later = SessionRecord {
            last_seen: Some(180),
            ..record(200)
        };
        cache.keep_session(at, "d2", &later);
        cache.keep_user(at, Lookup::Id(&id), &user("u1", 0));
        // The writer's one commit, the note of d1, d2 and d3 used at 150.
        let note = cache.note_begins().expect("the cache holds the header now");
        writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let after = cache.version().unwrap();
        assert!(after != at);
        let seen = |version, digest| cache.session(version, digest, live(160)).unwrap();
        // While it is written, a lookup with the newer header misses, dropping nothing.
        assert!(cache.session(after, "d1", live(160)).is_none());
        assert_eq!(seen(at, "d1").last_seen, None);
        note.written(true, ["d1", "d2", "d3"], 150);
        assert_eq!(seen(after, "d1").last_seen, Some(150));
        assert_eq!(seen(after, "d2").last_seen, Some(180), "not moved back");
        assert!(cache.session(after, "d3", live(160)).is_none(), "not kept");
        assert!(cache.user(after, Lookup::Id(&id)).is_some());
        // Another connection's commit beside the writer's: two commits, all dropped.
        let note = cache.note_begins().unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute("INSERT INTO t VALUES (2)", []).unwrap();
        writer.execute("INSERT INTO t VALUES (3)", []).unwrap();
        note.written(true, ["d1"], 170);
        let third = cache.version().unwrap();
        assert!(cache.session(third, "d1", live(160)).is_none());
        assert!(cache.user(third, Lookup::Id(&id)).is_none());
        // A note that changed no row committed nothing: the one commit is another's.
        cache.keep_session(third, "d1", &record(200));
        let note = cache.note_begins().unwrap();
        other.execute("INSERT INTO t VALUES (4)", []).unwrap();
        note.written(false, ["d1"], 170);
        let fourth = cache.version().unwrap();
        assert!(cache.session(fourth, "d1", live(160)).is_none());
        // A note given up (a failed statement, a cancelled task) keeps nothing.
        cache.keep_session(fourth, "d1", &record(200));
        let note = cache.note_begins().unwrap();
        writer.execute("INSERT INTO t VALUES (5)", []).unwrap();
        drop(note);
        let fifth = cache.version().unwrap();
        assert!(cache.session(fifth, "d1", live(160)).is_none());
        // A cache that holds another header's answers has no note to keep them through.
        writer.execute("INSERT INTO t VALUES (6)", []).unwrap();
        assert!(cache.note_begins().is_none());
    }

    #[test]
    fn a_lookup_that_read_an_older_header_misses_and_drops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let cache = ReadCache::new(&path, BUDGET);
        let at = cache.version().unwrap();
        writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let after = cache.version().unwrap();
        assert!(cache.session(after, "d1", live(0)).is_none());
        cache.keep_session(after, "d1", &record(200));
        // A lookup that read the header before the commit: a miss, and nothing kept.
        assert!(cache.session(at, "d1", live(0)).is_none());
        cache.keep_session(at, "d2", &record(200));
        assert!(cache.session(after, "d1", live(0)).is_some(), "still kept");
        assert!(cache.session(after, "d2", live(0)).is_none());
        // A header from a WAL started over is not older: the cache takes it.
        writer
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); INSERT INTO t VALUES (2);")
            .unwrap();
        let restarted = cache.version().unwrap();
        assert!(cache.session(restarted, "d1", live(0)).is_none());
        cache.keep_session(restarted, "d3", &record(200));
        assert!(cache.session(restarted, "d3", live(0)).is_some());
    }

    #[test]
    fn a_kept_session_is_live_only_until_it_expires_or_goes_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _writer) = database(dir.path());
        let cache = ReadCache::new(&path, BUDGET);
        let at = cache.version().unwrap();
        cache.session(at, "d1", live(0));
        cache.keep_session(at, "d1", &record(200));
        assert!(cache.session(at, "d1", live(199)).is_some());
        assert!(cache.session(at, "d1", live(200)).is_none(), "expired");
        let idle = Liveness {
            now: 150,
            seen_since: 100,
        };
        assert!(
            cache.session(at, "d1", idle).is_none(),
            "idle since it was made"
        );
        let seen = SessionRecord {
            last_seen: Some(120),
            ..record(200)
        };
        cache.keep_session(at, "d1", &seen);
        assert!(cache.session(at, "d1", idle).is_some(), "seen since");
    }

    #[test]
    fn a_header_being_written_or_missing_tells_no_version() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ReadCache::new(&dir.path().join("none.db"), BUDGET)
            .version()
            .is_none());
        let (path, _writer) = database(dir.path());
        let cache = ReadCache::new(&path, BUDGET);
        assert!(cache.version().is_some());
        // Copies that differ: a commit between its two writes.
        let shm = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("users.db-shm"))
            .unwrap();
        shm.write_all_at(&[0xff], 20).unwrap();
        assert!(cache.version().is_none());
    }

    fn user(id: &str, profile: usize) -> User {
        let profile = (0..profile)
            .map(|i| (format!("k{i}"), "v".repeat(4096)))
            .collect();
        User {
            id: id.into(),
            username: format!("name-{id}"),
            email: format!("{id}@example.com"),
            created: 1,
            updated: 1,
            verified: false,
            verification_date: 0,
            profile: crate::domain::Profile::parse(profile).unwrap(),
        }
    }

    #[test]
    fn users_and_searches_are_kept_until_any_connection_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database(dir.path());
        let cache = ReadCache::new(&path, BUDGET);
        let at = cache.version().unwrap();
        let id = crate::domain::UserId::parse("id", Some("u1".into())).unwrap();
        let name = crate::domain::Username::parse(Some("name-u1".into())).unwrap();
        assert!(cache.user(at, Lookup::Id(&id)).is_none());
        cache.keep_user(at, Lookup::Id(&id), &user("u1", 1));
        assert_eq!(cache.user(at, Lookup::Id(&id)), Some(user("u1", 1)));
        assert!(
            cache.user(at, Lookup::Username(&name)).is_none(),
            "each lookup is kept under its own key"
        );
        let query = UserQuery::parse(Some("name-u1".into()), None, Some(10), Some(0)).unwrap();
        let other_page = UserQuery::parse(Some("name-u1".into()), None, Some(10), Some(1)).unwrap();
        cache.keep_search(at, SearchKey::of(&query), &vec![user("u1", 0)]);
        assert_eq!(
            cache.search(at, &SearchKey::of(&query)),
            Some(vec![user("u1", 0)])
        );
        assert!(cache.search(at, &SearchKey::of(&other_page)).is_none());
        writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let after = cache.version().unwrap();
        assert!(cache.user(after, Lookup::Id(&id)).is_none());
        assert!(cache.search(after, &SearchKey::of(&query)).is_none());
        let (hits, misses) = cache.counts();
        assert_eq!((hits, misses), (2, 5));
    }

    #[test]
    fn what_is_kept_is_bounded_by_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _writer) = database(dir.path());
        let cache = ReadCache::new(&path, BUDGET);
        let at = cache.version().unwrap();
        cache.session(at, "", live(0));
        // Users with 16 KiB profiles: the budget holds about 2,000 of them.
        let big = user("u00000", 4);
        let fits = BUDGET / ("u00000".len() + big.cost());
        let ids: Vec<_> = (0..=fits)
            .map(|i| crate::domain::UserId::parse("id", Some(format!("u{i:05}"))).unwrap())
            .collect();
        for id in &ids[..fits] {
            cache.keep_user(at, Lookup::Id(id), &user(id.as_str(), 4));
        }
        assert!(cache.user(at, Lookup::Id(&ids[0])).is_some());
        cache.keep_user(at, Lookup::Id(&ids[fits]), &user(ids[fits].as_str(), 4));
        assert!(
            cache.user(at, Lookup::Id(&ids[0])).is_none(),
            "started again"
        );
        assert!(cache.user(at, Lookup::Id(&ids[fits])).is_some());
        // An answer larger than a sixteenth of the budget is not kept at all.
        let huge: Vec<User> = (0..(BUDGET / 16 / big.cost() + 1))
            .map(|i| user(&format!("h{i}"), 4))
            .collect();
        let query = UserQuery::parse(None, Some("a@example.com".into()), None, None).unwrap();
        cache.keep_search(at, SearchKey::of(&query), &huge);
        assert!(cache.search(at, &SearchKey::of(&query)).is_none());
        assert!(
            cache.user(at, Lookup::Id(&ids[fits])).is_some(),
            "nothing dropped"
        );
    }
}
