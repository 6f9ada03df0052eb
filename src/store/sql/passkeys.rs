//! Passkeys: listing, naming and deleting them, and the ceremonies of signing in
//! with one.

use super::*;

/// The columns of a [`StoredPasskey`], in its fields' order.
pub(super) const PASSKEY_COLUMNS: &str =
    "credential_id, user_id, name, passkey, counter, created, last_used";

pub(super) type PasskeyRow = (String, String, String, String, i64, i64, Option<i64>);

pub(super) fn passkey(
    (credential_id, user_id, name, passkey, counter, created, last_used): PasskeyRow,
) -> StoredPasskey {
    StoredPasskey {
        credential_id,
        user_id,
        name,
        passkey,
        counter,
        created,
        last_used,
    }
}

#[async_trait]
impl PasskeyStore for SqlStore {
    async fn passkeys(&self, user_id: &str) -> Result<Vec<StoredPasskey>, StoreError> {
        let sql = format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created, credential_id"
        );
        on_pool!(self, pool => {
            sqlx::query_as::<_, PasskeyRow>(&sql)
                .bind(user_id)
                .fetch_all(pool)
                .await
        })
        .map(|rows| rows.into_iter().map(passkey).collect())
        .map_err(classify)
    }

    async fn rename_passkey(
        &self,
        user_id: &str,
        credential_id: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query("UPDATE passkeys SET name = $3 WHERE user_id = $1 AND credential_id = $2")
                .bind(user_id)
                .bind(credential_id)
                .bind(name)
                .execute(&mut *conn)
                .await
                .map(|done| done.rows_affected() == 1)
        }
        .await)
        .map_err(classify)
    }

    async fn delete_passkey(
        &self,
        user_id: &str,
        credential_id: &str,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        self.delete_passkeys_where(user_id, Some(credential_id), audit)
            .await
            .map(|deleted| deleted == 1)
    }

    async fn delete_passkeys(&self, user_id: &str, audit: &Audit) -> Result<u64, StoreError> {
        self.delete_passkeys_where(user_id, None, audit).await
    }

    async fn passkey(&self, credential_id: &str) -> Result<Option<StoredPasskey>, StoreError> {
        let sql = format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = $1");
        on_pool!(self, pool => {
            sqlx::query_as::<_, PasskeyRow>(&sql)
                .bind(credential_id)
                .fetch_optional(pool)
                .await
        })
        .map(|row| row.map(passkey))
        .map_err(classify)
    }

    async fn insert_passkey_sign_in(
        &self,
        ceremony: NewPasskeySignIn<'_>,
    ) -> Result<(), StoreError> {
        // For a name, written only while its account is there (as tokens are).
        const FOR_ACCOUNT: &str = "INSERT INTO passkey_sign_ins \
                                   (challenge_hash, user_id, state, created, expires) \
                                   SELECT $1, id, $3, $4, $5 FROM users WHERE id = $2";
        const WITHOUT_NAME: &str = "INSERT INTO passkey_sign_ins \
                                    (challenge_hash, user_id, state, created, expires) \
                                    VALUES ($1, $2, $3, $4, $5)";
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let sql = if ceremony.user_id.is_some() { FOR_ACCOUNT } else { WITHOUT_NAME };
            sqlx::query(sql)
                .bind(ceremony.digest.as_str())
                .bind(ceremony.user_id)
                .bind(ceremony.state)
                .bind(ceremony.created)
                .bind(ceremony.expires)
                .execute(&mut *conn)
                .await
                .map(|_| ())
        }
        .await)
        .map_err(classify)
    }

    async fn passkey_sign_in(
        &self,
        digest: &TokenDigest,
        now: i64,
    ) -> Result<Option<PasskeySignInCeremony>, StoreError> {
        on_pool!(self, pool => {
            sqlx::query_as::<_, (Option<String>, String)>(
                "SELECT user_id, state FROM passkey_sign_ins \
                 WHERE challenge_hash = $1 AND expires > $2",
            )
            .bind(digest.as_str())
            .bind(now)
            .fetch_optional(pool)
            .await
        })
        .map(|row| row.map(|(user_id, state)| PasskeySignInCeremony { user_id, state }))
        .map_err(classify)
    }

    async fn redeem_passkey_sign_in(
        &self,
        digest: &TokenDigest,
        user_id: &str,
        audit: &Audit,
        effect: Redemption<'_>,
    ) -> Result<Redeemed, StoreError> {
        // The account is the one the ceremony was started for, or (started without a
        // name) the one whose passkey signed it.
        const FIND: &str = "SELECT COALESCE(user_id, $2), expires, CAST(0 AS BIGINT) \
                            FROM passkey_sign_ins \
                            WHERE challenge_hash = $1 AND (user_id IS NULL OR user_id = $2)";
        const CONSUME: &str = "DELETE FROM passkey_sign_ins \
                               WHERE challenge_hash = $1 AND (user_id IS NULL OR user_id = $2)";
        let row = OneTimeRow {
            find: FIND,
            consume: CONSUME,
            key: user_id,
        };
        self.redeem(digest, row, audit, effect).await
    }

    async fn delete_expired_passkey_sign_ins(
        &self,
        now: i64,
        batch: u32,
    ) -> Result<u64, StoreError> {
        self.delete_expired(
            "DELETE FROM passkey_sign_ins WHERE challenge_hash IN \
             (SELECT challenge_hash FROM passkey_sign_ins WHERE expires <= $1 LIMIT $2)",
            now,
            batch,
        )
        .await
    }
}

impl SqlStore {
    /// Deletes the user's passkey `credential_id`, or all of them, with the audit event.
    async fn delete_passkeys_where(
        &self,
        user_id: &str,
        credential_id: Option<&str>,
        audit: &Audit,
    ) -> Result<u64, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            let mut tx = conn.begin_write().await?;
            let deleted = match credential_id {
                Some(id) => sqlx::query("DELETE FROM passkeys WHERE user_id = $1 AND credential_id = $2")
                    .bind(user_id)
                    .bind(id),
                None => sqlx::query("DELETE FROM passkeys WHERE user_id = $1").bind(user_id),
            }
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted > 0 {
                audit!(self, tx, audit, EventKind::SecondFactorChanged, Some(user_id));
            }
            commit!(tx, conn);
            Ok::<_, sqlx::Error>(deleted)
        }
        .await)
        .map_err(classify)
    }
}
