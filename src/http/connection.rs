//! Client connections: how many are served at once, how many one address may hold, and
//! how long one may sit without sending a request.
//!
//! * At most `max` connections are served at once, and at most `per_address` of them
//!   from one client address (an IPv6 client by its /64), so that one client cannot
//!   hold every slot. Trusted proxies, which carry many clients, are exempt from the
//!   per-address share.
//! * A new connection must start its first request within `first_request`, and a
//!   kept-alive one its next request within `keep_alive`; once a request has started,
//!   its headers must be complete within `headers`. Otherwise the connection is closed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::core::limits::address_group;

/// How many connections may be served.
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_address: usize,
    held: Mutex<HashMap<String, usize>>,
    exempt: Vec<IpNet>,
}

/// A connection's place among those served; given back when dropped.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    address: Option<(Arc<ConnectionLimits>, String)>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every slot is taken.
    Server,
    /// The client's address holds its share.
    Address,
}

impl ConnectionLimits {
    /// `exempt`: addresses (trusted proxies) that the per-address share does not bound.
    pub fn new(max: usize, per_address: usize, exempt: Vec<IpNet>) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(max.max(1))),
            per_address: per_address.max(1),
            held: Mutex::new(HashMap::new()),
            exempt,
        })
    }

    /// A slot for a connection from `peer`, if the server and the address have one.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Full> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::Server)?;
        if self.exempt.iter().any(|net| net.contains(&peer)) {
            return Ok(Slot {
                _total: total,
                address: None,
            });
        }
        let group = address_group(peer);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(group.clone()).or_insert(0);
        if *count >= self.per_address {
            return Err(Full::Address);
        }
        *count += 1;
        Ok(Slot {
            _total: total,
            address: Some((self.clone(), group)),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((limits, group)) = self.address.take() else {
            return;
        };
        let mut held = limits.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&group) {
            *count -= 1;
            if *count == 0 {
                held.remove(&group);
            }
        }
    }
}

/// How long a connection may wait at each stage.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accepting the connection to the first byte of its first request.
    pub first_request: Duration,
    /// From the end of an answer to the first byte of the next request.
    pub keep_alive: Duration,
    /// From the first byte of a request to the end of its headers.
    pub headers: Duration,
}

/// Whether the connection's service is answering a request, shared between the
/// service (which marks it) and the connection's I/O (which reads it).
#[derive(Debug, Default)]
pub struct Activity {
    serving: AtomicBool,
    /// Requests answered so far.
    answered: AtomicU64,
    /// The connection's task, as it last waited on its I/O: woken when
    /// the answer is ready, so that the keep-alive wait starts its timer. (hyper does
    /// not read again after an answer until the socket wakes it.)
    reader: AtomicWaker,
}

impl Activity {
    /// Runs `answer` as the connection's request: no idle timeout applies meanwhile.
    pub async fn serve<T>(&self, answer: impl Future<Output = T>) -> T {
        self.serving.store(true, Ordering::Release);
        let out = answer.await;
        self.answered.fetch_add(1, Ordering::AcqRel);
        self.serving.store(false, Ordering::Release);
        self.reader.wake();
        out
    }
}

/// Where a connection stands, as its I/O sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No request has begun since the last answer (or since the connection opened).
    Waiting,
    /// Bytes of a request have come, its headers are not complete.
    Reading,
    /// The service is answering.
    Serving,
}

