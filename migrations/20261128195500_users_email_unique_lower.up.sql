-- One account per mailbox: addresses are unique whatever their case. New addresses are stored
-- in canonical form (domain lower-cased, IDN domains in punycode; see core's domain::Email);
-- rows from before keep theirs. This fails if two existing users' addresses differ only in
-- case: resolve those by hand first.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
ALTER TABLE users DROP CONSTRAINT users_email_key;
