"""/queue and /cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs.contracts import JobRefused, QueueEntry
from bot.jobs.waits import PAUSED
from cogs.ui.rendering import describe
from engine.api.params import GenerationParams

if TYPE_CHECKING:
    from bot.client.app import SDBot

SHOWN_OTHERS = 5


def wait_text(seconds: float | None) -> str:
    if seconds is None:
        return "wait unknown until a job has run"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min"


def entry_line(entry: QueueEntry, mine: bool) -> str:
    wait = "paused" if entry.paused else wait_text(entry.wait_seconds)
    where = "running" if entry.position == 0 else f"#{entry.position}, {wait}"
    if not mine:
        # Anyone's /queue lists it, from any server: neither who asked nor what they named
        # their training is theirs to read; the size and model are what a wait depends on.
        what = "a training" if entry.training else describe_shape(entry.params)
        return f"`job {entry.job_id}` {where}: {what}"
    what = entry.params.prompt if entry.training else describe(entry.params)
    return f"`job {entry.job_id}` {where}: {what}"


def describe_shape(params: GenerationParams) -> str:
    return f"{params.count}× {params.size}, {params.steps} steps, {params.model}"


class Queue(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="queue", description="Your jobs, their places in line, and what is running"
    )
    async def queue(self, interaction: discord.Interaction) -> None:
        entries = self.bot.scheduler.queue_entries()
        mine = [e for e in entries if e.user_id == interaction.user.id]
        running = [e for e in entries if e.position == 0 and e.user_id != interaction.user.id]
        lines = [entry_line(e, mine=True) for e in mine] or ["You have no jobs waiting."]
        if running:
            lines.append("Running now:")
            lines += [entry_line(e, mine=False) for e in running[:SHOWN_OTHERS]]
        waiting = sum(1 for e in entries if e.position > 0)
        lines.append(f"{waiting} job(s) waiting in all.")
        if any(entry.paused for entry in entries):
            lines.append(PAUSED)
        await interaction.response.send_message(
            "\n".join(lines), ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @app_commands.command(name="cancel", description="Cancel your queued or running job (refunded)")
    @app_commands.describe(job="The job number; your most recent one if left out")
    async def cancel(
        self, interaction: discord.Interaction, job: app_commands.Range[int, 1] | None = None
    ) -> None:
        scheduler = self.bot.scheduler
        if job is None:
            mine = [e for e in scheduler.queue_entries() if e.user_id == interaction.user.id]
            if not mine:
                await interaction.response.send_message(
                    "You have no job to cancel.", ephemeral=True
                )
                return
            job = max(e.job_id for e in mine)
        try:
            result = await scheduler.cancel(
                job,
                by_user=interaction.user.id,
                is_admin=self.bot.is_admin(interaction.user),
                guild_id=interaction.guild_id,
                is_owner=self.bot.is_owner_id(interaction.user.id),
            )
        except JobRefused as refused:
            await interaction.response.send_message(str(refused), ephemeral=True)
            return
        refund = f" {result.refunded} credit(s) refunded." if result.refunded else ""
        await interaction.response.send_message(result.message + refund, ephemeral=True)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Queue(bot))
