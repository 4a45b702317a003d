DROP INDEX email_changes_old_email_idx;
DROP INDEX email_changes_new_email_idx;
ALTER TABLE email_changes DROP COLUMN old_email;
ALTER TABLE email_changes RENAME COLUMN new_email TO email;
CREATE INDEX email_changes_email_idx ON email_changes (lower(email), changed_at);
