//! Group commit for SQLite: many transactions, one fsync.
//!
//! SQLite with `synchronous=FULL` syncs the WAL file at every commit, and its single
//! writer holds the write lock until that sync is done: one fsync per write, and every
//! writer waits in line behind every other writer's fsync. The service's writer
//! connection instead runs with `synchronous=NORMAL` (a commit writes its frames to the
//! WAL without syncing; SQLite still syncs the WAL before every checkpoint and the
//! database file after it), and every write waits here, after its commit and with the
//! write lock already released, until an fsync of the WAL that *started after its
//! commit* has completed. One fsync covers every commit written before it began, so
//! the writes that commit while one sync runs all share the next one, and the writer
//! is free for the next transaction meanwhile.
//!
//! A write is acknowledged only after its sync: nothing acknowledged is lost, on a
//! power cut as on a crash of the process. Each transaction still commits (or fails)
//! on its own, so each write keeps its own outcome. A failed fsync is not retried:
//! after one, the kernel may have dropped the pages it could not write and a second
//! fsync could report success without them, so every later write is refused until the
//! process restarts.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::watch;

/// Where the syncs stand, shared with the thread that makes them.
#[derive(Debug, Default)]
struct Tickets {
    /// Tickets handed out: one per committed write, numbered from 1.
    issued: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// fsyncs made, for the metrics.
    syncs: u64,
    /// An fsync failed: nothing more is acknowledged.
    failed: bool,
    /// The store is gone: the thread ends.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    tickets: Mutex<Tickets>,
    /// Wakes the sync thread when a ticket is issued or the store closes.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tickets> {
        // The lock guards plain counters that are never left half-updated.
        self.tickets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a waiting write sees of the syncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    synced: u64,
    failed: bool,
}

/// Makes committed writes durable in groups: see the module's documentation.
#[derive(Debug)]
pub(super) struct GroupSync {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
}

/// How one fsync is made: of the WAL file, in the service; in the tests, whatever they
/// need to hold a sync open while writes arrive.
pub(super) type SyncFn = Box<dyn FnMut() -> io::Result<()> + Send>;

impl GroupSync {
    /// Syncs the WAL of the SQLite database at `database`.
    pub(super) fn for_database(database: &Path) -> io::Result<Self> {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        Self::with(Box::new(move || sync_file(&wal)))
    }

    /// Syncs with `sync`, on a thread of its own.
    pub(super) fn with(mut sync: SyncFn) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            tickets: Mutex::new(Tickets::default()),
            wake: Condvar::new(),
        });
        let (publish, progress) = watch::channel(Progress::default());
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-sync".into())
            .spawn(move || loop {
                let target = {
                    let mut tickets = thread.lock();
                    while tickets.issued == tickets.synced && !tickets.closed {
                        tickets = thread
                            .wake
                            .wait(tickets)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    if tickets.closed {
                        return;
                    }
                    // Every ticket issued so far belongs to a commit already written.
                    tickets.issued
                };
                let outcome = sync();
                let progress = {
                    let mut tickets = thread.lock();
                    tickets.syncs += 1;
                    match &outcome {
                        Ok(()) => tickets.synced = target,
                        Err(_) => tickets.failed = true,
                    }
                    Progress {
                        synced: tickets.synced,
                        failed: tickets.failed,
                    }
                };
                if let Err(err) = outcome {
                    tracing::error!(
                        error = %err,
                        "fsync of the SQLite WAL failed: no write is acknowledged until restart"
                    );
                }
                publish.send_replace(progress);
                if progress.failed {
                    return;
                }
            })?;
        Ok(Self { shared, progress })
    }

    /// Returns once everything committed before the call is durable, or fails if it
    /// cannot be made so. Call it after the commit, with the write lock released.
    /// Cancelling the wait changes nothing for the other writes.
    pub(super) async fn durable(&self) -> io::Result<()> {
        let ticket = {
            let mut tickets = self.shared.lock();
            if tickets.failed {
                return Err(failed());
            }
            tickets.issued += 1;
            tickets.issued
        };
        self.shared.wake.notify_one();
        let mut progress = self.progress.clone();
        let reached = progress
            .wait_for(|now| now.failed || now.synced >= ticket)
            .await
            .map(|now| *now);
        match reached {
            Ok(now) if now.synced >= ticket => Ok(()),
            _ => Err(failed()),
        }
    }

    /// (fsyncs made, writes made durable by them).
    pub(super) fn counts(&self) -> (u64, u64) {
        let tickets = self.shared.lock();
        (tickets.syncs, tickets.synced)
    }
}

