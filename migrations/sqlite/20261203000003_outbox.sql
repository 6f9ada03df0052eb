-- E-mails to send, and those sent or given up. A Send method queues its message in the
-- transaction that stores the token the message carries, and answers at once; a
-- sender in every replica delivers queued messages, with retries. A message goes with
-- its token: when the token is used, replaced, withdrawn or expires, its message goes
-- too. A message's body (which holds the link or code) is erased once it is sent or
-- given up. Ids are never reused (AUTOINCREMENT), so a sender recording the outcome of
-- a message cannot touch another that took its place.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash   TEXT    REFERENCES tokens (token_hash) ON DELETE CASCADE,
    user_id      TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    recipient    TEXT    NOT NULL,
    from_name    TEXT,
    subject      TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    -- queued, sent or dead
    state        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    next_attempt INTEGER NOT NULL,
    -- A sender that claimed the message holds it until then.
    lease_until  INTEGER NOT NULL,
    created      INTEGER NOT NULL
);

CREATE INDEX outbox_due ON outbox (state, next_attempt);
CREATE INDEX outbox_token ON outbox (token_hash);
CREATE INDEX outbox_created ON outbox (created);
