-- One account per mailbox: addresses are unique whatever their case. New addresses are stored
-- in canonical form (see core's domain::Email: an ASCII local part kept as given, the domain
-- lower-cased, IDN domains in punycode).
--
-- Rows from before: a plain ASCII address gets the same canonical form here (its domain
-- lower-cased, a trailing dot dropped), in users and in the verification records that name it,
-- so their codes keep working. Rows the SQL cannot canonicalise (a display name, a non-ASCII
-- domain) keep their form: fix them by hand. This fails if two users' addresses then differ
-- only in case: resolve those by hand first.
--
-- lower() under the "C" collation: only ASCII letters change, whatever the database's locale (a
-- Turkish collation would otherwise lower 'I' to a dotless 'ı'). Canonical addresses are ASCII.
CREATE FUNCTION pg_temp.canonical_email(address TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN address ~ '^[A-Za-z0-9.!#$%&''*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$'
        THEN split_part(address, '@', 1) || '@'
             || rtrim(lower(split_part(address, '@', 2) COLLATE "C"), '.')
        ELSE address
    END
$$;
UPDATE verify_emails v SET email = pg_temp.canonical_email(v.email)
    WHERE v.email <> pg_temp.canonical_email(v.email);
UPDATE users SET email = pg_temp.canonical_email(email)
    WHERE email <> pg_temp.canonical_email(email);

-- A pg_temp function lives until the connection closes: dropped, so migrating down and up again
-- on one connection can create it anew.
DROP FUNCTION pg_temp.canonical_email(TEXT);

CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email COLLATE "C"));
ALTER TABLE users DROP CONSTRAINT users_email_key;
