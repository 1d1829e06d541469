-- Postgres 0005 adds NOTIFY triggers that keep the managers' record caches correct across
-- replicas. The SQLite store never caches records (its reads are in-process), so there is
-- nothing to add; this migration keeps the numbering of both backends equal.
SELECT 1;
