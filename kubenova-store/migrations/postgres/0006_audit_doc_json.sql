-- Audit documents are written once and read back whole, never queried inside (the
-- filters use the columns). `json` stores the validated text as sent; `jsonb` converts it
-- to a binary tree with sorted keys on every insert, which cost ~5 µs of the ~18 µs an
-- audit row took (docs/src/benchmarks.md, issue 7). Reads decode either type the same.
--
-- Upgrading rewrites the audit table once under an exclusive lock: on a manager with a
-- large audit history, expect the migration to take a while (writes wait; reads of other
-- tables do not).
ALTER TABLE audit_events ALTER COLUMN doc TYPE JSON USING doc::json;
