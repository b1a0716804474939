"""discord.py cogs: one per command family. They validate, defer, call a service, render."""
