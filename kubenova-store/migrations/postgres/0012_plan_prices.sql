-- The price table of each plan, versioned: a row per plan and the time from which its
-- prices (the catalog's `prices` object as JSON) were in force. The manager records the
-- catalog's prices at every start, only when they differ from the last recorded ones, so
-- changing a plan's prices never reprices hours measured before the change. Billing
-- history like tenant_plans: it outlives plans removed from the catalog.
CREATE TABLE plan_prices (
    plan    TEXT NOT NULL,
    since   BIGINT NOT NULL,
    prices  TEXT NOT NULL,
    PRIMARY KEY (plan, since)
);
