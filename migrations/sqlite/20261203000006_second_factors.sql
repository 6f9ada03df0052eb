-- How each session was signed in (NULL for sessions made before this was recorded),
-- and the second factors: a TOTP secret per user, and that user's recovery codes.
ALTER TABLE sessions ADD COLUMN method TEXT;
ALTER TABLE sessions ADD COLUMN second_factor TEXT;

-- confirmed is NULL while enrolment is started but not confirmed with a first code;
-- last_step is the last time step a code was accepted for (each is accepted once).
CREATE TABLE totp (
    user_id   TEXT    NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret    TEXT    NOT NULL,
    created   INTEGER NOT NULL,
    confirmed INTEGER,
    last_step INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Only the SHA-256 of each code, bound to its user.
CREATE TABLE recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    PRIMARY KEY (user_id, code_hash)
) WITHOUT ROWID;
