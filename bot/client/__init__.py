"""The discord.py side: the only modules under bot/ that import discord."""
