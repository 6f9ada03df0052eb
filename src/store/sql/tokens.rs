//! One-time tokens: checking reset codes, using tokens (and passkey sign-in ceremonies,
//! which are used up the same way), and sweeping expired ones.

use super::*;

#[async_trait]
impl TokenStore for SqlStore {
    async fn check_reset_code(
        &self,
        user_id: &str,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<CodeCheck, StoreError> {
        // One statement finds the account's live code, counts a wrong try against it
        // and tells whether the code matched, so concurrent wrong codes each count.
        const SQL: &str = "UPDATE tokens SET attempts = attempts + \
                           CASE WHEN token_hash = $2 THEN 0 ELSE 1 END \
                           WHERE user_id = $1 AND purpose = $3 AND expires > $4 \
                           AND attempts < $5 RETURNING token_hash";
        let found = on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            // fetch_all for the reason given in update_user.
            sqlx::query_as::<_, (String,)>(SQL)
                .bind(user_id)
                .bind(digest.as_str())
                .bind(Purpose::ResetPassword.as_str())
                .bind(now)
                .bind(RESET_CODE_MAX_WRONG)
                .fetch_all(&mut *conn)
                .await
        }
        .await)
        .map_err(classify)?;
        Ok(match found.first() {
            Some((hash,)) if hash == digest.as_str() => CodeCheck::Valid,
            _ => CodeCheck::Wrong,
        })
    }

    async fn redeem_token(
        &self,
        digest: &TokenDigest,
        purpose: Purpose,
        audit: &Audit,
        effect: Redemption<'_>,
    ) -> Result<Redeemed, StoreError> {
        const FIND: &str = "SELECT user_id, expires, attempts FROM tokens \
                            WHERE token_hash = $1 AND purpose = $2";
        const CONSUME: &str = "DELETE FROM tokens WHERE token_hash = $1 AND purpose = $2";
        let row = OneTimeRow {
            find: FIND,
            consume: CONSUME,
            key: purpose.as_str(),
        };
        self.redeem(digest, row, audit, effect).await
    }
    async fn insert_token(
        &self,
        token: NewToken<'_>,
        state: Option<&str>,
    ) -> Result<(), StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            // Not written only for a user deleted meanwhile, whose token is never found.
            let _stored = store_token!(tx, &token);
            if let Some(state) = state {
                sqlx::query("UPDATE tokens SET state = $2 WHERE token_hash = $1")
                    .bind(token.digest.as_str())
                    .bind(state)
                    .execute(&mut *tx)
                    .await?;
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn set_token_state(
        &self,
        digest: &TokenDigest,
        purpose: Purpose,
        state: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query(
                "UPDATE tokens SET state = $3 WHERE token_hash = $1 AND purpose = $2 AND expires > $4",
            )
            .bind(digest.as_str())
            .bind(purpose.as_str())
            .bind(state)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map(|done| done.rows_affected() == 1)
        }
        .await)
        .map_err(classify)
    }

    async fn live_token(
        &self,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<Option<LiveToken>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as::<_, (String, String, Option<String>, i64)>(
                "SELECT user_id, purpose, state, expires FROM tokens \
                 WHERE token_hash = $1 AND expires > $2",
            )
            .bind(digest.as_str())
            .bind(now)
            .fetch_optional(pool)
            .await
        })
        .map(|row| {
            row.map(|(user_id, purpose, state, expires)| LiveToken {
                user_id,
                purpose,
                state,
                expires,
            })
        })
        .map_err(classify)
    }

    async fn delete_expired_tokens(&self, now: i64, batch: u32) -> Result<u64, StoreError> {
        self.delete_expired(
            "DELETE FROM tokens WHERE token_hash IN \
             (SELECT token_hash FROM tokens WHERE expires <= $1 LIMIT $2)",
            now,
            batch,
        )
        .await
    }
}

/// Where a one-time secret is kept: the statements that find its row (its user, expiry
/// and wrong tries) and delete it, by its digest (`$1`) and `key` (`$2`).
pub(super) struct OneTimeRow<'a> {
    pub find: &'static str,
    pub consume: &'static str,
    pub key: &'a str,
}

