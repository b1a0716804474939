"""The modals behind a result's Edit, Custom zoom, Vary (Region) and Change by words buttons:
what to change, then the job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.client.replies import first_delivery
from bot.generation.actions import MAX_ZOOM, MIN_ZOOM, Action
from bot.generation.regions import RegionRequest
from engine.api.params import GenerationParams
from engine.api.regions import MAX_MASK_PROMPT

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


class InstructModal(discord.ui.Modal, title="Change by words"):
    """/edit from a result: the instruction for its picture."""

    def __init__(self, cog: Results, job_id: int, params: GenerationParams) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.job_id = job_id
        self.instruction: discord.ui.TextInput[InstructModal] = discord.ui.TextInput(
            label="What to change",
            custom_id="instruction",
            placeholder="make it winter, turn the cat into a tiger",
            style=discord.TextStyle.paragraph,
            max_length=MAX_MODAL_TEXT,
        )
        self.add_item(self.instruction)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.run_action(
            interaction, Action.INSTRUCT, self.job_id, image=0, prompt=self.instruction.value
        )


class RegionModal(discord.ui.Modal, title="Vary (Region)"):
    """Midjourney's Vary (Region) without a brush: the region in words, a cell of a 3x3 grid,
    or both (the words' region inside the cell), the prompt for it, and whether to see the
    mask before anything is painted or charged."""

    def __init__(self, cog: Results, job_id: int, params: GenerationParams) -> None:
        super().__init__(timeout=15 * 60)
        self.cog = cog
        self.job_id = job_id
        self.words: discord.ui.TextInput[RegionModal] = discord.ui.TextInput(
            label="What to change, in words",
            custom_id="region",
            placeholder="the sky, her hat",
            max_length=MAX_MASK_PROMPT,
            required=False,
        )
        self.cell: discord.ui.TextInput[RegionModal] = discord.ui.TextInput(
            label="Or where, on a 3x3 grid (optional)",
            custom_id="cell",
            placeholder="top-left, top, center, bottom-right... or 1-9",
            max_length=20,
            required=False,
        )
        self.prompt: discord.ui.TextInput[RegionModal] = discord.ui.TextInput(
            label="Prompt for it",
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=params.prompt[:MAX_MODAL_TEXT],
            max_length=MAX_MODAL_TEXT,
        )
        self.preview: discord.ui.Checkbox[RegionModal] = discord.ui.Checkbox(custom_id="preview")
        self.add_item(self.words)
        self.add_item(self.cell)
        self.add_item(self.prompt)
        self.add_item(
            discord.ui.Label(
                text="Show me the mask first",
                description="Then Run paints it; nothing is charged before.",
                component=self.preview,
            )
        )

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        request = RegionRequest(
            self.words.value, self.cell.value, self.prompt.value, bool(self.preview.value)
        )
        await self.cog.run_action(
            interaction,
            Action.REGION_PREVIEW if request.preview else Action.REGION,
            self.job_id,
            image=0,
            region=request,
        )
