"""/stats: what the bot did on this server lately (its admins only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs.ui.context import ADMINS_ONLY
from data.stats import GuildStats

if TYPE_CHECKING:
    from bot.client.app import SDBot

MESSAGE_LIMIT = 2000


def seconds_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}s"


def stats_text(stats: GuildStats, days: int) -> str:
    total = sum(day.images for day in stats.days)
    lines = [f"**Last {days} day(s)**: {total} image(s) from {stats.jobs} job(s)."]
    if stats.days:
        lines.append("Per day: " + ", ".join(f"{d.day} {d.images}" for d in stats.days) + ".")
    if stats.top_members:
        top = ", ".join(f"<@{m.user_id}> {m.images}" for m in stats.top_members)
        lines.append(f"Top members: {top}.")
    lines.append(
        f"Average wait {seconds_text(stats.average_wait)}, "
        f"average run {seconds_text(stats.average_run)}."
    )
    lines.append(
        f"Failed {stats.failed}, cancelled {stats.cancelled}, "
        f"flagged by the safety filter {stats.flagged} image(s)."
    )
    return "\n".join(lines)


class Stats(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="stats", description="What the bot did here lately (admins)")
    @app_commands.describe(days="How many days back")
    @app_commands.guild_only()
    async def stats(
        self, interaction: discord.Interaction, days: app_commands.Range[int, 1, 90] = 7
    ) -> None:
        guild_id = interaction.guild_id
        if guild_id is None or not self.bot.is_admin(interaction.user):
            await interaction.response.send_message(
                ADMINS_ONLY.replace("change this server's settings", "see this server's stats"),
                ephemeral=True,
            )
            return
        stats = await self.bot.community.stats(guild_id, days)
        await interaction.response.send_message(
            stats_text(stats, days)[:MESSAGE_LIMIT],
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Stats(bot))
