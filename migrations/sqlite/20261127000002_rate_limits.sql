-- Counters of the brute-force and sign-up limits. They live in the database so that
-- every replica sees the same counts. `key` is the SHA-256 of what is limited (an
-- account, a client address), never the raw identifier.
CREATE TABLE rate_limits (
    key           TEXT    NOT NULL PRIMARY KEY,
    count         INTEGER NOT NULL,
    window_start  INTEGER NOT NULL,
    blocked_until INTEGER NOT NULL,
    strikes       INTEGER NOT NULL,
    updated       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX rate_limits_updated ON rate_limits (updated);
