//! PostgreSQL connections kept for the hot point reads (a session, an account).
//!
//! sqlx's pool sends a `Sync` and waits for the server's answer when it hands out a
//! connection (`test_before_acquire`) and again when the connection comes back: three
//! round trips to the server for a one-statement read, and the connection is held by
//! the pool's check for two of them. These connections are held by the reads alone, so
//! a point read is one round trip: its prepared statement's Bind, Execute and Sync.
//!
//! What the pool's checks guard against is handled here instead:
//! - a read cancelled half-way (its request went away) may leave the connection with a
//!   statement in flight: the connection is dropped, not reused;
//! - a connection the server closed (a restart, a failover) fails its next read with
//!   an I/O error: it is dropped, and the read is retried once on a new connection
//!   (reads change nothing, so a retry is safe).
//!
//! Waiting for a free connection and making one are bounded by the pool's acquire
//! timeout, as the pool's are: a database that does not answer is a quick 503.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tokio::sync::{Mutex, MutexGuard};

pub(super) struct PgReaders {
    options: PgConnectOptions,
    /// The longest wait for a free connection, and for a new one.
    timeout: Duration,
    /// Connected on first use.
    slots: Box<[Mutex<Option<PgConnection>>]>,
    /// Where the next read starts looking for a free slot.
    next: AtomicUsize,
}

impl PgReaders {
    /// Up to `count` connections (at least one), made with `options` when first needed.
    pub(super) fn new(options: PgConnectOptions, count: u32, timeout: Duration) -> Self {
        let count = usize::try_from(count.max(1)).unwrap_or(1);
        Self {
            options,
            timeout,
            slots: (0..count).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection of its own for one read: the first free one, or else the next in
    /// turn once it is free.
    pub(super) async fn slot(&self) -> Result<ReadSlot<'_>, sqlx::Error> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.slots.len();
        let free = (0..count).find_map(|i| self.slots[(start + i) % count].try_lock().ok());
        let guard = match free {
            Some(guard) => guard,
            None => tokio::time::timeout(self.timeout, self.slots[start % count].lock())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?,
        };
        Ok(ReadSlot {
            guard,
            options: &self.options,
            timeout: self.timeout,
            in_flight: false,
            reused: false,
        })
    }

    /// Closes every connection, waiting for reads in progress.
    pub(super) async fn close(&self) {
        for slot in self.slots.iter() {
            if let Some(conn) = slot.lock().await.take() {
                let _ = conn.close().await;
            }
        }
    }
}

/// One reader connection, held for one read.
pub(super) struct ReadSlot<'a> {
    guard: MutexGuard<'a, Option<PgConnection>>,
    options: &'a PgConnectOptions,
    timeout: Duration,
    /// A read is using the connection and has not finished.
    in_flight: bool,
    /// The connection was there before this read: a failure of it may be one the
    /// server caused while it was idle.
    reused: bool,
}

impl ReadSlot<'_> {
    /// The connection, made now if the slot has none; the read must then hand its
    /// outcome to [`ReadSlot::finished`].
    pub(super) async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.reused = self.guard.is_some();
        if self.guard.is_none() {
            let made = tokio::time::timeout(self.timeout, PgConnection::connect_with(self.options))
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
            *self.guard = Some(made);
        }
        self.in_flight = true;
        self.guard
            .as_mut()
            .ok_or_else(|| sqlx::Error::Protocol("no reader connection".into()))
    }

    /// Takes the read's outcome. Whether the read should be made again: the connection
    /// had been idle and failed as a closed connection does (it is dropped; the next
    /// [`ReadSlot::connection`] makes a new one).
    pub(super) fn finished<T>(&mut self, read: &Result<T, sqlx::Error>) -> bool {
        self.in_flight = false;
        let broken = match read {
            Err(
                sqlx::Error::Io(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // The server says why it closes the connection before it does: class 57,
            // operator intervention (57P01, terminated by an administrator or a
            // shutdown), and class 08, connection exceptions.
            Err(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
            _ => false,
        };
        if broken {
            *self.guard = None;
        }
        broken && std::mem::take(&mut self.reused)
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        // Cancelled during its read: what the server still sends for it would be read
        // as the answer to the next statement.
        if self.in_flight {
            *self.guard = None;
        }
    }
}
