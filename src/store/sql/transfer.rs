//! Export pages and the all-or-nothing import.

use super::*;

#[async_trait]
impl TransferStore for SqlStore {
    async fn users_page(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Credentials>, StoreError> {
        // Keyset pagination on the (created, id) index: each page is a short query, so a
        // long export never holds a read transaction open or skips rows.
        const SQL: &str = concat!(
            "SELECT ",
            user_columns!(),
            ", password_hash FROM users WHERE (created, id) > ($1, $2) \
             ORDER BY created, id LIMIT $3"
        );
        let (created, id) = after.unwrap_or((i64::MIN, String::new()));
        on_pool!(self, pool => {
            sqlx::query_as::<_, CredentialsRow>(SQL)
                .bind(created)
                .bind(&id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?
        .into_iter()
        .map(credentials)
        .collect()
    }

    async fn sessions_page(
        &self,
        after: Option<TokenDigest>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<StoredSession>, StoreError> {
        const SQL: &str = "SELECT token_hash, user_id, created, expires, client_ip, user_agent, \
                           last_seen, method, second_factor FROM sessions \
                           WHERE token_hash > $1 AND expires > $2 ORDER BY token_hash LIMIT $3";
        let after = after.map(|d| d.as_str().to_owned()).unwrap_or_default();
        on_pool!(self, pool => {
            sqlx::query_as::<_, StoredSessionRow>(SQL)
                .bind(&after)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map(|rows| rows.into_iter().map(stored_session).collect())
        .map_err(classify)
    }

    async fn deleted_users_page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeletedUser>, StoreError> {
        const SQL: &str =
            "SELECT id, deleted FROM deleted_users WHERE id > $1 ORDER BY id LIMIT $2";
        on_pool!(self, pool => {
            sqlx::query_as::<_, (String, i64)>(SQL)
                .bind(after.unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map(|rows| {
            rows.into_iter()
                .map(|(id, deleted)| DeletedUser { id, deleted })
                .collect()
        })
        .map_err(classify)
    }

    async fn factors_page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredFactors>, StoreError> {
        on_pool!(self, pool => async {
            let rows: Vec<(String, String, i64, Option<i64>, i64)> = sqlx::query_as(
                "SELECT user_id, secret, created, confirmed, last_step FROM totp \
                 WHERE user_id > $1 ORDER BY user_id LIMIT $2",
            )
            .bind(after.unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let mut codes: Vec<(String, String)> = Vec::new();
            if !rows.is_empty() {
                let mut query =
                    QueryBuilder::new("SELECT user_id, code_hash FROM recovery_codes WHERE user_id IN (");
                push_list!(query, rows.iter().map(|r| r.0.as_str()));
                query.push(") ORDER BY user_id, code_hash");
                codes = query.build_query_as().fetch_all(pool).await?;
            }
            Ok::<_, sqlx::Error>(
                rows.into_iter()
                    .map(|(user_id, secret, created, confirmed, last_step)| StoredFactors {
                        recovery_codes: codes
                            .iter()
                            .filter(|(owner, _)| *owner == user_id)
                            .map(|(_, hash)| TokenDigest::from_stored(hash.clone()))
                            .collect(),
                        user_id,
                        totp: TotpRecord {
                            secret,
                            created,
                            confirmed,
                            last_step,
                        },
                    })
                    .collect(),
            )
        }
        .await)
        .map_err(classify)
    }

    async fn passkeys_page(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredPasskey>, StoreError> {
        let sql = format!(
            "SELECT {} FROM passkeys WHERE credential_id > $1 ORDER BY credential_id LIMIT $2",
            passkeys::PASSKEY_COLUMNS
        );
        on_pool!(self, pool => {
            sqlx::query_as::<_, passkeys::PasskeyRow>(&sql)
                .bind(after.unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map(|rows| rows.into_iter().map(passkeys::passkey).collect())
        .map_err(classify)
    }

    async fn service_keys(&self) -> Result<Vec<ServiceKey>, StoreError> {
        const SQL: &str = "SELECT name, value, created FROM service_keys ORDER BY name";
        on_pool!(self, pool => {
            sqlx::query_as::<_, (String, String, i64)>(SQL)
                .fetch_all(pool)
                .await
        })
        .map(|rows| {
            rows.into_iter()
                .map(|(name, value, created)| ServiceKey {
                    name,
                    value,
                    created,
                })
                .collect()
        })
        .map_err(classify)
    }

    async fn begin_import(&self, skip_existing: bool) -> Result<Box<dyn Importer>, StoreError> {
        let importer = match &self.backend {
            Backend::Sqlite {
                writer, group_sync, ..
            } => {
                // The import's transaction is the writer's, opened and ended by its own
                // statements; whatever becomes of it, the connection is not used again.
                let mut conn = writer.acquire().await.map_err(classify)?;
                conn.close_on_drop();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?;
                SqlImporter::Sqlite(conn, skip_existing, group_sync.clone())
            }
            Backend::Postgres { pool, .. } => {
                SqlImporter::Postgres(pool.begin().await.map_err(classify)?, skip_existing)
            }
        };
        Ok(Box::new(importer))
    }
}

/// The values `$sql` (a query of one text column ending in `IN (`) finds for the list
/// `$values`, as a set, read inside the import's transaction `$tx`.
macro_rules! select_set {
    ($tx:expr, $sql:expr, $values:expr) => {{
        let mut query = QueryBuilder::new($sql);
        push_list!(query, $values);
        query.push(")");
        query
            .build_query_as::<(String,)>()
            .fetch_all(&mut **$tx)
            .await?
            .into_iter()
            .map(|(value,)| value)
            .collect::<HashSet<String>>()
    }};
}

/// An import's transaction on whichever backend the store has.
enum SqlImporter {
    /// The writer in a transaction, with the group sync that makes its commit durable.
    Sqlite(WriterConn, bool, Arc<GroupSync>),
    Postgres(Transaction<'static, Postgres>, bool),
}

/// Runs `$body` with `$tx` bound to the import's open transaction.
macro_rules! on_tx {
    ($importer:expr, $tx:ident, $skip:ident => $body:expr) => {
        match $importer {
            SqlImporter::Sqlite($tx, $skip, _) => $body,
            SqlImporter::Postgres($tx, $skip) => $body,
        }
    };
}

#[async_trait]
impl Importer for SqlImporter {
    async fn users(&mut self, batch: &[Credentials]) -> Result<Vec<Imported>, StoreError> {
        // Conflicts are looked up first rather than caught from the INSERT: on
        // PostgreSQL a failed statement would abort the whole import's transaction, and
        // the import wants to report every conflict, not just the first. One query per
        // batch looks them up and one multi-row INSERT writes the rest.
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, skip_existing => async {
            let mut query = QueryBuilder::new("SELECT id, username, email FROM users WHERE id IN (");
            push_list!(query, batch.iter().map(|c| c.user.id.as_str()));
            query.push(") OR username IN (");
            push_list!(query, batch.iter().map(|c| c.user.username.as_str()));
            query.push(") OR email IN (");
            push_list!(query, batch.iter().map(|c| c.user.email.as_str()));
            query.push(")");
            let existing: Vec<(String, String, String)> =
                query.build_query_as().fetch_all(&mut **tx).await?;
            let deleted = select_set!(
                tx,
                "SELECT id FROM deleted_users WHERE id IN (",
                batch.iter().map(|c| c.user.id.as_str())
            );
            let mut ids: HashSet<String> = HashSet::new();
            let mut usernames: HashSet<String> = HashSet::new();
            let mut emails: HashSet<String> = HashSet::new();
            for (id, username, email) in existing {
                ids.insert(id);
                usernames.insert(username);
                emails.insert(email);
            }
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for record in batch {
                let u = &record.user;
                // Earlier records of this batch count as existing too.
                let outcome = if ids.contains(&u.id) {
                    if *skip_existing { Imported::Skipped } else { Imported::Taken(Unique::Id) }
                } else if deleted.contains(&u.id) {
                    if *skip_existing { Imported::Skipped } else { Imported::Deleted }
                } else if usernames.contains(&u.username) {
                    Imported::Taken(Unique::Username)
                } else if emails.contains(&u.email) {
                    Imported::Taken(Unique::Email)
                } else {
                    ids.insert(u.id.clone());
                    usernames.insert(u.username.clone());
                    emails.insert(u.email.clone());
                    fresh.push(record);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO users (id, username, email, password_hash, created, updated, \
                     verified, verification_date, profile) ",
                );
                insert.push_values(fresh, |mut row, record| {
                    row.push_bind(record.user.id.as_str())
                        .push_bind(record.user.username.as_str())
                        .push_bind(record.user.email.as_str())
                        .push_bind(record.password_hash.as_str())
                        .push_bind(record.user.created)
                        .push_bind(record.user.updated)
                        .push_bind(record.user.verified)
                        .push_bind(record.user.verification_date)
                        .push_bind(profile_json(&record.user.profile));
                });
                insert.build().execute(&mut **tx).await?;
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn sessions(&mut self, batch: &[StoredSession]) -> Result<Vec<Imported>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, skip_existing => async {
            let mut tokens = select_set!(
                tx,
                "SELECT token_hash FROM sessions WHERE token_hash IN (",
                batch.iter().map(|s| s.digest.as_str())
            );
            let users = select_set!(
                tx,
                "SELECT id FROM users WHERE id IN (",
                batch.iter().map(|s| s.user_id.as_str())
            );
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for session in batch {
                let outcome = if tokens.contains(session.digest.as_str()) {
                    if *skip_existing { Imported::Skipped } else { Imported::Taken(Unique::Id) }
                } else if !users.contains(&session.user_id) {
                    Imported::UnknownUser
                } else {
                    tokens.insert(session.digest.as_str().to_owned());
                    fresh.push(session);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert =
                    QueryBuilder::new(
                        "INSERT INTO sessions (token_hash, user_id, created, expires, \
                         client_ip, user_agent, last_seen, method, second_factor) ",
                    );
                insert.push_values(fresh, |mut row, session| {
                    let (method, second_factor) = sign_in_columns(session.sign_in);
                    row.push_bind(session.digest.as_str())
                        .push_bind(session.user_id.as_str())
                        .push_bind(session.created)
                        .push_bind(session.expires)
                        .push_bind(session.client_ip.as_deref())
                        .push_bind(session.user_agent.as_deref())
                        .push_bind(session.last_seen)
                        .push_bind(method)
                        .push_bind(second_factor);
                });
                insert.build().execute(&mut **tx).await?;
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn deleted_users(&mut self, batch: &[DeletedUser]) -> Result<Vec<Imported>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, _skip_existing => async {
            let ids = || batch.iter().map(|d| d.id.as_str());
            let live = select_set!(tx, "SELECT id FROM users WHERE id IN (", ids());
            let mut known = select_set!(tx, "SELECT id FROM deleted_users WHERE id IN (", ids());
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for deleted in batch {
                let outcome = if live.contains(&deleted.id) {
                    Imported::Taken(Unique::Id)
                } else if !known.insert(deleted.id.clone()) {
                    Imported::Skipped
                } else {
                    fresh.push(deleted);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert = QueryBuilder::new("INSERT INTO deleted_users (id, deleted) ");
                insert.push_values(fresh, |mut row, deleted| {
                    row.push_bind(deleted.id.as_str()).push_bind(deleted.deleted);
                });
                insert.build().execute(&mut **tx).await?;
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn factors(&mut self, batch: &[StoredFactors]) -> Result<Vec<Imported>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, skip_existing => async {
            let ids = || batch.iter().map(|f| f.user_id.as_str());
            let mut existing = select_set!(tx, "SELECT user_id FROM totp WHERE user_id IN (", ids());
            let users = select_set!(tx, "SELECT id FROM users WHERE id IN (", ids());
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for factors in batch {
                let outcome = if existing.contains(&factors.user_id) {
                    if *skip_existing { Imported::Skipped } else { Imported::Taken(Unique::Id) }
                } else if !users.contains(&factors.user_id) {
                    Imported::UnknownUser
                } else {
                    existing.insert(factors.user_id.clone());
                    fresh.push(factors);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO totp (user_id, secret, created, confirmed, last_step) ",
                );
                insert.push_values(&fresh, |mut row, f| {
                    row.push_bind(f.user_id.as_str())
                        .push_bind(f.totp.secret.as_str())
                        .push_bind(f.totp.created)
                        .push_bind(f.totp.confirmed)
                        .push_bind(f.totp.last_step);
                });
                insert.build().execute(&mut **tx).await?;
                let codes: Vec<(&str, &str)> = fresh
                    .iter()
                    .flat_map(|f| f.recovery_codes.iter().map(|c| (f.user_id.as_str(), c.as_str())))
                    .collect();
                for chunk in codes.chunks(500) {
                    let mut insert =
                        QueryBuilder::new("INSERT INTO recovery_codes (user_id, code_hash) ");
                    insert.push_values(chunk, |mut row, (user, code)| {
                        row.push_bind(*user).push_bind(*code);
                    });
                    insert.build().execute(&mut **tx).await?;
                }
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn passkeys(&mut self, batch: &[StoredPasskey]) -> Result<Vec<Imported>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        on_tx!(self, tx, skip_existing => async {
            let mut existing = select_set!(
                tx,
                "SELECT credential_id FROM passkeys WHERE credential_id IN (",
                batch.iter().map(|p| p.credential_id.as_str())
            );
            let users = select_set!(
                tx,
                "SELECT id FROM users WHERE id IN (",
                batch.iter().map(|p| p.user_id.as_str())
            );
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut fresh = Vec::new();
            for key in batch {
                let outcome = if existing.contains(&key.credential_id) {
                    if *skip_existing { Imported::Skipped } else { Imported::Taken(Unique::Id) }
                } else if !users.contains(&key.user_id) {
                    Imported::UnknownUser
                } else {
                    existing.insert(key.credential_id.clone());
                    fresh.push(key);
                    Imported::Inserted
                };
                outcomes.push(outcome);
            }
            if !fresh.is_empty() {
                let mut insert = QueryBuilder::new(format!(
                    "INSERT INTO passkeys ({}) ",
                    passkeys::PASSKEY_COLUMNS
                ));
                insert.push_values(fresh, |mut row, p| {
                    row.push_bind(p.credential_id.as_str())
                        .push_bind(p.user_id.as_str())
                        .push_bind(p.name.as_str())
                        .push_bind(p.passkey.as_str())
                        .push_bind(p.counter)
                        .push_bind(p.created)
                        .push_bind(p.last_used);
                });
                insert.build().execute(&mut **tx).await?;
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn service_keys(&mut self, batch: &[ServiceKey]) -> Result<Vec<Imported>, StoreError> {
        on_tx!(self, tx, skip_existing => async {
            let mut outcomes = Vec::with_capacity(batch.len());
            for key in batch {
                let stored: Option<String> =
                    sqlx::query_scalar("SELECT value FROM service_keys WHERE name = $1")
                        .bind(&key.name)
                        .fetch_optional(&mut **tx)
                        .await?;
                outcomes.push(match stored {
                    Some(value) if value == key.value || *skip_existing => Imported::Skipped,
                    Some(_) => Imported::Taken(Unique::Id),
                    None => {
                        sqlx::query(
                            "INSERT INTO service_keys (name, value, created) VALUES ($1, $2, $3)",
                        )
                        .bind(&key.name)
                        .bind(&key.value)
                        .bind(key.created)
                        .execute(&mut **tx)
                        .await?;
                        Imported::Inserted
                    }
                });
            }
            Ok::<_, sqlx::Error>(outcomes)
        }
        .await)
        .map_err(classify)
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        match *self {
            SqlImporter::Sqlite(mut conn, _, group_sync) => {
                let committed = sqlx::query("COMMIT").execute(&mut *conn).await.map(drop);
                durable_after(&group_sync, committed).await
            }
            SqlImporter::Postgres(tx, _) => tx.commit().await,
        }
        .map_err(classify)
    }
}
