//! Accounts: users with their password hashes, and the ids of deleted ones.

use super::*;

#[async_trait]
impl AccountStore for SqlStore {
    async fn insert_user(&self, new: NewUser<'_>, audit: &Audit) -> Result<User, StoreError> {
        // Nothing is inserted under the id of a deleted account. On SQLite one statement
        // decides that under the write lock. On PostgreSQL the deleted ids are looked at
        // after the insert, in the same transaction: an insert that waited for a
        // concurrent Delete of the same id to commit sees that Delete's tombstone only
        // from a later statement.
        macro_rules! insert {
            ($unless_deleted:literal) => {
                concat!(
                    "INSERT INTO users (id, username, email, password_hash, created, updated, \
                     profile) SELECT $1, $2, $3, $4, $5, $5, $6",
                    $unless_deleted
                )
            };
        }
        const DELETED: &str = "SELECT COUNT(*) FROM deleted_users WHERE id = $1";
        let profile = profile_json(new.profile);
        let deleted_id = match &self.backend {
            Backend::Sqlite {
                writer: pool,
                group_sync,
                ..
            } => {
                let written = async {
                    let mut conn = acquire!(self, pool);
                    let mut tx = conn.begin_write().await?;
                    let inserted = sqlx::query(insert!(
                        " WHERE NOT EXISTS (SELECT 1 FROM deleted_users WHERE id = $1)"
                    ))
                    .bind(new.id.as_str())
                    .bind(new.username.as_str())
                    .bind(new.email.as_str())
                    .bind(new.password_hash)
                    .bind(new.now)
                    .bind(&profile)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if !inserted {
                        tx.rollback().await?;
                        return Ok(true);
                    }
                    audit!(
                        self,
                        tx,
                        audit,
                        EventKind::AccountCreated,
                        Some(new.id.as_str())
                    );
                    commit!(tx, conn);
                    Ok::<_, sqlx::Error>(false)
                }
                .await;
                durable_after(group_sync, written).await
            }
            Backend::Postgres { pool, .. } => {
                async {
                    let mut conn = acquire!(self, pool);
                    let mut tx = conn.begin_write().await?;
                    sqlx::query(insert!(""))
                        .bind(new.id.as_str())
                        .bind(new.username.as_str())
                        .bind(new.email.as_str())
                        .bind(new.password_hash)
                        .bind(new.now)
                        .bind(&profile)
                        .execute(&mut *tx)
                        .await?;
                    let (deleted,): (i64,) = sqlx::query_as(DELETED)
                        .bind(new.id.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    if deleted > 0 {
                        tx.rollback().await?;
                        return Ok(true);
                    }
                    audit!(
                        self,
                        tx,
                        audit,
                        EventKind::AccountCreated,
                        Some(new.id.as_str())
                    );
                    commit!(tx, conn);
                    Ok::<_, sqlx::Error>(false)
                }
                .await
            }
        }
        .map_err(classify)?;
        if deleted_id {
            return Err(StoreError::Conflict(Unique::Id));
        }
        Ok(User {
            id: new.id.as_str().to_owned(),
            username: new.username.as_str().to_owned(),
            email: new.email.as_str().to_owned(),
            created: new.now,
            updated: new.now,
            verified: false,
            verification_date: 0,
            profile: new.profile.clone(),
        })
    }

    async fn user(&self, lookup: Lookup<'_>) -> Result<Option<User>, StoreError> {
        self.through_cache(
            |cache, at| cache.user(at, lookup).map(Some),
            self.read_user(lookup),
            |cache, at, found| {
                if let Some(user) = found {
                    cache.keep_user(at, lookup, user);
                }
            },
        )
        .await
    }

    async fn list_users(&self, page: Page) -> Result<Vec<User>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY created, id LIMIT $1 OFFSET $2"
        );
        let offset = i64::try_from(page.offset).unwrap_or(i64::MAX);
        on_pool!(self, pool => {
            sqlx::query_as::<_, UserRow>(SQL)
                .bind(i64::from(page.limit))
                .bind(offset)
                .fetch_all(pool)
                .await
        })
        .map_err(classify)
        .and_then(users)
    }

    async fn credentials(&self, lookup: Lookup<'_>) -> Result<Option<Credentials>, StoreError> {
        let (sql, key) = select_by!(lookup, user_columns!(), ", password_hash");
        inline_first!(self, query_row(sql, ["$1" => key]), credentials_row, |row: Option<
            CredentialsRow,
        >| row
            .map(credentials)
            .transpose());
        point_read!(self, conn => {
            sqlx::query_as::<_, CredentialsRow>(sql).bind(key).fetch_optional(conn).await
        })
        .map_err(classify)?
        .map(credentials)
        .transpose()
    }

    async fn update_user(
        &self,
        id: &UserId,
        changes: &AccountChanges,
        audit: &Audit,
    ) -> Result<Option<User>, StoreError> {
        let now = audit.at;
        // A new e-mail address is not verified, whatever the old one was: the SET
        // expressions read the row's old values, so `email` there is the old address.
        const UPDATE: &str =
            "UPDATE users SET username = COALESCE($2, username), email = COALESCE($3, email), \
             verified = CASE WHEN COALESCE($3, email) = email THEN verified ELSE FALSE END, \
             verification_date = CASE WHEN COALESCE($3, email) = email \
                                 THEN verification_date ELSE 0 END, \
             profile = COALESCE($5, profile), updated = $4 WHERE id = $1";
        const SELECT: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
        // The old address, with the row locked until the end of the transaction: on
        // SQLite the transaction takes the write lock as it begins, on PostgreSQL the
        // row is read FOR UPDATE.
        let (begin, old_email) = match self.backend {
            Backend::Sqlite { .. } => ("BEGIN IMMEDIATE", "SELECT email FROM users WHERE id = $1"),
            Backend::Postgres { .. } => {
                ("BEGIN", "SELECT email FROM users WHERE id = $1 FOR UPDATE")
            }
        };
        let username = changes.username.as_ref().map(|u| u.as_str());
        let email = changes.email.as_ref().map(|e| e.as_str());
        let profile = changes.profile.as_ref().map(profile_json);
        let row = on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_with(begin).await?;
            let old: Option<(String,)> = sqlx::query_as(old_email)
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some((old_email,)) = old else {
                return Ok(None);
            };
            sqlx::query(UPDATE)
                .bind(id.as_str())
                .bind(username)
                .bind(email)
                .bind(now)
                .bind(&profile)
                .execute(&mut *tx)
                .await?;
            if email.is_some_and(|new| new != old_email) {
                // The account's invariant: a new address withdraws every one-time token
                // mailed to the old one (and the e-mails queued with them).
                sqlx::query("DELETE FROM tokens WHERE user_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            let row: UserRow = sqlx::query_as(SELECT)
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
            audit!(self, tx, audit, EventKind::AccountUpdated, Some(id.as_str()));
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(Some(row))
        }
        .await)
        .map_err(classify)?;
        row.map(user).transpose()
    }

    async fn delete_user(&self, id: &UserId, audit: &Audit) -> Result<bool, StoreError> {
        let now = audit.at;
        // Sessions and tokens go first in the same transaction; the foreign keys' ON
        // DELETE CASCADE would do the same, this keeps the rule visible here. The id is
        // kept, so that it is never issued again.
        const TOMBSTONE: &str = "INSERT INTO deleted_users (id, deleted) \
                                 SELECT id, $2 FROM users WHERE id = $1 \
                                 ON CONFLICT (id) DO NOTHING";
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM tokens WHERE user_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(TOMBSTONE)
                .bind(id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 1 {
                audit!(self, tx, audit, EventKind::AccountDeleted, Some(id.as_str()));
            }
            commit!(tx, conn);
            self.ended(EndCause::user_deleted, ended);
            Ok::<_, sqlx::Error>(deleted == 1)
        }
        .await)
        .map_err(classify)
    }

    async fn search_users(&self, query: &UserQuery) -> Result<Vec<User>, StoreError> {
        self.through_cache(
            |cache, at| cache.search(at, &SearchKey::of(query)),
            self.read_search(query),
            |cache, at, found| cache.keep_search(at, SearchKey::of(query), found),
        )
        .await
    }

    async fn replace_password(
        &self,
        id: &str,
        expected: &str,
        new_hash: &str,
        change: HashChange,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let replaced = match change {
                HashChange::NewPassword { now } => sqlx::query(
                    "UPDATE users SET password_hash = $3, updated = $4 \
                     WHERE id = $1 AND password_hash = $2",
                )
                .bind(id)
                .bind(expected)
                .bind(new_hash)
                .bind(now),
                HashChange::Rehash => sqlx::query(
                    "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                )
                .bind(id)
                .bind(expected)
                .bind(new_hash),
            }
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            let mut ended = 0;
            if replaced && matches!(change, HashChange::NewPassword { .. }) {
                ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                audit!(self, tx, audit, EventKind::PasswordChanged, Some(id));
            }
            commit!(tx, conn);
            self.ended(EndCause::password_changed, ended);
            Ok::<_, sqlx::Error>(replaced)
        }
        .await)
        .map_err(classify)
    }
}

