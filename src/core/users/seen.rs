//! When sessions were last used. A use is noted in memory as the request is answered
//! and written a moment later, many sessions to a statement, so that checking a session
//! is not a write in the request's path.
//!
//! What stays exact:
//! - In this process, a noted use counts at once: a session kept alive by a use not yet
//!   written is still live here (see [`Users::live_session`](super::Users)).
//! - On other replicas, a use counts once written. A use is written in the request's
//!   path when, without it, the session would go idle within [`URGENT`] seconds, so no
//!   replica sees a session used a moment ago as idle.
//! - ListSessions and the sweep write what is noted before they read, and so does a
//!   clean shutdown. A crash loses at most the last moment's notes: `last_seen` is a
//!   hint (written at most once a minute) and no one was told it was written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::domain::TokenDigest;
use crate::error::Error;
use crate::store::Store;

/// How long after the first of a batch its uses are written.
const FLUSH_DELAY: Duration = Duration::from_secs(1);
/// A use is written at once when the session would otherwise go idle within this many
/// seconds (far more than a batch takes to be written).
pub(super) const URGENT: i64 = 10;
/// Most sessions named by one statement.
const STATEMENT_BATCH: usize = 500;
/// Most uses held in memory; beyond, a use is not noted (the session's next use notes
/// it again). About 150 bytes each.
const MAX_NOTED: usize = 50_000;

pub(super) struct SeenLog {
    store: Arc<dyn Store>,
    state: Mutex<Noted>,
    /// A flush is due (one waits for `FLUSH_DELAY`).
    scheduled: AtomicBool,
    /// One flush at a time, so that `writing` is one flush's.
    flushing: tokio::sync::Mutex<()>,
}

/// Uses by session, with the second each was noted.
#[derive(Default)]
struct Noted {
    queued: HashMap<TokenDigest, i64>,
    /// Taken by the flush under way; kept until written, so a use counts meanwhile.
    writing: HashMap<TokenDigest, i64>,
}

impl SeenLog {
    pub(super) fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            state: Mutex::default(),
            scheduled: AtomicBool::new(false),
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    fn noted(&self) -> std::sync::MutexGuard<'_, Noted> {
        // The maps hold plain values: one left by a panicking thread is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last use of the session noted here and not yet written.
    pub(super) fn pending(&self, digest: &TokenDigest) -> Option<i64> {
        let noted = self.noted();
        noted
            .queued
            .get(digest)
            .into_iter()
            .chain(noted.writing.get(digest))
            .copied()
            .max()
    }

    /// Notes a use at `now`, unless one after `since` is already noted; the note is
    /// written within about [`FLUSH_DELAY`].
    pub(super) fn note(self: &Arc<Self>, digest: &TokenDigest, now: i64, since: i64) {
        {
            let mut noted = self.noted();
            if noted.writing.get(digest).is_some_and(|&at| at > since) {
                return;
            }
            let full = noted.queued.len() >= MAX_NOTED;
            match noted.queued.get_mut(digest) {
                Some(at) if *at > since => return,
                Some(at) => *at = now,
                None if full => return,
                None => {
                    noted.queued.insert(digest.clone(), now);
                }
            }
        }
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let log = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FLUSH_DELAY).await;
                log.scheduled.store(false, Ordering::Release);
                if let Err(err) = log.flush().await {
                    tracing::warn!(error = %crate::error::chain(&err), "sessions' last use was not recorded");
                }
            });
        }
    }

    /// Writes every use noted so far.
    pub(super) async fn flush(&self) -> Result<(), Error> {
        let _turn = self.flushing.lock().await;
        let mut by_time: BTreeMap<i64, Vec<TokenDigest>> = BTreeMap::new();
        {
            let mut noted = self.noted();
            // What a cancelled flush left in `writing` is written by this one.
            let queued = std::mem::take(&mut noted.queued);
            for (digest, at) in queued {
                let slot = noted.writing.entry(digest).or_insert(at);
                *slot = (*slot).max(at);
            }
            for (digest, &at) in &noted.writing {
                by_time.entry(at).or_default().push(digest.clone());
            }
        }
        let mut written = Ok(());
        'times: for (at, digests) in by_time {
            for batch in digests.chunks(STATEMENT_BATCH) {
                if let Err(err) = self.store.touch_sessions(batch, at).await {
                    written = Err(err.into());
                    break 'times;
                }
            }
        }
        // Written or not (a failing store), these notes are done: the sessions' next
        // uses note them again.
        self.noted().writing.clear();
        written
    }
}
