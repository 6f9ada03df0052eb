-- Keys the service makes for itself on first use, named by purpose, kept here so that
-- every replica holds the same one and a restart keeps it. 'passkey_decoys' makes the
-- credentials that a passkey sign-in by name lists for a name without passkeys, the
-- same for that name on every ask.
CREATE TABLE service_keys (
    name    TEXT    NOT NULL PRIMARY KEY,
    value   TEXT    NOT NULL,
    created INTEGER NOT NULL
);
