"""/describe: four prompts for a member's picture, each under a button (1-4) that runs
/dream with it for whoever presses (bot/generation/describe.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.client.replies import first_delivery, reply_ephemeral
from bot.generation.results import Presser
from bot.jobs.contracts import JobRefused, Ticket
from cogs.ui.buttons import NO_SUCH_BUTTON, job_id_of
from cogs.ui.context import requester_of
from cogs.ui.presenter import ReplyPresenter
from cogs.ui.pressing import start_for_presser
from cogs.ui.starting import download
from data.descriptions import Description
from engine.api.params import InvalidParams

if TYPE_CHECKING:
    from bot.client.app import SDBot

DESCRIBE_COG = "Describe"
TEMPLATE = r"sd:describe:(?P<id>[0-9]{1,20}):(?P<number>[1-4])"
EMBED_LIMIT = 4096


def prompts_embed(described: Description, user: discord.abc.User) -> discord.Embed:
    """The prompts, numbered as their buttons are; markdown escaped, so `*` or `_` in a
    prompt reads as typed."""
    lines = [
        f"**{number}.** {discord.utils.escape_markdown(prompt)}"
        for number, prompt in enumerate(described.prompts, start=1)
    ]
    embed = discord.Embed(description="\n\n".join(lines)[:EMBED_LIMIT], colour=0x5865F2)
    embed.set_author(name=f"Prompts for {user.display_name}'s picture")
    embed.set_footer(text="Press a number to /dream that prompt.")
    return embed


def prompts_view(described: Description) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for number in range(1, len(described.prompts) + 1):
        view.add_item(DescribeButton(described.id, number))
    return view


class DescribeButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    """Runs one prompt; the custom id carries the stored prompts' id and its number only."""

    def __init__(self, description_id: int, number: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=str(number),
                style=discord.ButtonStyle.secondary,
                custom_id=f"sd:describe:{description_id}:{number}",
            )
        )
        self.description_id = description_id
        self.number = number

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any
    ) -> DescribeButton:
        # An id past SQLite's range becomes 0, which no row has: the callback answers it.
        return cls(job_id_of(match["id"]), int(match["number"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog(DESCRIBE_COG)  # type: ignore[attr-defined]
        if self.description_id == 0 or not isinstance(cog, Describe):
            await interaction.response.send_message(f"❌ {NO_SUCH_BUTTON}", ephemeral=True)
            return
        await cog.pressed(interaction, self.description_id, self.number)


class Describe(commands.Cog, name=DESCRIBE_COG):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(DescribeButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(DescribeButton)

    @app_commands.command(
        name="describe", description="Four prompts for a picture of yours; a button dreams one"
    )
    @app_commands.describe(image="The picture to describe")
    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        descriptions = self.bot.descriptions
        # Refused before anything is downloaded, privately, with no "thinking" message.
        try:
            descriptions.check_available()
            self.bot.images.check_size(image.size, "image")
        except (JobRefused, InvalidParams) as refused:
            await interaction.response.send_message(f"❌ {refused}", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        requester = requester_of(
            interaction.user, interaction.channel, is_admin=self.bot.is_admin(interaction.user)
        )
        try:
            data = await download(image, "image")
            described = await descriptions.describe(
                data,
                user_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                requester=requester,
            )
        except (InvalidParams, JobRefused) as refused:
            await reply_ephemeral(interaction, f"❌ {refused}", fallback_to_channel=True)
            return
        await interaction.edit_original_response(
            embed=prompts_embed(described, interaction.user), view=prompts_view(described)
        )

    async def pressed(
        self, interaction: discord.Interaction, description_id: int, number: int
    ) -> None:
        """/dream with the prompt for the presser, posted as a reply to the prompts."""

        async def start(presser: Presser, observer: ReplyPresenter) -> Ticket:
            return await self.bot.descriptions.dream(
                description_id, number, presser, observer, interaction_id=interaction.id
            )

        label = f"Prompt {number} of /describe"
        await start_for_presser(self.bot, interaction, label, start)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Describe(bot))
