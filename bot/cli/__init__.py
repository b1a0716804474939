"""The console: `python -m bot <command>`, `doctor`, and the books of the ledger."""