impl SqlStore {
    /// The user `lookup` finds, from the database.
    async fn read_user(&self, lookup: Lookup<'_>) -> Result<Option<User>, StoreError> {
        let (sql, key) = select_by!(lookup, user_columns!());
        inline_first!(self, query_row(sql, ["$1" => key]), user_row, |row: Option<UserRow>| row
            .map(user)
            .transpose());
        point_read!(self, conn => {
            sqlx::query_as::<_, UserRow>(sql).bind(key).fetch_optional(conn).await
        })
        .map_err(classify)?
        .map(user)
        .transpose()
    }

    /// The users `query` finds, from the database.
    async fn read_search(&self, query: &UserQuery) -> Result<Vec<User>, StoreError> {
        macro_rules! search {
            ($filter:literal) => {
                concat!(
                    "SELECT ",
                    user_columns!(),
                    " FROM users WHERE ",
                    $filter,
                    " ORDER BY created, id LIMIT $3 OFFSET $4"
                )
            };
        }
        let sql = match (&query.username, &query.email) {
            (Some(_), Some(_)) => search!("username = $1 AND email = $2"),
            (Some(_), None) => search!("username = $1 AND $2 IS NULL"),
            _ => search!("email = $2 AND $1 IS NULL"),
        };
        let limit = i64::from(query.page.limit);
        let offset = i64::try_from(query.page.offset).unwrap_or(i64::MAX);
        let username = query.username.as_ref().map(|u| u.as_str());
        let email = query.email.as_ref().map(|e| e.as_str());
        inline_first!(
            self,
            query_all(sql, ["$1" => username, "$2" => email, "$3" => limit, "$4" => offset]),
            user_row,
            users
        );
        point_read!(self, conn => {
            sqlx::query_as::<_, UserRow>(sql)
                .bind(username)
                .bind(email)
                .bind(limit)
                .bind(offset)
                .fetch_all(conn)
                .await
        })
        .map_err(classify)
        .and_then(users)
    }
}
