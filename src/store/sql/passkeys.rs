//! Passkeys: listing, naming and deleting them.

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
