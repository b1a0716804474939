-- Promises made to members that must outlive a crash (issue 20).
-- A member cancelled the job while it ran: start-up refunds it instead of running it again.
ALTER TABLE jobs ADD COLUMN cancel_requested_at REAL;
-- The result was posted (or could be posted nowhere): start-up posts the succeeded jobs
-- that have none, as an outbox would.
ALTER TABLE jobs ADD COLUMN delivered_at REAL;
-- Results finished before this version were posted by the version that made them.
UPDATE jobs SET delivered_at = COALESCE(finished_at, created_at) WHERE status = 'succeeded';
CREATE INDEX jobs_undelivered ON jobs (id) WHERE status = 'succeeded' AND delivered_at IS NULL;
