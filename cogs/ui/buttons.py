"""The buttons under every result. Their custom ids carry only ids; the rest is in the store.

They are `DynamicItem`s registered once with the bot, so a click works after any restart
and never times out; the Results cog (cogs/results/clicks.py) does what a click asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord.ext import commands

from bot.client.replies import first_delivery
from bot.jobs.contracts import JobOutcome
from engine.api.edits import FROM_NOISE_MODES, edit_model

if TYPE_CHECKING:
    from bot.client.app import SDBot

RESULTS_COG = "Results"
# Job ids are SQLite rowids: a custom id naming a larger number (anyone can craft one) names
# no job, and must not reach the store, where it would overflow.
MAX_JOB_ID = 2**63 - 1
NO_SUCH_BUTTON = "That button refers to nothing I know; it may be from an old message."
# Discord: a custom_id is 1-100 characters; ours are at most ~40.
TEMPLATE = (
    r"sd:(?P<name>reroll|vary|strong|upscale|edit|info|delete"
    r"|zoom2|zoom15|zoom|panleft|panright|panup|pandown|square|region|regionrun|regioncancel"
    r"|instruct)"
    r":(?P<job>[0-9]{1,20})"
    r"(?::(?P<image>[0-9]{1,2}))?"
)


class ClickHandler(Protocol):
    async def clicked(
        self, interaction: discord.Interaction, name: str, job_id: int, image: int | None
    ) -> None: ...


class ResultButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    def __init__(
        self,
        name: str,
        job_id: int,
        image: int | None = None,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
    ) -> None:
        custom_id = f"sd:{name}:{job_id}" + (f":{image}" if image is not None else "")
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=label, emoji=emoji, style=style, custom_id=custom_id, row=row
        )
        super().__init__(button)
        self.name = name
        self.job_id = job_id
        self.image = image

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: Any,
    ) -> ResultButton:
        image = match["image"]
        # An id out of range becomes 0, which no job has: the callback answers it.
        return cls(match["name"], job_id_of(match["job"]), int(image) if image else None)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        if self.job_id == 0:
            await interaction.response.send_message(f"❌ {NO_SUCH_BUTTON}", ephemeral=True)
            return
        bot: commands.Bot = interaction.client  # type: ignore[assignment]
        handler: ClickHandler | None = bot.get_cog(RESULTS_COG)  # type: ignore[assignment]
        if handler is None:  # the cog is being reloaded
            await interaction.response.send_message(
                "The bot is restarting its buttons; try again in a moment.", ephemeral=True
            )
            return
        await handler.clicked(interaction, self.name, self.job_id, self.image)


def job_id_of(digits: str) -> int:
    """A job id from a custom id's ASCII digits; 0 (no job's) when past SQLite's range."""
    value = int(digits)
    return value if 0 < value <= MAX_JOB_ID else 0


def result_view(
    outcome: JobOutcome,
    can_upscale: Callable[[int, int], bool],
    regions: bool = False,
    edits: bool = False,
) -> discord.ui.View:
    """U1..Un, V1..Vn and strong variations, then reroll, info, edit and delete.

    One image gets Midjourney's words on a single row (with Vary (Region) where `regions`:
    the bot has a segmenter) and Change by words (where `edits`: a model can edit); a grid
    gets one row per kind. A mask preview gets Run and
    Cancel alone.
    """
    job_id = outcome.job.id
    if outcome.params.mask_preview:
        return preview_view(job_id)
    if outcome.params.mode == "interpolate":
        return animation_view(job_id)
    view = discord.ui.View(timeout=None)
    images = outcome.images
    single = len(images) == 1
    for idx, image in enumerate(images):
        if can_upscale(image.width, image.height):
            label = "Upscale" if single else f"U{idx + 1}"
            view.add_item(ResultButton("upscale", job_id, idx, label=label, row=0))
    # Starting noise is the pipeline's own outside text to image and edits, so a variation
    # seed (a blend of two noises) means nothing there: those get only strong variations.
    subtle = outcome.params.mode in FROM_NOISE_MODES
    if subtle:
        for idx in range(len(images)):
            label = "Vary (subtle)" if single else f"V{idx + 1}"
            view.add_item(ResultButton("vary", job_id, idx, label=label, row=0 if single else 1))
    strong_row = 0 if single else (2 if subtle else 1)
    for idx in range(len(images)):
        label = "Vary (strong)" if single else f"V{idx + 1} strong"
        view.add_item(ResultButton("strong", job_id, idx, label=label, row=strong_row))
    if single and regions:
        view.add_item(ResultButton("region", job_id, 0, label="Vary (Region)", row=0))
    if single and edits:
        view.add_item(ResultButton("instruct", job_id, 0, label="Change by words", row=0))
    tools = 1 if single else strong_row + 1
    view.add_item(ResultButton("reroll", job_id, label="Reroll", emoji="🔄", row=tools))
    view.add_item(ResultButton("info", job_id, label="Info", emoji="ℹ️", row=tools))
    view.add_item(ResultButton("edit", job_id, label="Edit", emoji="✏️", row=tools))
    view.add_item(
        ResultButton(
            "delete",
            job_id,
            label="Delete",
            emoji="🗑️",
            style=discord.ButtonStyle.danger,
            row=tools,
        )
    )
    if single:  # Midjourney's reframing, under one picture as under its upscales
        add_reframes(view, job_id, images[0].width != images[0].height, first_row=tools + 1)
    return view


def add_reframes(view: discord.ui.View, job_id: int, square_too: bool, first_row: int) -> None:
    """Zoom out 2x, 1.5x and by a factor the member types (and Make square for a picture
    that is not), then the pans."""
    zooms = [("zoom2", "Zoom out 2x"), ("zoom15", "Zoom out 1.5x"), ("zoom", "Custom zoom")]
    if square_too:
        zooms.append(("square", "Make square"))
    for name, label in zooms:
        view.add_item(ResultButton(name, job_id, 0, label=label, emoji="🔍", row=first_row))
    for name, emoji in (("panleft", "⬅️"), ("panright", "➡️"), ("panup", "⬆️"), ("pandown", "⬇️")):
        view.add_item(ResultButton(name, job_id, 0, emoji=emoji, row=first_row + 1))


def animation_view(job_id: int) -> discord.ui.View:
    """Under an interpolation: Reroll (new seeds), Info and Delete. Upscales, variations and
    reframes work on one picture, which an animation is not; Edit's form has one prompt."""
    view = discord.ui.View(timeout=None)
    view.add_item(ResultButton("reroll", job_id, label="Reroll", emoji="🔄"))
    view.add_item(ResultButton("info", job_id, label="Info", emoji="ℹ️"))
    delete = ResultButton(
        "delete", job_id, label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger
    )
    view.add_item(delete)
    return view


def preview_view(job_id: int) -> discord.ui.View:
    """Under a mask preview: Run paints the region (charged then), Cancel drops the preview."""
    view = discord.ui.View(timeout=None)
    run = ResultButton(
        "regionrun", job_id, label="Run", emoji="▶️", style=discord.ButtonStyle.success
    )
    view.add_item(run)
    view.add_item(ResultButton("regioncancel", job_id, label="Cancel", emoji="✖️"))
    return view


def view_factory(bot: SDBot) -> Callable[[JobOutcome], discord.ui.View]:
    regions = bool(bot.settings.segmenter)
    edits = edit_model(bot.dreams.models) is not None
    return lambda outcome: result_view(outcome, bot.actions.can_upscale, regions, edits)
