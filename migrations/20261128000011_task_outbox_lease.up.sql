-- A lease on each outbox row, so that no database connection is held while a row is published
-- to Redis. Whoever publishes a row (the request that wrote it, or a relay) owns it until
-- leased_until; relays claim only rows whose lease has run out. Existing rows are free at once.
ALTER TABLE task_outbox ADD COLUMN leased_until TIMESTAMPTZ NOT NULL DEFAULT now();
