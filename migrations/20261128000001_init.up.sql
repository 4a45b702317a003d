-- Users, their email verification records, and the outbox of tasks to publish to Redis.

CREATE TABLE users (
    username            TEXT        PRIMARY KEY,
    hashed_password     TEXT        NOT NULL,
    full_name           TEXT        NOT NULL,
    email               TEXT        NOT NULL,
    password_changed_at TIMESTAMPTZ NOT NULL DEFAULT '0001-01-01 00:00:00Z',
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    is_email_verified   BOOLEAN     NOT NULL DEFAULT false,
    CONSTRAINT users_email_key UNIQUE (email)
);

-- One row per send_verify_email task: task_id is unique, so a redelivered task finds the row
-- (and the code) its first delivery made instead of creating another.
CREATE TABLE verify_emails (
    id          BIGSERIAL   PRIMARY KEY,
    username    TEXT        NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    email       TEXT        NOT NULL,
    secret_code TEXT        NOT NULL,
    is_used     BOOLEAN     NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expired_at  TIMESTAMPTZ NOT NULL DEFAULT (now() + interval '15 minutes'),
    task_id     TEXT        NOT NULL,
    CONSTRAINT verify_emails_task_id_key UNIQUE (task_id)
);

CREATE INDEX verify_emails_username_idx ON verify_emails (username);

-- Tasks written in the same transaction as the data they are about; published to Redis after
-- commit and then deleted. Rows still here were not published yet (Redis down, crash).
CREATE TABLE task_outbox (
    id         BIGSERIAL   PRIMARY KEY,
    task_id    TEXT        NOT NULL UNIQUE,
    task       JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
