-- Each change of a user's address (UpdateUser), which sends a verification email to the new
-- one: counted per user and per address over a window, so that an account cannot mail any
-- address without end. Rows older than the window count for nothing; a user's are deleted at
-- its next change, and with the user.
CREATE TABLE email_changes (
    id         BIGSERIAL   PRIMARY KEY,
    username   TEXT        NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    email      TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX email_changes_username_idx ON email_changes (username, changed_at);
CREATE INDEX email_changes_email_idx ON email_changes (lower(email), changed_at);
