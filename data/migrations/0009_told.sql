-- `delivered_at` now also marks a failure told to its member (bot/services.py): failures
-- before this version were told by the version that had them.
UPDATE jobs SET delivered_at = COALESCE(finished_at, created_at)
    WHERE status IN ('failed', 'cancelled') AND delivered_at IS NULL;
DROP INDEX jobs_undelivered;
CREATE INDEX jobs_undelivered ON jobs (id)
    WHERE status IN ('succeeded', 'failed', 'cancelled') AND delivered_at IS NULL;
