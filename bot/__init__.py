"""The bot: entry point, settings, and the rooms of the asyncio side.

- `bot.client`: the only modules that import discord (the client, its tree, replies, start-up).
- `bot.jobs`: the job lifecycle that knows no job kind (scheduler, queue, delivery, retention).
- `bot.generation`: image jobs (options, prices, attachments, what result buttons do).
- `bot.training`: /train jobs and the LoRAs members own.
- `bot.community`: a server's rules, credits, members' defaults, the safety review.
- `bot.cli`: the console (`python -m bot ...`), `doctor` and the ledger's books.
- `bot.fleet`: GPU workers on other machines, over Redis Streams.
"""
