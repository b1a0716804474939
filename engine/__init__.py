"""The engine: everything that imports torch lives here, and one thread runs it.

Importing this package does no work; `engine.worker.EngineWorker` is started by the bot.
"""
