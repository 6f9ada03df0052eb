//! Keys the service makes for itself, one row each in `service_keys`.

use super::*;

#[async_trait]
impl KeyStore for SqlStore {
    async fn service_key(&self, name: &str, fresh: &str, now: i64) -> Result<String, StoreError> {
        // One statement: the row that is there, or the fresh one. The update changes
        // nothing; it makes RETURNING answer the stored row on a conflict.
        const KEEP: &str = "INSERT INTO service_keys (name, value, created) VALUES ($1, $2, $3) \
                            ON CONFLICT (name) DO UPDATE SET name = excluded.name \
                            RETURNING value";
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query_scalar::<_, String>(KEEP)
                .bind(name)
                .bind(fresh)
                .bind(now)
                .fetch_one(&mut *conn)
                .await
        }
        .await)
        .map_err(classify)
    }
}
