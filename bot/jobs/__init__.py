"""Jobs whatever their kind: accepted, queued fairly, dispatched, recovered, ended once."""
