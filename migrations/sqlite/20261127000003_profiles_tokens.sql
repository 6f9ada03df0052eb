-- What the M3O User API adds to an account: whether its e-mail address was verified
-- (and when; 0 means never), and a free-form profile, a JSON object of strings.
ALTER TABLE users ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN verification_date INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN profile TEXT NOT NULL DEFAULT '{}';

-- One-time tokens sent by e-mail: verification links, password reset codes, magic
-- links. Only the SHA-256 of a token is kept. A user has at most one live token per
-- purpose: a new one replaces the old. Deleting the row is using the token, so a token
-- can be used once however many requests race for it.
CREATE TABLE tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT    NOT NULL,
    created    INTEGER NOT NULL,
    expires    INTEGER NOT NULL,
    CONSTRAINT tokens_user_purpose UNIQUE (user_id, purpose)
) WITHOUT ROWID;

CREATE INDEX tokens_expires ON tokens (expires);

-- A new e-mail address withdraws every token mailed to the old one. A trigger keeps the
-- account update a single statement, which SQLite rolls back cleanly if it fails.
CREATE TRIGGER users_email_changed AFTER UPDATE OF email ON users
WHEN OLD.email <> NEW.email
BEGIN
    DELETE FROM tokens WHERE user_id = NEW.id;
END;