/// A client connection's stream, closed (with `TimedOut`) when it waits too long.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    stage: Stage,
    answered: u64,
    /// When the current stage ends.
    deadline: Instant,
    /// When `timer` fires: never after `deadline` while the I/O waits, and not moved
    /// each time `deadline` moves later (every request does), which would take the
    /// runtime's timer lock twice per request. A timer that fires before the deadline
    /// is set again to it.
    timer: Pin<Box<Sleep>>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>, timeouts: Timeouts) -> Self {
        let deadline = Instant::now() + timeouts.first_request;
        Self {
            inner,
            activity,
            timeouts,
            stage: Stage::Waiting,
            answered: 0,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Catches up with the service: a request being answered has no deadline here, and
    /// one answered since the last look starts the keep-alive wait.
    fn observe(&mut self) {
        if self.activity.serving.load(Ordering::Acquire) {
            self.stage = Stage::Serving;
            return;
        }
        let answered = self.activity.answered.load(Ordering::Acquire);
        if answered != self.answered || self.stage == Stage::Serving {
            self.answered = answered;
            self.set_deadline(Stage::Waiting, self.timeouts.keep_alive);
        }
    }

    fn set_deadline(&mut self, stage: Stage, after: Duration) {
        self.stage = stage;
        self.deadline = Instant::now() + after;
    }

    /// Bytes of a request arrived.
    fn received(&mut self) {
        if self.stage == Stage::Waiting {
            self.set_deadline(Stage::Reading, self.timeouts.headers);
        }
    }

    /// The I/O has to wait: an error once the current stage's deadline has passed.
    ///
    /// The task is woken when an answer is ready whatever the stage: an answer can be
    /// made within the very poll that read its request, before this I/O ever saw the
    /// service serving, and hyper does not read again until something wakes it.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.activity.reader.register(cx.waker());
        if self.stage == Stage::Serving {
            return None;
        }
        if self.timer.deadline() > self.deadline {
            self.timer.as_mut().reset(self.deadline);
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if self.timer.deadline() >= self.deadline {
                break;
            }
            // Set for an earlier stage's deadline, since moved later.
            self.timer.as_mut().reset(self.deadline);
        }
        let what = match self.stage {
            Stage::Reading => "the request headers did not arrive in time",
            _ => "no request came in time",
        };
        Some(io::Error::new(io::ErrorKind::TimedOut, what))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.observe();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.received();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.expired(cx) {
                Some(err) => Poll::Ready(Err(err)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl<S> Watched<S> {
    /// A write that has to wait: a client that does not read its answer holds the
    /// connection as much as one that sends nothing, so the same deadlines apply.
    fn write_polled<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_pending() {
            self.observe();
            if let Some(err) = self.expired(cx) {
                return Poll::Ready(Err(err));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_polled(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_polled(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that records that it was woken.
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// An answer made in the same poll that read its request (before the I/O saw the
    /// service serving) still wakes the waiting read, which then waits for the next
    /// request no longer than the keep-alive time, not the headers' time.
    #[tokio::test]
    async fn an_answer_made_at_once_starts_the_keep_alive_wait() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::default());
        let mut watched = Watched::new(
            server,
            activity.clone(),
            Timeouts {
                first_request: Duration::from_secs(3600),
                keep_alive: Duration::from_millis(50),
                headers: Duration::from_secs(3600),
            },
        );
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut bytes = [0u8; 64];
        let mut buf = ReadBuf::new(&mut bytes);
        let read = Pin::new(&mut watched).poll_read(&mut cx, &mut buf);
        assert!(matches!(read, Poll::Ready(Ok(()))) && !buf.filled().is_empty());
        let mut buf = ReadBuf::new(&mut bytes);
        assert!(Pin::new(&mut watched)
            .poll_read(&mut cx, &mut buf)
            .is_pending());
        activity.serve(async {}).await;
        assert!(
            flag.0.load(Ordering::Acquire),
            "the waiting read was not woken"
        );
        let closed = tokio::time::timeout(
            Duration::from_secs(60),
            std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut bytes);
                Pin::new(&mut watched).poll_read(cx, &mut buf)
            }),
        )
        .await
        .expect("the keep-alive wait did not end the connection");
        assert_eq!(closed.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let proxy: IpNet = "10.0.0.1/32".parse().unwrap();
        let limits = ConnectionLimits::new(5, 2, vec![proxy]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = limits.admit(ip("203.0.113.1")).unwrap();
        let _a2 = limits.admit(ip("203.0.113.1")).unwrap();
        assert_eq!(limits.admit(ip("203.0.113.1")).err(), Some(Full::Address));
        // The same /64 is the same client.
        let _b1 = limits.admit(ip("2001:db8::1")).unwrap();
        let _b2 = limits.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(limits.admit(ip("2001:db8::3")).err(), Some(Full::Address));
        // A trusted proxy is not bound by the share, only by the total.
        let _p = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(limits.admit(ip("10.0.0.1")).err(), Some(Full::Server));
        drop(a1);
        let _a3 = limits.admit(ip("203.0.113.1")).unwrap();
    }
}
