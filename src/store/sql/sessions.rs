//! Sessions, keyed by the digests of their tokens.

use super::*;

#[async_trait]
impl SessionStore for SqlStore {
    async fn insert_session(
        &self,
        session: NewSession<'_>,
        expected_hash: &str,
    ) -> Result<bool, StoreError> {
        macro_rules! insert_if_unchanged {
            () => {
                "INSERT INTO sessions (token_hash, user_id, created, expires, client_ip, user_agent) \
                 SELECT $1, id, $3, $4, $6, $7 FROM users WHERE id = $2 AND password_hash = $5"
            };
        }
        // On PostgreSQL, READ COMMITTED would let this read the old hash while a password
        // change is still uncommitted, and insert after that change deleted the user's
        // sessions. FOR SHARE waits for such a change and rechecks the hash after it.
        // SQLite runs one writer at a time, so the plain statement is already safe there.
        let sql = match self.backend {
            Backend::Sqlite { .. } => insert_if_unchanged!(),
            Backend::Postgres(_) => concat!(insert_if_unchanged!(), " FOR SHARE"),
        };
        on_writer!(self, pool => {
            sqlx::query(sql)
                .bind(session.digest.as_str())
                .bind(session.user_id)
                .bind(session.created)
                .bind(session.expires)
                .bind(expected_hash)
                .bind(session.client.ip)
                .bind(session.client.user_agent)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(classify)
    }

    async fn session(
        &self,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        const SQL: &str = "SELECT s.user_id, u.username, u.email, s.created, s.expires \
                           FROM sessions s JOIN users u ON u.id = s.user_id \
                           WHERE s.token_hash = $1 AND s.expires > $2";
        let record = |(user_id, username, email, created, expires): SessionRow| SessionRecord {
            user_id,
            username,
            email,
            created,
            expires,
        };
        inline_first!(
            self,
            query_row(SQL, ["$1" => digest.as_str(), "$2" => now]),
            |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
            |row: Option<SessionRow>| Ok(row.map(record))
        );
        on_pool!(self, pool => {
            sqlx::query_as::<_, SessionRow>(SQL)
                .bind(digest.as_str())
                .bind(now)
                .fetch_optional(pool)
                .await
        })
        .map(|row| row.map(record))
        .map_err(classify)
    }

    async fn delete_session(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        on_writer!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                .bind(digest.as_str())
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(classify)
    }

    async fn user_sessions(
        &self,
        user_id: &str,
        now: i64,
        limit: u32,
    ) -> Result<Vec<SessionDetails>, StoreError> {
        type Row = (
            String,
            i64,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        on_pool!(self, pool => {
            sqlx::query_as::<_, Row>(
                "SELECT token_hash, created, expires, last_seen, client_ip, user_agent \
                 FROM sessions WHERE user_id = $1 AND expires > $2 \
                 ORDER BY created DESC, token_hash LIMIT $3",
            )
            .bind(user_id)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map(|rows| {
            rows.into_iter()
                .map(
                    |(digest, created, expires, last_seen, client_ip, user_agent)| SessionDetails {
                        handle: SessionHandle::from_stored(&digest),
                        created,
                        expires,
                        last_seen,
                        client_ip,
                        user_agent,
                    },
                )
                .collect()
        })
        .map_err(classify)
    }

    async fn revoke_session(
        &self,
        user_id: &str,
        handle: &SessionHandle,
    ) -> Result<bool, StoreError> {
        // The handle is a prefix of the digest: a range over the primary key finds it.
        let upper = format!("{}g", handle.as_str());
        on_writer!(self, pool => {
            sqlx::query(
                "DELETE FROM sessions WHERE user_id = $1 AND token_hash >= $2 AND token_hash < $3",
            )
            .bind(user_id)
            .bind(handle.as_str())
            .bind(&upper)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() > 0)
        })
        .map_err(classify)
    }

    async fn touch_session(
        &self,
        digest: &TokenDigest,
        now: i64,
        interval: i64,
    ) -> Result<(), StoreError> {
        on_writer!(self, pool => {
            sqlx::query(
                "UPDATE sessions SET last_seen = $2 WHERE token_hash = $1 \
                 AND (last_seen IS NULL OR last_seen <= $3)",
            )
            .bind(digest.as_str())
            .bind(now)
            .bind(now.saturating_sub(interval))
            .execute(pool)
            .await
            .map(drop)
        })
        .map_err(classify)
    }

    async fn delete_sessions(&self, user_id: &str) -> Result<u64, StoreError> {
        on_writer!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)
    }

    async fn delete_expired_sessions(&self, now: i64, batch: u32) -> Result<u64, StoreError> {
        self.delete_expired(
            "DELETE FROM sessions WHERE token_hash IN \
             (SELECT token_hash FROM sessions WHERE expires <= $1 LIMIT $2)",
            now,
            batch,
        )
        .await
    }
}
