-- Counters of the brute-force and sign-up limits. They live in the database so that
-- every replica sees the same counts. `key` is the SHA-256 of what is limited (an
-- account, a client address), never the raw identifier.
CREATE TABLE rate_limits (
    key           TEXT   NOT NULL,
    count         BIGINT NOT NULL,
    window_start  BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    strikes       BIGINT NOT NULL,
    updated       BIGINT NOT NULL,
    CONSTRAINT rate_limits_pkey PRIMARY KEY (key)
);

CREATE INDEX rate_limits_updated ON rate_limits (updated);
