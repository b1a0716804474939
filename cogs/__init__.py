"""discord.py cogs: one extension per command family. They validate, defer, call a service,
render. What several share lives in `cogs.ui`; no extension imports another."""
