"""What a click on a result's buttons does (the buttons themselves are in cogs/ui/buttons.py):
show its parameters, delete it, open a modal, or start the job that the button names."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.generation.actions import Action, Presser
from bot.generation.regions import NOT_A_PREVIEW, RegionRequest
from bot.jobs.contracts import JobRefused, Ticket
from cogs.results.modals import EditModal, InstructModal, RegionModal, ZoomModal
from cogs.ui.buttons import RESULTS_COG, ResultButton
from cogs.ui.context import presser_of
from cogs.ui.infotext import infotext_embed
from cogs.ui.presenter import ReplyPresenter
from cogs.ui.pressing import start_for_presser
from engine.api.edits import NOT_SET_UP, edit_model
from engine.api.params import GenerationParams
from engine.api.samplers import AUTOMATIC

if TYPE_CHECKING:
    from bot.client.app import SDBot


def reproduce_command(params: GenerationParams) -> str:
    """The /dream line that makes these images again (text to image only)."""
    options = [
        f"prompt:{params.prompt}",
        f"negative:{params.negative}" if params.negative else "",
        f"seed:{params.seed}",
        f"steps:{params.steps}",
        f"cfg:{params.cfg:g}",
        f"size:{params.size}",
        f"sampler:{params.sampler}",
        f"scheduler:{params.schedule}" if params.schedule != AUTOMATIC else "",
        f"count:{params.count}",
        f"model:{params.model}",
        f"clip_skip:{params.clip_skip}" if params.clip_skip != 1 else "",
    ]
    if params.has_variation:
        options += [
            f"variation_seed:{params.variation_seed}",
            f"variation_strength:{params.variation_strength:g}",
        ]
    return "/dream " + " ".join(option for option in options if option)


def action_label(action: Action, image: int | None) -> str:
    """ "Upscale of image 2", "Reroll": how the reply names what was asked."""
    # Reframes and region edits are offered under one picture only.
    single = (Action.REGION, Action.REGION_PREVIEW, Action.INSTRUCT)
    if action.reframes or action in single or image is None:
        return action.label
    return f"{action.label} of image {image + 1}"


class Results(commands.Cog, name=RESULTS_COG):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ResultButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ResultButton)

    def _presser(self, interaction: discord.Interaction) -> Presser:
        return presser_of(
            self.bot,
            interaction.user,
            interaction.guild_id,
            interaction.channel_id,
            interaction.channel,
        )

    async def clicked(
        self, interaction: discord.Interaction, name: str, job_id: int, image: int | None
    ) -> None:
        if name == "info":
            await self.show_info(interaction, job_id)
        elif name == "delete":
            await self.delete_clicked(interaction, job_id)
        elif name == "edit":
            await self.edit_clicked(interaction, job_id)
        elif name == Action.ZOOM_CUSTOM:
            await self.edit_clicked(interaction, job_id, modal=ZoomModal)
        elif name == Action.REGION:
            await self.region_clicked(interaction, job_id)
        elif name == Action.INSTRUCT:
            await self.instruct_clicked(interaction, job_id)
        elif name == "regioncancel":
            await self.delete_clicked(interaction, job_id, preview=True)
        else:
            await self.run_action(interaction, Action(name), job_id, image=image)

    async def run_action(
        self,
        interaction: discord.Interaction,
        action: Action,
        job_id: int,
        *,
        image: int | None = None,
        prompt: str | None = None,
        negative: str | None = None,
        zoom: str | None = None,
        region: RegionRequest | None = None,
    ) -> None:
        label = action_label(action, image)

        async def start(presser: Presser, observer: ReplyPresenter) -> Ticket:
            return await self.bot.actions.start(
                action,
                job_id,
                presser,
                observer,
                image=image,
                prompt=prompt,
                negative=negative,
                zoom=zoom,
                region=region,
                interaction_id=interaction.id,
            )

        await start_for_presser(self.bot, interaction, label, start)

    async def show_info(self, interaction: discord.Interaction, job_id: int) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            job = await self.bot.actions.result(job_id, self._presser(interaction))
            infotexts = await self.bot.actions.infotexts(job)
        except JobRefused as refused:
            await interaction.followup.send(f"❌ {refused}", ephemeral=True)
            return
        params = GenerationParams.from_dict(job.params)
        embed = infotext_embed(infotexts[0]) if infotexts else discord.Embed(title="Parameters")
        embed.title = f"Job {job.id}"
        if params.has_image_prompts:  # no slash command line carries the pictures
            text = (
                "Its image prompts are pictures no command line carries: Reroll blends them again."
            )
        elif params.mode == "txt2img":
            command = reproduce_command(params)
            text = f"Make it again:\n```\n{command[:1900]}\n```"
        else:
            text = "Drop one of its images into /reproduce or A1111's PNG Info to read it back."
        await interaction.followup.send(text, embed=embed, ephemeral=True)

    async def edit_clicked(
        self,
        interaction: discord.Interaction,
        job_id: int,
        modal: type[EditModal | ZoomModal | RegionModal | InstructModal] = EditModal,
    ) -> None:
        # A modal must be the first response, so the checks come before any deferral.
        try:
            job = await self.bot.actions.result(job_id, self._presser(interaction), use=True)
        except JobRefused as refused:
            await interaction.response.send_message(f"❌ {refused}", ephemeral=True)
            return
        params = GenerationParams.from_dict(job.params)
        await interaction.response.send_modal(modal(self, job_id, params))

    async def region_clicked(self, interaction: discord.Interaction, job_id: int) -> None:
        """Vary (Region): the modal, where the bot has a segmenter (else one sentence)."""
        try:
            self.bot.actions.regions.check_available()
        except JobRefused as refused:
            await interaction.response.send_message(f"❌ {refused}", ephemeral=True)
            return
        await self.edit_clicked(interaction, job_id, modal=RegionModal)

    async def instruct_clicked(self, interaction: discord.Interaction, job_id: int) -> None:
        """Change by words: the modal, where a model can edit (else one sentence)."""
        if edit_model(self.bot.dreams.models) is None:  # an old button, the model since removed
            await interaction.response.send_message(f"❌ {NOT_SET_UP}", ephemeral=True)
            return
        await self.edit_clicked(interaction, job_id, modal=InstructModal)

    async def delete_clicked(
        self, interaction: discord.Interaction, job_id: int, *, preview: bool = False
    ) -> None:
        """Delete a result; with `preview`, Cancel under a mask preview (only one of those)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        presser = self._presser(interaction)
        try:
            if preview:
                job = await self.bot.actions.result(job_id, presser)
                if not GenerationParams.from_dict(job.params).mask_preview:
                    raise JobRefused(NOT_A_PREVIEW)
            await self.bot.actions.delete(job_id, presser)
        except JobRefused as refused:
            await interaction.followup.send(f"❌ {refused}", ephemeral=True)
            return
        if interaction.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await interaction.message.delete()
        done = "Cancelled: nothing was painted or charged." if preview else None
        await interaction.followup.send(done or f"Deleted job {job_id}'s result.", ephemeral=True)
