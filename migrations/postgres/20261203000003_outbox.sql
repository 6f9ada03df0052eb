-- E-mails to send, and those sent or given up. A Send method queues its message in the
-- transaction that stores the token the message carries, and answers at once; a
-- sender in every replica delivers queued messages, with retries. A message goes with
-- its token: when the token is used, replaced, withdrawn or expires, its message goes
-- too. A message's body (which holds the link or code) is erased once it is sent or
-- given up.
CREATE TABLE outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY,
    token_hash   TEXT   REFERENCES tokens (token_hash) ON DELETE CASCADE,
    user_id      TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    recipient    TEXT   NOT NULL,
    from_name    TEXT,
    subject      TEXT   NOT NULL,
    body         TEXT   NOT NULL,
    -- queued, sent or dead
    state        TEXT   NOT NULL,
    attempts     BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    -- A sender that claimed the message holds it until then.
    lease_until  BIGINT NOT NULL,
    created      BIGINT NOT NULL,
    CONSTRAINT outbox_pkey PRIMARY KEY (id)
);

CREATE INDEX outbox_due ON outbox (state, next_attempt);
CREATE INDEX outbox_token ON outbox (token_hash);
CREATE INDEX outbox_created ON outbox (created);
