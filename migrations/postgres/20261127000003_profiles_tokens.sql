-- What the M3O User API adds to an account: whether its e-mail address was verified
-- (and when; 0 means never), and a free-form profile, a JSON object of strings.
ALTER TABLE users ADD COLUMN verified BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN verification_date BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN profile TEXT NOT NULL DEFAULT '{}';

-- One-time tokens sent by e-mail: verification links, password reset codes, magic
-- links. Only the SHA-256 of a token is kept. A user has at most one live token per
-- purpose: a new one replaces the old. Deleting the row is using the token, so a token
-- can be used once however many requests race for it.
CREATE TABLE tokens (
    token_hash TEXT   NOT NULL,
    user_id    TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT   NOT NULL,
    created    BIGINT NOT NULL,
    expires    BIGINT NOT NULL,
    CONSTRAINT tokens_pkey PRIMARY KEY (token_hash),
    CONSTRAINT tokens_user_purpose UNIQUE (user_id, purpose)
);

CREATE INDEX tokens_expires ON tokens (expires);

-- A new e-mail address withdraws every token mailed to the old one, in the statement
-- that changes it.
CREATE FUNCTION users_email_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tokens WHERE user_id = NEW.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_email_changed AFTER UPDATE OF email ON users
FOR EACH ROW WHEN (OLD.email IS DISTINCT FROM NEW.email)
EXECUTE FUNCTION users_email_changed();
