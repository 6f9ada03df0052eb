-- Passkey sign-in ceremonies in progress, each its own row: starting one never
-- withdraws another, since anyone may start one for a name. user_id is the account a
-- ceremony started with a name is for; NULL for one started without a name, where the
-- passkey the browser picks names its account. A ceremony is used up by deleting its
-- row, in the transaction that opens the session.
CREATE TABLE passkey_sign_ins (
    challenge_hash TEXT    NOT NULL PRIMARY KEY,
    user_id        TEXT    REFERENCES users (id) ON DELETE CASCADE,
    state          TEXT    NOT NULL,
    created        INTEGER NOT NULL,
    expires        INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX passkey_sign_ins_expires ON passkey_sign_ins (expires);
CREATE INDEX passkey_sign_ins_user_id ON passkey_sign_ins (user_id);

-- They were one token per account before (a new start withdrew the last one).
DELETE FROM tokens WHERE purpose = 'passkey_sign_in';
