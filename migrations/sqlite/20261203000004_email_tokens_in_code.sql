-- A new e-mail address withdraws the tokens mailed to the old one: the store's account
-- update does it now, in its own transaction, where the rule can be read.
DROP TRIGGER IF EXISTS users_email_changed;
