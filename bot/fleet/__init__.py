"""GPU workers on other machines, on Redis Streams: the bot's engine adapter
(`adapter.RedisEngine`), the worker process (`worker`, `python -m bot worker`) and the
messages between them (`protocol`). The bot stays the system of record: rows, the ledger
and the fair queue live in its database; workers only turn batches into images."""
