"""/loras: what a member trained, and what others shared in this server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs.contracts import JobRefused
from cogs.ui.options import MAX_CHOICES
from engine.api.params import InvalidParams

if TYPE_CHECKING:
    from bot.client.app import SDBot


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

    @loras_group.command(name="list", description="Yours, and those shared in this server")
    async def list_loras(self, interaction: discord.Interaction) -> None:
        usable = await self.bot.library.usable(interaction.user.id, interaction.guild_id)
        if not usable:
            await interaction.response.send_message(
                "Nothing yet: `/train` teaches the model a face, a pet or a style.", ephemeral=True
            )
            return
        lines = []
        for lora in usable:
            mine = lora.owner_id == interaction.user.id
            whose = ("shared" if lora.shared else "private") if mine else f"by <@{lora.owner_id}>"
            use = f"<lora:{lora.name}:0.8>" if lora.method == "lora" else lora.token
            lines.append(f"**{lora.name}** · {lora.method} · `{use}` · {lora.base_model} · {whose}")
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)

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

    async def _answer(self, interaction: discord.Interaction, work: object) -> None:
        try:
            text = await work  # type: ignore[misc]
        except (JobRefused, InvalidParams) as refused:
            text = f"❌ {refused}"
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Loras(bot))
