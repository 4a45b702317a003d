-- Sign-in sessions. A session holds the hash of its current refresh token only (the token
-- itself exists at the client alone); every renewal replaces it and files the old hash in
-- session_rotated_tokens, so a replayed old token is recognised and ends the whole session.
CREATE TABLE sessions (
    id                       UUID        PRIMARY KEY,
    username                 TEXT        NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    refresh_token_hash       BYTEA       NOT NULL,
    user_agent               TEXT        NOT NULL,
    client_ip                TEXT        NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the current refresh token stops working; never later than expires_at.
    refresh_token_expires_at TIMESTAMPTZ NOT NULL,
    -- The absolute end of the session: renewals do not move it.
    expires_at               TIMESTAMPTZ NOT NULL,
    -- Set when the session was ended: logout, a password change, or a replayed refresh token.
    revoked_at               TIMESTAMPTZ,
    revoked_reason           TEXT,
    CONSTRAINT sessions_refresh_token_hash_key UNIQUE (refresh_token_hash)
);

CREATE INDEX sessions_username_idx ON sessions (username);

-- The hashes of refresh tokens already exchanged, with the session they belonged to.
CREATE TABLE session_rotated_tokens (
    token_hash BYTEA       PRIMARY KEY,
    session_id UUID        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    rotated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX session_rotated_tokens_session_idx ON session_rotated_tokens (session_id);
