-- The codes cannot be recovered from their hashes: rows keep an empty code.
ALTER TABLE verify_emails DROP COLUMN email_sent_at;
ALTER TABLE verify_emails ADD COLUMN secret_code TEXT NOT NULL DEFAULT '';
ALTER TABLE verify_emails DROP COLUMN secret_code_hash;
