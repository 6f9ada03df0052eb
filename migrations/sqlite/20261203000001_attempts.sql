-- Wrong codes tried against a password reset code: at 5 the code is void. (Attempts
-- at passwords and codes are counted in rate_limits before they are checked.)
ALTER TABLE tokens ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
