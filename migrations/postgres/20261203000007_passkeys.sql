-- Passkeys (WebAuthn credentials), and the state of a ceremony in progress kept with
-- its one-time token (registration, or a sign-in with a passkey).
ALTER TABLE tokens ADD COLUMN state TEXT;

-- passkey is the credential as webauthn-rs keeps it (JSON: its id, public key, counter
-- and flags); counter is copied out so that updates can compare-and-swap on it.
CREATE TABLE passkeys (
    credential_id TEXT    NOT NULL PRIMARY KEY,
    user_id       TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    passkey       TEXT    NOT NULL,
    counter       BIGINT NOT NULL,
    created       BIGINT NOT NULL,
    last_used     BIGINT
);

CREATE INDEX passkeys_user_id ON passkeys (user_id);
