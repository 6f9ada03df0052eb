//! Rate-limit counters: reserved attempts, lockouts and hourly counts.

use super::*;

#[async_trait]
impl CounterStore for SqlStore {
    async fn reserve_attempts(
        &self,
        limits: &[AttemptLimit<'_>],
        now: i64,
        window: i64,
    ) -> Result<Reservation, StoreError> {
        // Counts the attempt unless the key is locked out or its window is full. One
        // statement per key decides and counts, under the row's lock: concurrent
        // reservations (on any replica) queue on it, and each sees the count the one
        // before it left. The keys share one transaction, so a refusal by the second
        // takes back the first. No RETURNING inside the transaction: on SQLite a
        // RETURNING statement that fails there (a full disk) leaves the connection
        // inside a transaction that never ends.
        const RESERVE: &str = "INSERT INTO rate_limits \
             (key, count, window_start, blocked_until, strikes, updated) \
             VALUES ($1, 1, $2, 0, 0, $2) \
             ON CONFLICT (key) DO UPDATE SET \
             count = CASE WHEN rate_limits.window_start <= $2 - $3 THEN 1 \
                          ELSE rate_limits.count + 1 END, \
             window_start = CASE WHEN rate_limits.window_start <= $2 - $3 THEN $2 \
                                 ELSE rate_limits.window_start END, \
             updated = $2 \
             WHERE rate_limits.blocked_until <= $2 \
             AND (rate_limits.window_start <= $2 - $3 OR rate_limits.count < $4)";
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let mut window_starts = Vec::with_capacity(limits.len());
            for (index, limit) in limits.iter().enumerate() {
                let counted = sqlx::query(RESERVE)
                    .bind(limit.key)
                    .bind(now)
                    .bind(window)
                    .bind(i64::from(limit.max))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                let row: Option<CounterRow> = sqlx::query_as(SELECT_COUNTER)
                    .bind(limit.key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let counter = row.map(counter).unwrap_or(Counter {
                    count: 0,
                    window_start: now,
                    blocked_until: 0,
                    strikes: 0,
                });
                if !counted {
                    tx.rollback().await?;
                    return Ok(Reservation::Refused { limit: index, counter });
                }
                window_starts.push(counter.window_start);
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(Reservation::Granted { window_starts })
        }
        .await)
        .map_err(classify)
    }

    async fn counter(&self, key: &str) -> Result<Option<Counter>, StoreError> {
        // On the writer: on SQLite it has seen every commit of this process, so a
        // failure reported right after its reservation finds it counted.
        on_writer!(self, pool => unsynced async {
            let mut conn = acquire!(self, pool);
            sqlx::query_as::<_, CounterRow>(SELECT_COUNTER)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
        }
        .await)
        .map(|row| row.map(counter))
        .map_err(classify)
    }

    async fn lock(
        &self,
        key: &str,
        now: i64,
        until: i64,
        strikes: i64,
        event: (&Audit, Option<&str>),
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE rate_limits SET blocked_until = $3, strikes = strikes + 1, \
                           count = 0, window_start = $2, updated = $2 \
                           WHERE key = $1 AND blocked_until <= $2 AND strikes = $4";
        let (audit, user_id) = event;
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let locked = sqlx::query(SQL)
                .bind(key)
                .bind(now)
                .bind(until)
                .bind(strikes)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if locked {
                audit!(self, tx, audit, EventKind::Lockout, user_id);
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(locked)
        }
        .await)
        .map_err(classify)
    }

    async fn attempt_succeeded(
        &self,
        forget: Option<&str>,
        give_back: &[(&str, i64)],
    ) -> Result<(), StoreError> {
        const FORGET: &str = "DELETE FROM rate_limits WHERE key = $1";
        const GIVE_BACK: &str = "UPDATE rate_limits SET count = count - 1 \
                                 WHERE key = $1 AND window_start = $2 AND count > 0";
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            if let Some(key) = forget {
                sqlx::query(FORGET).bind(key).execute(&mut *tx).await?;
            }
            for (key, window_start) in give_back {
                sqlx::query(GIVE_BACK)
                    .bind(key)
                    .bind(window_start)
                    .execute(&mut *tx)
                    .await?;
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn forget_counters(
        &self,
        keys: &[&str],
        lifted: Option<(&Audit, &str)>,
    ) -> Result<(), StoreError> {
        if keys.is_empty() && lifted.is_none() {
            return Ok(());
        }
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            if !keys.is_empty() {
                let mut query = QueryBuilder::new("DELETE FROM rate_limits WHERE key IN (");
                push_list!(query, keys.iter().copied());
                query.push(")");
                query.build().execute(&mut *tx).await?;
            }
            if let Some((audit, user_id)) = lifted {
                audit!(self, tx, audit, EventKind::LockoutLifted, Some(user_id));
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn count_event(&self, key: &str, now: i64, window: i64) -> Result<Counter, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            // fetch_all for the reason given in update_user.
            sqlx::query_as::<_, CounterRow>(COUNT_EVENT)
                .bind(key)
                .bind(now)
                .bind(window)
                .fetch_all(&mut *conn)
                .await
        }
        .await)
        .map_err(classify)?
        .into_iter()
        .next()
        .map(counter)
        .ok_or(StoreError::Other(sqlx::Error::RowNotFound))
    }

    async fn delete_stale_counters(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM rate_limits WHERE updated < $1 AND blocked_until <= $2";
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query(SQL)
                .bind(before)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected())
        }
        .await)
        .map_err(classify)
    }
}