impl SqlStore {
    /// Uses up the one-time secret `digest` kept in `row` (once: of concurrent callers,
    /// one gets `Done`) and, if it was live, applies `effect` in the same transaction.
    pub(super) async fn redeem(
        &self,
        digest: &TokenDigest,
        row: OneTimeRow<'_>,
        audit: &Audit,
        effect: Redemption<'_>,
    ) -> Result<Redeemed, StoreError> {
        let now = audit.at;
        // Deleting the row is what uses the secret: of two transactions deleting it, the
        // second deletes nothing (PostgreSQL makes it wait for the first and re-check;
        // SQLite runs one writer at a time) and reports it not found. A plain DELETE,
        // not DELETE ... RETURNING: on SQLite a failing RETURNING statement inside a
        // transaction (a full disk) left the connection unusable.
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let found: Option<(String, i64, i64)> = sqlx::query_as(row.find)
                .bind(digest.as_str())
                .bind(row.key)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((user_id, expires, attempts)) = found else {
                return Ok(Redeemed::NotFound);
            };
            // A reset code that too many wrong codes were tried against is void.
            if attempts >= RESET_CODE_MAX_WRONG {
                return Ok(Redeemed::NotFound);
            }
            let consumed = sqlx::query(row.consume)
                .bind(digest.as_str())
                .bind(row.key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if consumed != 1 {
                return Ok(Redeemed::NotFound);
            }
            if expires <= now {
                commit!(tx, conn);
                return Ok(Redeemed::Expired);
            }
            let mut ended = 0;
            let mut opened = None;
            match effect {
                Redemption::VerifyEmail => {
                    sqlx::query(
                        "UPDATE users SET verified = TRUE, verification_date = $2, updated = $2 \
                         WHERE id = $1",
                    )
                    .bind(&user_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    audit!(self, tx, audit, EventKind::EmailVerified, Some(user_id.as_str()));
                }
                Redemption::NewPassword { hash } => {
                    sqlx::query("UPDATE users SET password_hash = $2, updated = $3 WHERE id = $1")
                        .bind(&user_id)
                        .bind(hash)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                        .bind(&user_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    audit!(self, tx, audit, EventKind::PasswordReset, Some(user_id.as_str()));
                }
                Redemption::OpenSession {
                    digest,
                    expires,
                    client,
                    sign_in,
                    challenge,
                } => {
                    if has_totp!(tx, &user_id) {
                        // Not written only if the user went meanwhile: then the
                        // challenge is simply never found.
                        let _stored = store_token!(tx, &NewToken { user_id: &user_id, ..challenge });
                        commit!(tx, conn);
                        return Ok(Redeemed::SecondStepNeeded { user_id });
                    }
                    opened = Some(open_session!(tx, digest, &user_id, now, expires, client, sign_in));
                    audit!(self, tx, audit, EventKind::LoginSucceeded, Some(user_id.as_str()));
                }
                Redemption::AddPasskey { passkey } => {
                    let taken = sqlx::query_as::<_, (String,)>(
                        "SELECT user_id FROM passkeys WHERE credential_id = $1",
                    )
                    .bind(&passkey.credential_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                    if taken {
                        return Ok(Redeemed::FactorRefused);
                    }
                    sqlx::query(
                        "INSERT INTO passkeys (credential_id, user_id, name, passkey, counter, created) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&passkey.credential_id)
                    .bind(&user_id)
                    .bind(&passkey.name)
                    .bind(&passkey.passkey)
                    .bind(passkey.counter)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    audit!(self, tx, audit, EventKind::SecondFactorChanged, Some(user_id.as_str()));
                }
                Redemption::SecondStep {
                    digest,
                    expires,
                    client,
                    sign_in,
                    factor,
                } => {
                    if !use_factor!(tx, &user_id, factor) {
                        return Ok(Redeemed::FactorRefused);
                    }
                    opened = Some(open_session!(tx, digest, &user_id, now, expires, client, sign_in));
                    audit!(self, tx, audit, EventKind::LoginSucceeded, Some(user_id.as_str()));
                }
            }
            commit!(tx, conn);
            self.ended(EndCause::password_changed, ended);
            if let Some(method) = opened {
                self.opened(method);
            }
            Ok::<_, sqlx::Error>(Redeemed::Done { user_id })
        }
        .await)
        .map_err(classify)
    }
}
