"""A server's rules, credits, members' defaults and the safety review."""
