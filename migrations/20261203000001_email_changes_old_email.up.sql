-- Changes away from an address count against it too: sign-up mails its address uncounted, so
-- accounts signing up with one address in turn, each then moving away, went uncounted. Each
-- change keeps the old address beside the new one; addresses are compared as the unique index
-- on users compares them (lower-cased under the "C" collation). A change recorded before this
-- migration has no old address ('').
ALTER TABLE email_changes RENAME COLUMN email TO new_email;
ALTER TABLE email_changes ADD COLUMN old_email TEXT NOT NULL DEFAULT '';
ALTER TABLE email_changes ALTER COLUMN old_email DROP DEFAULT;

DROP INDEX email_changes_email_idx;
CREATE INDEX email_changes_new_email_idx ON email_changes (lower(new_email COLLATE "C"), changed_at);
CREATE INDEX email_changes_old_email_idx ON email_changes (lower(old_email COLLATE "C"), changed_at);
