"""/models: the models members may use here, with their default sizes, their family's
defaults and what it cannot do (FLUX has no negative prompt), and notes; and, for admins,
/workers: the GPUs serving the bot."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from engine.api.families import lacks, summary
from engine.api.port import WorkerState
from engine.api.specs import ModelSpec

if TYPE_CHECKING:
    from bot.client.app import SDBot

MESSAGE_LIMIT = 2000
NO_WORKER = "No GPU worker is running: start one with `python -m bot worker` (README)."
ADMINS_ONLY = "Only the bot's admins can see its GPUs."


class Models(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @app_commands.command(name="models", description="The models you can use here")
    async def models(self, interaction: discord.Interaction) -> None:
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        lines = []
        for name, spec in sorted(self.bot.models.items()):
            if not policy.model_allowed(name):
                continue
            default = " (default)" if name == policy.default_model else ""
            lines.append(f"**{name}**{default}, {model_line(spec)}")
        text = "\n".join(lines) or "No model is allowed on this server."
        await interaction.response.send_message(text[:MESSAGE_LIMIT], ephemeral=True)

    @app_commands.command(name="workers", description="The GPUs serving this bot (admins)")
    async def workers(self, interaction: discord.Interaction) -> None:
        if not self.bot.is_admin(interaction.user):
            await interaction.response.send_message(ADMINS_ONLY, ephemeral=True)
            return
        lines = [worker_line(worker) for worker in await self.bot.engine.workers()]
        text = "\n".join(lines) or NO_WORKER
        await interaction.response.send_message(text[:MESSAGE_LIMIT], ephemeral=True)


def model_line(spec: ModelSpec) -> str:
    """`1024x1024 (FLUX.1 dev: 28 steps, distilled CFG 3.5, Euler only; no negative prompt,
    ...): the owner's note`. SD 1.x, 2.x and XL take every option at A1111's defaults, so
    only a family that differs says how."""
    width, height = spec.size_default()
    row = spec.family_row()
    own_defaults = spec.default_steps is not None or spec.default_cfg is not None
    family = ""
    if lacks(row) or row.samplers or own_defaults:
        family = f" ({summary(row, spec.steps_default(), spec.cfg_default())})"
    note = f": {spec.note}" if spec.note else ""
    return f"{width}x{height}{family}{note}"


def worker_line(worker: WorkerState) -> str:
    state = "running a batch" if worker.busy else "idle"
    speed = (
        f", {worker.seconds_per_batch:.1f} s per batch"
        if worker.seconds_per_batch is not None
        else ""
    )
    seen = f", seen {worker.seen_seconds_ago:.0f} s ago" if worker.seen_seconds_ago else ""
    models = ", ".join(worker.models) or "no model"
    return f"**{worker.name}**: {state}; {models}; {worker.served} served{speed}{seen}"


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Models(bot))
