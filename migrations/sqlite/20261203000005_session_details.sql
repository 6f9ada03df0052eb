-- What a user sees of their own sessions (ListSessions): the address and browser that
-- opened each one, and when it was last used for its user's own account.
ALTER TABLE sessions ADD COLUMN client_ip TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
ALTER TABLE sessions ADD COLUMN last_seen INTEGER;
