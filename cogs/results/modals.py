"""The modals behind a result's Edit and Custom zoom buttons: what to change, then the job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.client.replies import first_delivery
from bot.generation.actions import MAX_ZOOM, MIN_ZOOM, Action
from engine.api.params import GenerationParams

if TYPE_CHECKING:
    from cogs.results.clicks import Results

# Discord: text inputs hold at most 4000 characters.
MAX_MODAL_TEXT = 4000


class EditModal(discord.ui.Modal, title="Edit and run again"):
    def __init__(self, cog: Results, job_id: int, params: GenerationParams) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.job_id = job_id
        self.prompt: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Prompt",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=params.prompt[:MAX_MODAL_TEXT],
            max_length=MAX_MODAL_TEXT,
        )
        self.negative: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label="Negative prompt",
            custom_id="negative",
            style=discord.TextStyle.paragraph,
            default=params.negative[:MAX_MODAL_TEXT],
            max_length=MAX_MODAL_TEXT,
            required=False,
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.run_action(
            interaction,
            Action.EDIT,
            self.job_id,
            prompt=self.prompt.value,
            negative=self.negative.value,
        )


class ZoomModal(discord.ui.Modal, title="Custom zoom"):
    """Midjourney's Custom Zoom: how far out, and the prompt for what the border shows."""

    def __init__(self, cog: Results, job_id: int, params: GenerationParams) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.job_id = job_id
        self.factor: discord.ui.TextInput[ZoomModal] = discord.ui.TextInput(
            label=f"Zoom out by ({MIN_ZOOM:g} to {MAX_ZOOM:g})",
            custom_id="zoom",
            default="2",
            max_length=8,
        )
        self.prompt: discord.ui.TextInput[ZoomModal] = discord.ui.TextInput(
            label="Prompt",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=params.prompt[:MAX_MODAL_TEXT],
            max_length=MAX_MODAL_TEXT,
        )
        self.add_item(self.factor)
        self.add_item(self.prompt)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.run_action(
            interaction,
            Action.ZOOM_CUSTOM,
            self.job_id,
            image=0,
            prompt=self.prompt.value,
            zoom=self.factor.value,
        )
