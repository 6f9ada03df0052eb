//! Second factors: TOTP secrets and recovery codes.

use super::*;

#[async_trait]
impl FactorStore for SqlStore {
    async fn totp(&self, user_id: &str) -> Result<Option<TotpRecord>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64, Option<i64>, i64)>(
                "SELECT secret, created, confirmed, last_step FROM totp WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })
        .map(|row| {
            row.map(|(secret, created, confirmed, last_step)| TotpRecord {
                secret,
                created,
                confirmed,
                last_step,
            })
        })
        .map_err(classify)
    }

    async fn start_totp(&self, user_id: &str, secret: &str, now: i64) -> Result<bool, StoreError> {
        // From the user's row, so nothing is written for a user deleted meanwhile; a
        // confirmed secret is left alone. (The WHERE clause also tells SQLite's parser
        // that ON CONFLICT is the insert's.)
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query(
                "INSERT INTO totp (user_id, secret, created, confirmed, last_step) \
                 SELECT id, $2, $3, NULL, 0 FROM users WHERE id = $1 \
                 ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, \
                 created = excluded.created WHERE totp.confirmed IS NULL",
            )
            .bind(user_id)
            .bind(secret)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map(|done| done.rows_affected() == 1)
        }
        .await)
        .map_err(classify)
    }

    async fn confirm_totp(
        &self,
        user_id: &str,
        secret: &str,
        step: i64,
        audit: &Audit,
        recovery_codes: &[TokenDigest],
        keep: Option<&TokenDigest>,
    ) -> Result<bool, StoreError> {
        let now = audit.at;
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let confirmed = sqlx::query(
                "UPDATE totp SET confirmed = $3, last_step = $4 \
                 WHERE user_id = $1 AND secret = $2 AND confirmed IS NULL",
            )
            .bind(user_id)
            .bind(secret)
            .bind(now)
            .bind(step)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !confirmed {
                return Ok(false);
            }
            sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            if !recovery_codes.is_empty() {
                let mut insert = QueryBuilder::new("INSERT INTO recovery_codes (user_id, code_hash) ");
                insert.push_values(recovery_codes, |mut row, code| {
                    row.push_bind(user_id).push_bind(code.as_str());
                });
                insert.build().execute(&mut *tx).await?;
            }
            let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
                .bind(user_id)
                .bind(keep.map_or("", TokenDigest::as_str))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            audit!(self, tx, audit, EventKind::SecondFactorChanged, Some(user_id));
            commit!(tx, conn);
            self.ended(EndCause::second_factor, ended);
            Ok::<_, sqlx::Error>(true)
        }
        .await)
        .map_err(classify)
    }

    async fn remove_second_factors(
        &self,
        user_id: &str,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let removed = sqlx::query("DELETE FROM totp WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let codes = sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if removed + codes > 0 {
                audit!(self, tx, audit, EventKind::SecondFactorChanged, Some(user_id));
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(removed + codes > 0)
        }
        .await)
        .map_err(classify)
    }

    async fn use_factor(&self, user_id: &str, factor: FactorUse<'_>) -> Result<bool, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            Ok::<_, sqlx::Error>(use_factor!(conn, user_id, factor))
        }
        .await)
        .map_err(classify)
    }

    async fn recovery_codes_left(&self, user_id: &str) -> Result<i64, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(pool)
                .await
        })
        .map(|(count,)| count)
        .map_err(classify)
    }

    async fn totp_secrets_by_prefix(
        &self,
        prefix: &str,
        len: u32,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        // substr's positions are PostgreSQL's integer (four bytes).
        let start = i32::try_from(prefix.chars().count())
            .unwrap_or(i32::MAX - 1)
            .saturating_add(1);
        let len = i32::try_from(len).unwrap_or(i32::MAX);
        let pattern = format!("{prefix}%");
        on_pool!(self, pool => {
            sqlx::query_as::<_, (Option<String>, i64)>(
                "SELECT CASE WHEN secret LIKE $1 THEN substr(secret, $2, $3) END, COUNT(*) \
                 FROM totp GROUP BY 1",
            )
            .bind(pattern.as_str())
            .bind(start)
            .bind(len)
            .fetch_all(pool)
            .await
        })
        .map_err(classify)
    }

    async fn replace_totp_secret(
        &self,
        user_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query("UPDATE totp SET secret = $3 WHERE user_id = $1 AND secret = $2")
                .bind(user_id)
                .bind(old)
                .bind(new)
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected() == 1)
        }
        .await)
        .map_err(classify)
    }
}
