ALTER TABLE task_outbox DROP COLUMN leased_until;
