-- Who may lift a subject revocation depends on who made it: a revocation by a platform
-- role (admin, ops) may only be lifted by a platform role. Revocations recorded before
-- this migration do not say who made them; they count as platform revocations, so no
-- tenant owner can lift one that an admin made (admin and ops can still lift them all).
ALTER TABLE revoked_subjects ADD COLUMN revoked_by_platform BOOLEAN NOT NULL DEFAULT TRUE;
