//! Sessions, keyed by the digests of their tokens.

use super::*;

use rusqlite::OptionalExtension;

/// A Logout's read of whose session it ends, and its delete.
const SESSION_OWNER: &str = "SELECT user_id FROM sessions WHERE token_hash = $1";
const DELETE_SESSION: &str = "DELETE FROM sessions WHERE token_hash = $1";

#[async_trait]
impl SessionStore for SqlStore {
    async fn insert_session(
        &self,
        session: NewSession<'_>,
        expected_hash: &str,
        rehash: Option<&str>,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        // Not for a user with confirmed TOTP: such a sign-in takes a second step.
        macro_rules! insert_if_unchanged {
            () => {
                "INSERT INTO sessions \
                 (token_hash, user_id, created, expires, client_ip, user_agent, method, second_factor) \
                 SELECT $1, id, $3, $4, $6, $7, $8, $9 FROM users WHERE id = $2 AND password_hash = $5 \
                 AND NOT EXISTS (SELECT 1 FROM totp WHERE user_id = $2 AND confirmed IS NOT NULL)"
            };
        }
        // On PostgreSQL, READ COMMITTED would let this read the old hash while a password
        // change is still uncommitted, and insert after that change deleted the user's
        // sessions. FOR SHARE waits for such a change and rechecks the hash after it.
        // SQLite runs one writer at a time, so the plain statement is already safe there.
        let sql = match self.backend {
            Backend::Sqlite { .. } => insert_if_unchanged!(),
            Backend::Postgres { .. } => concat!(insert_if_unchanged!(), " FOR SHARE"),
        };
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            // The rehash first: on PostgreSQL its row lock holds off a password change
            // until this commits, and the session is then opened under the new hash.
            let mut current = expected_hash;
            if let Some(new_hash) = rehash {
                let replaced = sqlx::query(
                    "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                )
                .bind(session.user_id)
                .bind(expected_hash)
                .bind(new_hash)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !replaced {
                    tx.rollback().await?;
                    return Ok(false);
                }
                current = new_hash;
            }
            let opened = sqlx::query(sql)
                .bind(session.digest.as_str())
                .bind(session.user_id)
                .bind(session.created)
                .bind(session.expires)
                .bind(current)
                .bind(session.client.ip)
                .bind(session.client.user_agent)
                .bind(session.sign_in.method.as_str())
                .bind(session.sign_in.second_factor.map(SecondFactor::as_str))
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !opened {
                tx.rollback().await?;
                return Ok(false);
            }
            audit!(self, tx, audit, EventKind::LoginSucceeded, Some(session.user_id));
            commit!(tx, conn);
            self.opened(session.sign_in.method);
            Ok::<_, sqlx::Error>(true)
        }
        .await)
        .map_err(classify)
    }

    async fn session(
        &self,
        digest: &TokenDigest,
        live: Liveness,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.through_cache(
            |cache, at| cache.session(at, digest.as_str(), live).map(Some),
            self.read_session(digest, live),
            |cache, at, found| {
                if let Some(record) = found {
                    cache.keep_session(at, digest.as_str(), record);
                }
            },
        )
        .await
    }

    async fn delete_session(&self, digest: &TokenDigest, audit: &Audit) -> Result<(), StoreError> {
        // The hot write of a read-heavy app: on SQLite, made on the writer's direct
        // connection, in one transaction with the Logouts that arrive beside it
        // (`writer.rs`); made again below, through sqlx, if it could not be.
        let (key, event, webhooks) = (digest.as_str().to_owned(), audit.clone(), self.webhooks());
        let direct = self
            .write_direct(move |tx| {
                let owner: Option<String> = tx
                    .prepare_cached(SESSION_OWNER)?
                    .query_row(rusqlite::named_params! { "$1": key }, |row| row.get(0))
                    .optional()?;
                let Some(user_id) = owner else {
                    return Ok(false);
                };
                tx.prepare_cached(DELETE_SESSION)?
                    .execute(rusqlite::named_params! { "$1": key })?;
                audit_direct(
                    tx,
                    webhooks.as_deref(),
                    &event,
                    EventKind::SessionEnded,
                    Some(&user_id),
                )?;
                Ok(true)
            })
            .await?;
        if let Some(ended) = direct {
            if ended {
                self.ended(EndCause::logout, 1);
            }
            return Ok(());
        }
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let owner: Option<(String,)> = sqlx::query_as(SESSION_OWNER)
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some((user_id,)) = owner else {
                tx.rollback().await?;
                return Ok(());
            };
            sqlx::query(DELETE_SESSION)
                .bind(digest.as_str())
                .execute(&mut *tx)
                .await?;
            audit!(self, tx, audit, EventKind::SessionEnded, Some(user_id.as_str()));
            commit!(tx, conn);
            self.ended(EndCause::logout, 1);
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn user_sessions(
        &self,
        user_id: &str,
        live: Liveness,
        limit: u32,
    ) -> Result<Vec<SessionDetails>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as::<_, StoredSessionRow>(
                "SELECT token_hash, user_id, created, expires, client_ip, user_agent, last_seen, \
                 method, second_factor FROM sessions WHERE user_id = $1 AND expires > $2 \
                 AND COALESCE(last_seen, created) > $3 \
                 ORDER BY created DESC, token_hash LIMIT $4",
            )
            .bind(user_id)
            .bind(live.now)
            .bind(live.seen_since)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map(|rows| {
            rows.into_iter()
                .map(stored_session)
                .map(|s| SessionDetails {
                    handle: SessionHandle::from_stored(s.digest.as_str()),
                    created: s.created,
                    expires: s.expires,
                    last_seen: s.last_seen,
                    client_ip: s.client_ip,
                    user_agent: s.user_agent,
                    sign_in: s.sign_in,
                })
                .collect()
        })
        .map_err(classify)
    }

    async fn revoke_session(
        &self,
        user_id: &str,
        handle: &SessionHandle,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        // The handle is a prefix of the digest: a range over the primary key finds it.
        let upper = format!("{}g", handle.as_str());
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let ended = sqlx::query(
                "DELETE FROM sessions WHERE user_id = $1 AND token_hash >= $2 AND token_hash < $3",
            )
            .bind(user_id)
            .bind(handle.as_str())
            .bind(&upper)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if ended > 0 {
                audit!(self, tx, audit, EventKind::SessionEnded, Some(user_id));
            }
            commit!(tx, conn);
            self.ended(EndCause::logout, ended);
            Ok::<_, sqlx::Error>(ended > 0)
        }
        .await)
        .map_err(classify)
    }

    async fn touch_sessions(&self, digests: &[TokenDigest], at: i64) -> Result<(), StoreError> {
        if digests.is_empty() {
            return Ok(());
        }
        let mut sql = String::from(
            "UPDATE sessions SET last_seen = $1 \
             WHERE (last_seen IS NULL OR last_seen < $1) AND token_hash IN (",
        );
        for n in 0..digests.len() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", n + 2));
        }
        sql.push(')');
        // A hint answered to no one: it waits for no WAL sync (a later one covers it).
        on_writer!(self, pool => unsynced async {
            let mut conn = acquire!(self, pool);
            // Begun holding the writer, so that no other write of this process comes
            // between: the read cache keeps its sessions through this commit alone.
            let note = self.read_cache().and_then(ReadCache::note_begins);
            let mut query = sqlx::query(&sql).bind(at);
            for digest in digests {
                query = query.bind(digest.as_str());
            }
            let done = query.execute(&mut *conn).await?;
            if let Some(note) = note {
                let used = digests.iter().map(TokenDigest::as_str);
                note.written(done.rows_affected() > 0, used, at);
            }
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(classify)
    }

    async fn delete_sessions(
        &self,
        user_id: &str,
        keep: Option<&TokenDigest>,
        audit: &Audit,
    ) -> Result<u64, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
                .bind(user_id)
                .bind(keep.map_or("", TokenDigest::as_str))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if ended > 0 {
                audit!(self, tx, audit, EventKind::SessionEnded, Some(user_id));
            }
            commit!(tx, conn);
            self.ended(EndCause::logout_all, ended);
            Ok::<_, sqlx::Error>(ended)
        }
        .await)
        .map_err(classify)
    }

    async fn delete_expired_sessions(&self, live: Liveness, batch: u32) -> Result<u64, StoreError> {
        // Idle sessions are found by a scan; expired ones by the index on `expires`.
        let idle = live.seen_since > i64::MIN;
        let sql = if idle {
            "DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions \
             WHERE expires <= $1 OR COALESCE(last_seen, created) <= $3 LIMIT $2)"
        } else {
            "DELETE FROM sessions WHERE token_hash IN \
             (SELECT token_hash FROM sessions WHERE expires <= $1 LIMIT $2)"
        };
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let query = sqlx::query(sql).bind(live.now).bind(i64::from(batch));
            let query = if idle { query.bind(live.seen_since) } else { query };
            query.execute(&mut *conn).await.map(|done| {
                self.ended(EndCause::expired, done.rows_affected());
                done.rows_affected()
            })
        }
        .await)
        .map_err(classify)
    }
}

impl SqlStore {
    /// The session of `digest`, live by `live`, from the database.
    async fn read_session(
        &self,
        digest: &TokenDigest,
        live: Liveness,
    ) -> Result<Option<SessionRecord>, StoreError> {
        const SQL: &str =
            "SELECT s.user_id, u.username, u.email, s.created, s.expires, s.last_seen \
                           FROM sessions s JOIN users u ON u.id = s.user_id \
                           WHERE s.token_hash = $1 AND s.expires > $2 \
                           AND COALESCE(s.last_seen, s.created) > $3";
        let record =
            |(user_id, username, email, created, expires, last_seen): SessionRow| SessionRecord {
                user_id,
                username,
                email,
                created,
                expires,
                last_seen,
            };
        inline_first!(
            self,
            query_row(SQL, ["$1" => digest.as_str(), "$2" => live.now, "$3" => live.seen_since]),
            |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?)),
            |row: Option<SessionRow>| Ok(row.map(record))
        );
        point_read!(self, conn => {
            sqlx::query_as::<_, SessionRow>(SQL)
                .bind(digest.as_str())
                .bind(live.now)
                .bind(live.seen_since)
                .fetch_optional(conn)
                .await
        })
        .map(|row| row.map(record))
        .map_err(classify)
    }
}
