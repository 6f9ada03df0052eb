-- Webhook deliveries share the outbox with e-mails: queued in the transaction of the
-- change they announce, claimed, retried with backoff, given up. `channel` says which
-- sender takes a message: `mail`, or `webhook` (then `recipient` is the endpoint's URL,
-- `subject` the event type and `body` the JSON payload).
ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'mail';

CREATE INDEX outbox_channel_due ON outbox (channel, state, next_attempt);
