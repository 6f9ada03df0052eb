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
        on_writer!(self, pool => {
            sqlx::query("UPDATE passkeys SET name = $3 WHERE user_id = $1 AND credential_id = $2")
                .bind(user_id)
                .bind(credential_id)
                .bind(name)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(classify)
    }

    async fn delete_passkey(&self, user_id: &str, credential_id: &str) -> Result<bool, StoreError> {
        on_writer!(self, pool => {
            sqlx::query("DELETE FROM passkeys WHERE user_id = $1 AND credential_id = $2")
                .bind(user_id)
                .bind(credential_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
        .map_err(classify)
    }

    async fn delete_passkeys(&self, user_id: &str) -> Result<u64, StoreError> {
        on_writer!(self, pool => {
            sqlx::query("DELETE FROM passkeys WHERE user_id = $1")
                .bind(user_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)
    }
}
