//! The outbox's senders: e-mails, and webhook deliveries. The Send methods queue their
//! messages in the store (in the transaction that stores the token a message carries),
//! as do the changes that webhooks announce, and answer at once; a sender of each
//! channel in every replica delivers them. Each message is claimed by one sender at a time, for
//! a lease longer than any delivery can take, so several replicas never send it twice;
//! one that fails is tried again after a delay that doubles each time, and after
//! `max_attempts` attempts it is given up, and its token withdrawn. Queued messages
//! survive restarts: they are in the database.

use crate::metrics::MailMetrics;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::core::clock::Clock;
use crate::core::mail::{Mailer, Outgoing};
use crate::core::webhooks::WebhookSender;
use crate::error::chain;
use crate::store::{Channel, ClaimedMail, MailOutcome, MailStore, StoreError};

/// What carries an outbox's messages.
pub enum Transport {
    Mail(Mailer),
    Webhook(WebhookSender),
}

impl Transport {
    pub fn channel(&self) -> Channel {
        match self {
            Self::Mail(_) => Channel::Mail,
            Self::Webhook(_) => Channel::Webhook,
        }
    }
}

/// How long a sender holds a message it claimed: far longer than a delivery may take
/// (the SMTP timeout), so that no other sender takes it meanwhile.
const LEASE: i64 = 60;
/// Messages claimed, and sent concurrently, at a time.
const BATCH: u32 = 8;
/// How often a sender looks for messages that are due (retries, and those queued by
/// other replicas), besides being woken by its own replica's Send requests.
const POLL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_RETRY_DELAY: i64 = 3_600;

/// The sender's settings.
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// Attempts at a message before it is given up.
    pub max_attempts: u32,
    /// Seconds before the first retry; each further retry waits twice as long, up to
    /// an hour.
    pub retry_delay: i64,
}

/// What the sender has done since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    pub sent: u64,
    /// Failed attempts that will be retried.
    pub failed: u64,
    /// Messages given up.
    pub dead: u64,
}

pub struct Outbox {
    store: Arc<dyn MailStore>,
    transport: Transport,
    clock: Arc<dyn Clock>,
    config: OutboxConfig,
    wake: Notify,
    stats: watch::Sender<OutboxStats>,
    stopping: watch::Sender<bool>,
    metrics: MailMetrics,
}

/// How often the sender counts the queued messages for the metrics.
const COUNT_QUEUED: Duration = Duration::from_secs(5);

impl Outbox {
    pub fn new(
        store: Arc<dyn MailStore>,
        transport: Transport,
        clock: Arc<dyn Clock>,
        config: OutboxConfig,
    ) -> Self {
        Self {
            store,
            transport,
            clock,
            config,
            wake: Notify::new(),
            stats: watch::Sender::new(OutboxStats::default()),
            stopping: watch::Sender::new(false),
            metrics: MailMetrics::default(),
        }
    }