impl Drop for GroupSync {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

fn failed() -> io::Error {
    io::Error::other("an fsync of the SQLite WAL failed earlier; restart the service")
}

/// `fdatasync` of the file at `path`: its data and what is needed to read it back (its
/// size). The file is opened for each sync rather than kept open, so that a WAL that
/// SQLite deleted and made anew is still the one synced; and opened for reading, which
/// is all a sync needs, so that a database on a read-only file system (where nothing
/// can have been written) syncs as well.
pub(super) fn sync_file(path: &Path) -> io::Result<()> {
    match std::fs::File::open(path) {
        Ok(file) => file.sync_data(),
        // No WAL: SQLite checkpointed and removed it, syncing the database file first.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A sync that reports when it starts and then waits for the test's go-ahead.
    fn gated() -> (
        Arc<GroupSync>,
        mpsc::Receiver<()>,
        mpsc::Sender<io::Result<()>>,
    ) {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<io::Result<()>>();
        let sync = GroupSync::with(Box::new(move || {
            let _ = started_tx.send(());
            release_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| Err(io::Error::other("the test never released the sync")))
        }))
        .unwrap();
        (Arc::new(sync), started, release)
    }

    /// A write that waits for its sync in a task of its own.
    fn durable_in_task(sync: &Arc<GroupSync>) -> tokio::task::JoinHandle<io::Result<()>> {
        let sync = sync.clone();
        tokio::spawn(async move { sync.durable().await })
    }

    /// A write that waits in a task of its own, once its sync has started.
    fn syncing(
        sync: &Arc<GroupSync>,
        started: &mpsc::Receiver<()>,
    ) -> tokio::task::JoinHandle<io::Result<()>> {
        let task = durable_in_task(sync);
        tokio::task::block_in_place(|| wait(started));
        task
    }

    fn wait(started: &mpsc::Receiver<()>) {
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("a sync started");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_commit_during_a_sync_share_the_next_one() {
        let (sync, started, release) = gated();
        let first = syncing(&sync, &started);
        // Ten writes commit while the first sync runs: it began before them, so it
        // cannot cover them, and none of them may be answered by it.
        let mut later = Vec::new();
        for _ in 0..10 {
            later.push(durable_in_task(&sync));
        }
        // Every one of them holds a ticket once the sync thread sees more issued.
        while sync.shared.lock().issued < 11 {
            tokio::task::yield_now().await;
        }
        release.send(Ok(())).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(
            sync.counts(),
            (1, 1),
            "the first sync covers the first write only"
        );
        assert!(later.iter().all(|task| !task.is_finished()));
        tokio::task::block_in_place(|| wait(&started));
        release.send(Ok(())).unwrap();
        for task in later {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            sync.counts(),
            (2, 11),
            "one more sync covers the ten writes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_its_writes_and_every_later_one() {
        let (sync, started, release) = gated();
        let waiting = syncing(&sync, &started);
        release.send(Err(io::Error::other("EIO"))).unwrap();
        assert!(waiting.await.unwrap().is_err());
        assert!(
            sync.durable().await.is_err(),
            "no later write is acknowledged"
        );
        assert_eq!(sync.counts().1, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_wait_leaves_the_others_served() {
        let (sync, started, release) = gated();
        let cancelled = syncing(&sync, &started);
        cancelled.abort();
        release.send(Ok(())).unwrap();
        let next = syncing(&sync, &started);
        release.send(Ok(())).unwrap();
        next.await.unwrap().unwrap();
        assert_eq!(sync.counts(), (2, 2));
    }

    #[test]
    fn a_missing_wal_needs_no_sync_and_an_existing_one_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("users.db-wal");
        sync_file(&wal).unwrap();
        std::fs::write(&wal, b"frames").unwrap();
        sync_file(&wal).unwrap();
    }
}
