-- The W3C trace context (`traceparent`) of the write that produced each desired-state
-- revision, so that the operator's apply and reconcile of that revision continue the
-- write's trace. NULL when traces were off or the write had no trace.
ALTER TABLE desired_changes ADD COLUMN trace_parent TEXT;
