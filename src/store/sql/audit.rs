//! The audit trail: events of their own, reading them by keyset, and retention.

use super::*;

type EventRow = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

fn event(row: EventRow) -> AuditEvent {
    let (id, at, kind, user_id, client_ip, request_id, outcome, actor) = row;
    AuditEvent {
        id,
        at,
        kind,
        user_id,
        client_ip,
        request_id,
        outcome,
        actor,
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn record_event(
        &self,
        audit: &Audit,
        kind: EventKind,
        user_id: Option<&str>,
        outcome: &str,
    ) -> Result<(), StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            event_insert(audit, kind, user_id, outcome)
                .execute(&mut *conn)
                .await
                .map(drop)
        }
        .await)
        .map_err(classify)
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        on_pool!(self, pool => {
            let mut sql = QueryBuilder::new(
                "SELECT id, at, kind, user_id, client_ip, request_id, outcome, actor \
                 FROM audit_events WHERE 1 = 1",
            );
            if let Some(user_id) = &query.user_id {
                sql.push(" AND user_id = ").push_bind(user_id.as_str());
            }
            if let Some(kind) = query.kind {
                sql.push(" AND kind = ").push_bind(kind.as_str());
            }
            if let Some(since) = query.since {
                sql.push(" AND at >= ").push_bind(since);
            }
            if let Some(until) = query.until {
                sql.push(" AND at < ").push_bind(until);
            }
            if let Some(before) = query.before {
                sql.push(" AND id < ").push_bind(before);
            }
            sql.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(query.limit));
            sql.build_query_as::<EventRow>().fetch_all(pool).await
        })
        .map(|rows| rows.into_iter().map(event).collect())
        .map_err(classify)
    }

    async fn delete_old_events(&self, before: i64, batch: u32) -> Result<u64, StoreError> {
        on_writer!(self, pool => async {
            let mut conn = acquire!(self, pool);
            sqlx::query(
                "DELETE FROM audit_events WHERE id IN \
                 (SELECT id FROM audit_events WHERE at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(i64::from(batch))
            .execute(&mut *conn)
            .await
            .map(|done| done.rows_affected())
        }
        .await)
        .map_err(classify)
    }
}
