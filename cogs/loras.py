"""/loras: what a member trained, what others shared in this server, and the owner's
LoRA folder."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs.contracts import JobRefused
from bot.training.loras import FOLDER_OWNER
from bot.training.outcomes import a1111_name
from cogs.ui.options import MAX_CHOICES
from engine.api.lora_files import copy_readers
from engine.api.params import InvalidParams

if TYPE_CHECKING:
    from bot.client.app import SDBot
    from data.loras import Lora

MESSAGE_LIMIT = 2000


async def own_lora_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    bot: SDBot = interaction.client  # type: ignore[assignment]
    usable = await bot.library.usable(interaction.user.id, interaction.guild_id)
    typed = current.strip().lower()
    return [
        app_commands.Choice(name=lora.name, value=lora.name)
        for lora in usable
        if lora.owner_id == interaction.user.id and typed in lora.name
    ][:MAX_CHOICES]


class Loras(commands.Cog):
    loras_group = app_commands.Group(
        name="loras", description="Your trained LoRAs and embeddings, and those shared here"
    )

    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    @loras_group.command(name="list", description="Yours, those shared here, the LoRA folder's")
    async def list_loras(self, interaction: discord.Interaction) -> None:
        library = self.bot.library
        usable = await library.usable(interaction.user.id, interaction.guild_id)
        broken = [entry for entry in await library.folder_files() if not entry.usable]
        if not usable and not broken:
            await interaction.response.send_message(
                "Nothing yet: `/train` teaches the model a face, a pet or a style.", ephemeral=True
            )
            return
        lines = [_line(lora, interaction.user.id) for lora in usable]
        lines += [f"~~{entry.name}~~ · {entry.problem}" for entry in broken]
        await interaction.response.send_message(_fitted(lines), ephemeral=True)

    @loras_group.command(name="rename", description="Rename one of yours")
    @app_commands.autocomplete(name=own_lora_autocomplete)
    async def rename(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 64],
        new_name: app_commands.Range[str, 1, 64],
    ) -> None:
        await self._answer(interaction, self._rename(interaction.user.id, name, new_name))

    async def _rename(self, user_id: int, name: str, new_name: str) -> str:
        lora = await self.bot.library.rename(user_id, name, new_name)
        return f"Renamed to **{lora.name}**. Prompts use `<lora:{lora.name}:0.8>` now."

    @loras_group.command(name="delete", description="Delete one of yours, file and all")
    @app_commands.autocomplete(name=own_lora_autocomplete)
    async def delete(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 64]
    ) -> None:
        await self._answer(interaction, self._delete(interaction.user.id, name))

    async def _delete(self, user_id: int, name: str) -> str:
        lora = await self.bot.library.delete(user_id, name)
        return f"Deleted **{lora.name}**."

    @loras_group.command(name="share", description="Let this server use one of yours, or not")
    @app_commands.autocomplete(name=own_lora_autocomplete)
    @app_commands.guild_only()
    async def share(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 64],
        shared: bool = True,
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None  # guild_only
        await self._answer(interaction, self._share(interaction.user.id, name, shared, guild_id))

    async def _share(self, user_id: int, name: str, shared: bool, guild_id: int) -> str:
        lora = await self.bot.library.share(user_id, name, shared, guild_id)
        if shared:
            return f"**{lora.name}** is shared: members of this server can use and list it."
        return f"**{lora.name}** is private again."

    @loras_group.command(name="download", description="One of yours, for A1111, Forge or ComfyUI")
    @app_commands.autocomplete(name=own_lora_autocomplete)
    async def download(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 64]
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            lora, path = await self.bot.library.a1111_file(interaction.user.id, name)
        except (JobRefused, InvalidParams) as refused:
            await interaction.followup.send(f"❌ {refused}", ephemeral=True)
            return
        file_name = a1111_name(lora)
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        limit = interaction.filesize_limit  # a boosted server's is larger than a DM's
        if size > limit:
            await interaction.followup.send(
                f"❌ `{file_name}` is {size / 1024**2:.1f} MB, over Discord's "
                f"{limit / 1024**2:.0f} MB upload limit here; the bot's owner can give it to you.",
                ephemeral=True,
            )
            return
        data = await asyncio.to_thread(path.read_bytes)
        await interaction.followup.send(
            f"`{file_name}` for {copy_readers(lora.metadata)}.",
            file=discord.File(io.BytesIO(data), filename=file_name),
            ephemeral=True,
        )

    async def _answer(self, interaction: discord.Interaction, work: object) -> None:
        try:
            text = await work  # type: ignore[misc]
        except (JobRefused, InvalidParams) as refused:
            text = f"❌ {refused}"
        await interaction.response.send_message(text, ephemeral=True)


def _line(lora: Lora, user_id: int) -> str:
    use = f"<lora:{lora.name}:0.8>" if lora.method == "lora" else lora.token
    if lora.owner_id == FOLDER_OWNER:
        return f"**{lora.name}** · LoRA folder · `{use}` · {lora.base_model}"
    mine = lora.owner_id == user_id
    whose = ("shared" if lora.shared else "private") if mine else f"by <@{lora.owner_id}>"
    return f"**{lora.name}** · {lora.method} · `{use}` · {lora.base_model} · {whose}"


def _fitted(lines: list[str]) -> str:
    """As many lines as one message holds (Discord: 2000 characters), and how many more."""
    shown: list[str] = []
    for index, line in enumerate(lines):
        more = f"\n… and {len(lines) - index} more"
        if sum(len(x) + 1 for x in shown) + len(line) + len(more) > MESSAGE_LIMIT:
            return "\n".join(shown) + more
        shown.append(line)
    return "\n".join(shown)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Loras(bot))
