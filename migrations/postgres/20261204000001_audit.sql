-- The audit trail: security events, each written in the transaction of the change it
-- records (or on its own, for what changes nothing: a failed login, a refused admin
-- key). It never holds a secret. Kept --audit-retention-days, then swept.
CREATE TABLE audit_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY,
    at         BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    user_id    TEXT,
    client_ip  TEXT,
    request_id TEXT,
    -- success or failure
    outcome    TEXT   NOT NULL,
    -- self, admin or system
    actor      TEXT   NOT NULL,
    CONSTRAINT audit_events_pkey PRIMARY KEY (id)
);

CREATE INDEX audit_events_user ON audit_events (user_id, id);
CREATE INDEX audit_events_kind ON audit_events (kind, id);
CREATE INDEX audit_events_at ON audit_events (at);
