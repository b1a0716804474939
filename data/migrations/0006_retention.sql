-- Retention (issue 14): set when a finished job's images and the inputs only it used were
-- removed from the disk. The row itself stays: the ledger refers to it, a trained LoRA may
-- name it, and its buttons can say the image expired instead of failing.
ALTER TABLE jobs ADD COLUMN expired_at REAL;
