-- Results delivered to the requester's DMs (the `dm` preference, or a click in a DM): only
-- they may see such a result or use its buttons, whatever its server's button rule.
ALTER TABLE jobs ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
