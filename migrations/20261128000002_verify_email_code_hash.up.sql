-- Store a SHA-256 hash of each verification code instead of the code, and record when the
-- verification email was sent (a redelivered task does not send it again).
ALTER TABLE verify_emails ADD COLUMN secret_code_hash BYTEA;
UPDATE verify_emails SET secret_code_hash = sha256(convert_to(secret_code, 'UTF8'));
ALTER TABLE verify_emails ALTER COLUMN secret_code_hash SET NOT NULL;
ALTER TABLE verify_emails DROP COLUMN secret_code;
ALTER TABLE verify_emails ADD COLUMN email_sent_at TIMESTAMPTZ;
