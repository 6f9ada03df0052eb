-- The ids of deleted accounts. An id is never issued again, so whatever an application
-- keeps under a user's id cannot pass to a stranger who signs up later.
CREATE TABLE deleted_users (
    id      TEXT    NOT NULL PRIMARY KEY,
    deleted INTEGER NOT NULL
) WITHOUT ROWID;
