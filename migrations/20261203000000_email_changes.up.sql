-- Each change of a user's address (UpdateUser), which mails the new one: counted per user, and
-- per address (changes to it and away from it, by anyone) over a window, so that no account,
-- nor accounts taking turns at one address between sign-ups, can mail an address without end.
-- Rows older than the window count for nothing; a user's are deleted at its next change, and
-- with the user. Addresses are compared as the unique index on users compares them.
CREATE TABLE email_changes (
    id         BIGSERIAL   PRIMARY KEY,
    username   TEXT        NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    old_email  TEXT        NOT NULL,
    new_email  TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX email_changes_username_idx ON email_changes (username, changed_at);
CREATE INDEX email_changes_new_email_idx ON email_changes (lower(new_email COLLATE "C"), changed_at);
CREATE INDEX email_changes_old_email_idx ON email_changes (lower(old_email COLLATE "C"), changed_at);
