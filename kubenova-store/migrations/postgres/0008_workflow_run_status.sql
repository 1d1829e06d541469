-- A workflow run's status as a column (the document keeps it too): advancing runs on an
-- agent's status report reads only the app's runs still `requested` or `running` (the
-- partial index), and retention deletes an app's oldest finished runs without reading
-- the documents.
ALTER TABLE workflow_runs ADD COLUMN status TEXT NOT NULL DEFAULT 'requested';
UPDATE workflow_runs SET status = doc ->> 'status' WHERE doc ->> 'status' IS NOT NULL;
CREATE INDEX workflow_runs_active ON workflow_runs (app_id, id)
    WHERE status IN ('requested', 'running');
