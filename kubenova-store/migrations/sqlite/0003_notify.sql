-- Postgres 0003 adds NOTIFY triggers for wake-ups across manager replicas. SQLite serves
-- a single process, whose waiters are woken in-process (kubenova_store::notify), so
-- there is nothing to add; this migration keeps the numbering of both backends equal.
SELECT 1;
