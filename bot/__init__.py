"""The bot: entry point, settings, the discord.py client and the service layer."""