    /// Reports what it sends, and the queue's length, to `metrics`.
    pub fn with_metrics(mut self, metrics: MailMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Whether messages really leave (an SMTP server is configured; webhooks always).
    pub fn sends(&self) -> bool {
        match &self.transport {
            Transport::Mail(mailer) => mailer.sends(),
            Transport::Webhook(_) => true,
        }
    }

    /// Asks the sender to look for due messages now (one was just queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// What the sender has done, as it changes.
    pub fn stats(&self) -> watch::Receiver<OutboxStats> {
        self.stats.subscribe()
    }

    /// Delivers due messages until [`Outbox::stop`]: then it finishes the messages it
    /// is sending and returns.
    pub async fn run(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        let mut counted: Option<tokio::time::Instant> = None;
        while !*stopping.borrow_and_update() {
            if let Err(err) = self.deliver_due().await {
                tracing::warn!(error = %chain(&err), "the mail sender could not reach the database");
            }
            if counted.is_none_or(|at| at.elapsed() >= COUNT_QUEUED) {
                if let Ok(queued) = self.store.queued_mail(self.transport.channel()).await {
                    self.metrics
                        .queued
                        .set(i64::try_from(queued).unwrap_or(i64::MAX));
                }
                counted = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = stopping.changed() => {}
            }
        }
    }

    /// Asks [`Outbox::run`] to stop once the messages it is sending are done, so that
    /// none is left sent but not recorded as sent.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Claims and sends the messages due now, a batch at a time, until none is left
    /// (or the sender is stopping).
    pub async fn deliver_due(self: &Arc<Self>) -> Result<(), StoreError> {
        while !*self.stopping.borrow() {
            let now = self.clock.now();
            let claimed = self
                .store
                .claim_mail(
                    now,
                    now.saturating_add(LEASE),
                    BATCH,
                    self.transport.channel(),
                )
                .await?;
            if claimed.is_empty() {
                return Ok(());
            }
            let mut sending = JoinSet::new();
            for mail in claimed {
                let outbox = self.clone();
                sending.spawn(async move { outbox.deliver(mail).await });
            }
            while let Some(done) = sending.join_next().await {
                match done {
                    Ok(result) => result?,
                    Err(join) => tracing::error!(error = %join, "a mail delivery task failed"),
                }
            }
        }
        Ok(())
    }

    /// One attempt at a claimed message, and its outcome recorded.
    async fn deliver(&self, mut mail: ClaimedMail) -> Result<(), StoreError> {
        let body = std::mem::take(&mut mail.body);
        let sent: Result<(), Box<dyn std::error::Error + Send + Sync>> = match &self.transport {
            Transport::Mail(mailer) => mailer
                .send(Outgoing {
                    to: &mail.recipient,
                    from_name: mail.from_name.as_deref(),
                    subject: &mail.subject,
                    body,
                })
                .await
                .map_err(Into::into),
            Transport::Webhook(sender) => sender
                .send(
                    &mail.recipient,
                    &sender.message_id(mail.id),
                    self.clock.now(),
                    body,
                )
                .await
                .map_err(Into::into),
        };
        let channel = self.transport.channel().as_str();
        let attempts = u32::try_from(mail.attempts).unwrap_or(u32::MAX);
        let outcome = match &sent {
            Ok(()) => MailOutcome::Sent,
            Err(_) if attempts >= self.config.max_attempts => MailOutcome::GiveUp,
            Err(_) => MailOutcome::Retry {
                next_attempt: self
                    .clock
                    .now()
                    .saturating_add(retry_delay(self.config.retry_delay, attempts)),
            },
        };
        self.store.mail_attempted(&mail, outcome).await?;
        let (retried, given_up) = match self.transport {
            Transport::Mail(_) => (
                "an e-mail could not be sent; it will be tried again",
                "an e-mail could not be sent and is given up; its link or code was withdrawn",
            ),
            Transport::Webhook(_) => (
                "a webhook delivery failed; it will be tried again",
                "a webhook delivery failed and is given up",
            ),
        };
        match (&sent, outcome) {
            (Ok(()), _) => {
                if self.sends() {
                    tracing::info!(event = "mail_sent", channel, kind = %mail.kind, user_id = %mail.user_id, attempts);
                    self.metrics.sent.inc();
                }
                self.stats.send_modify(|s| s.sent += 1);
            }
            (Err(err), MailOutcome::GiveUp) => {
                tracing::error!(
                    event = "mail_given_up",
                    channel,
                    kind = %mail.kind,
                    user_id = %mail.user_id,
                    attempts,
                    error = %chain(err.as_ref()),
                    "{given_up}"
                );
                self.metrics.dead.inc();
                self.stats.send_modify(|s| s.dead += 1);
            }
            (Err(err), _) => {
                tracing::warn!(
                    event = "mail_failed",
                    channel,
                    kind = %mail.kind,
                    user_id = %mail.user_id,
                    attempts,
                    error = %chain(err.as_ref()),
                    "{retried}"
                );
                self.metrics.failed.inc();
                self.stats.send_modify(|s| s.failed += 1);
            }
        }
        Ok(())
    }
}

/// Seconds to wait after the `attempts`-th failed attempt: `base`, doubled for each
/// earlier failure, at most an hour.
fn retry_delay(base: i64, attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(30);
    base.max(1)
        .saturating_mul(1_i64 << doublings)
        .min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_an_hour() {
        assert_eq!(retry_delay(10, 1), 10);
        assert_eq!(retry_delay(10, 2), 20);
        assert_eq!(retry_delay(10, 7), 640);
        assert_eq!(retry_delay(10, 9), 2560);
        assert_eq!(retry_delay(10, 10), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(10, u32::MAX), MAX_RETRY_DELAY);
    }
}
