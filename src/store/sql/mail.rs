//! The e-mail outbox: queueing a message with its token, claiming, recording outcomes.

use super::*;

#[async_trait]
impl MailStore for SqlStore {
    async fn queue_mail(
        &self,
        limit: EventLimit<'_>,
        mail: Option<NewMail<'_>>,
    ) -> Result<Queued, StoreError> {
        // The user's previous token of this purpose goes first (its queued message with
        // it); see `store_token!`. The message is queued only beside its token.
        const MESSAGE: &str = "INSERT INTO outbox (token_hash, user_id, kind, recipient, \
                               from_name, subject, body, state, attempts, next_attempt, \
                               lease_until, created) \
                               SELECT $1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, 0, $8 \
                               WHERE EXISTS (SELECT 1 FROM tokens \
                               WHERE token_hash = $1 AND user_id = $2)";
        // An address without an account runs the same statements as one with an
        // account, on an id no account has, so that they write nothing: the same round
        // trips and the same kind of work, so that the time taken does not tell the
        // two apart (a known address made three more round trips to PostgreSQL).
        let no_token = TokenDigest::from_stored(String::new());
        let (token, recipient, from_name, subject, body) = match &mail {
            Some(mail) => (
                mail.token,
                mail.recipient,
                mail.from_name,
                mail.subject,
                mail.body,
            ),
            None => (
                NewToken {
                    digest: &no_token,
                    user_id: "",
                    purpose: Purpose::ResetPassword,
                    created: limit.now,
                    expires: limit.now,
                },
                "",
                None,
                "",
                "",
            ),
        };
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            // fetch_all for the reason given in update_user.
            let counted = sqlx::query_as::<_, CounterRow>(COUNT_EVENT)
                .bind(limit.key)
                .bind(limit.now)
                .bind(limit.window)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .next()
                .map(counter)
                .ok_or(sqlx::Error::RowNotFound)?;
            let outcome = if counted.within(limit.max) {
                let _stored = store_token!(tx, &token);
                let queued = sqlx::query(MESSAGE)
                    .bind(token.digest.as_str())
                    .bind(token.user_id)
                    .bind(token.purpose.as_str())
                    .bind(recipient)
                    .bind(from_name)
                    .bind(subject)
                    .bind(body)
                    .bind(limit.now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if queued == 1 && mail.is_some() {
                    Queued::Queued
                } else {
                    Queued::Counted
                }
            } else {
                Queued::Limited(counted)
            };
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(outcome)
        }
        .await)
        .map_err(classify)
    }

    async fn queued_mail(&self, channel: Channel) -> Result<u64, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as::<_, (i64,)>(
                "SELECT COUNT(*) FROM outbox WHERE channel = $1 AND state = 'queued'",
            )
            .bind(channel.as_str())
            .fetch_one(pool)
            .await
        })
        .map(|(n,)| u64::try_from(n).unwrap_or(0))
        .map_err(classify)
    }

    async fn claim_mail(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        channel: Channel,
    ) -> Result<Vec<ClaimedMail>, StoreError> {
        macro_rules! claim {
            ($lock:literal) => {
                concat!(
                    "UPDATE outbox SET attempts = attempts + 1, lease_until = $2 \
                     WHERE lease_until <= $1 AND id IN (SELECT id FROM outbox \
                     WHERE channel = $4 AND state = 'queued' AND next_attempt <= $1 \
                     AND lease_until <= $1 \
                     AND (token_hash IS NULL OR EXISTS (SELECT 1 FROM tokens t \
                     WHERE t.token_hash = outbox.token_hash AND t.expires > $1)) \
                     ORDER BY next_attempt, id LIMIT $3",
                    $lock,
                    ") RETURNING id, user_id, kind, recipient, from_name, subject, body, \
                     attempts, lease_until"
                )
            };
        }
        // SQLite runs one writer at a time, so its claims never overlap; PostgreSQL's
        // concurrent claims skip the rows another has locked.
        let sql = match self.backend {
            Backend::Sqlite { .. } => claim!(""),
            Backend::Postgres { .. } => claim!(" FOR UPDATE SKIP LOCKED"),
        };
        type Row = (
            i64,
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            i64,
            i64,
        );
        // Unsynced: an idle outbox claims every second, and a claim is answered to no
        // one (a lease lost in a crash only means the message is claimed again).
        on_writer!(self, pool => unsynced async {
            let mut conn = acquire!(self, pool);
            sqlx::query_as::<_, Row>(sql)
                .bind(now)
                .bind(lease_until)
                .bind(i64::from(limit))
                .bind(channel.as_str())
                .fetch_all(&mut *conn)
                .await
        }
        .await)
        .map(|rows| {
            rows.into_iter()
                .map(
                    |(
                        id,
                        user_id,
                        kind,
                        recipient,
                        from_name,
                        subject,
                        body,
                        attempts,
                        lease_until,
                    )| {
                        ClaimedMail {
                            id,
                            user_id,
                            kind,
                            recipient,
                            from_name,
                            subject,
                            body,
                            attempts,
                            lease_until,
                        }
                    },
                )
                .collect()
        })
        .map_err(classify)
    }

    async fn mail_attempted(
        &self,
        mail: &ClaimedMail,
        outcome: MailOutcome,
    ) -> Result<(), StoreError> {
        // Only under the claim it was sent under: a message that went with its token
        // meanwhile, or whose lease ran out and another sender took, is left alone.
        macro_rules! claimed {
            ($set:literal) => {
                concat!(
                    "UPDATE outbox SET ",
                    $set,
                    ", lease_until = 0 WHERE id = $1 AND state = 'queued' AND lease_until = $2"
                )
            };
        }
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            match outcome {
                MailOutcome::Sent => {
                    sqlx::query(claimed!("state = 'sent', body = ''"))
                        .bind(mail.id)
                        .bind(mail.lease_until)
                        .execute(&mut *conn)
                        .await?;
                }
                MailOutcome::Retry { next_attempt } => {
                    sqlx::query(claimed!("next_attempt = $3"))
                        .bind(mail.id)
                        .bind(mail.lease_until)
                        .bind(next_attempt)
                        .execute(&mut *conn)
                        .await?;
                }
                MailOutcome::GiveUp => {
                    // The message is kept (without its body or token) as a record that
                    // it was given up; the token no one will receive is withdrawn.
                    let mut tx = conn.begin_write().await?;
                    let token: Option<(Option<String>,)> = sqlx::query_as(
                        "SELECT token_hash FROM outbox \
                         WHERE id = $1 AND state = 'queued' AND lease_until = $2",
                    )
                    .bind(mail.id)
                    .bind(mail.lease_until)
                    .fetch_optional(&mut *tx)
                    .await?;
                    sqlx::query(claimed!("state = 'dead', body = '', token_hash = NULL"))
                        .bind(mail.id)
                        .bind(mail.lease_until)
                        .execute(&mut *tx)
                        .await?;
                    if let Some((Some(token),)) = token {
                        sqlx::query("DELETE FROM tokens WHERE token_hash = $1")
                            .bind(token)
                            .execute(&mut *tx)
                            .await?;
                    }
                    commit!(tx, conn);
                }
            }
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn delete_old_mail(&self, before: i64, batch: u32) -> Result<u64, StoreError> {
        self.delete_expired(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
             WHERE state <> 'queued' AND created <= $1 LIMIT $2)",
            before,
            batch,
        )
        .await
    }
}
