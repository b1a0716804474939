"""/prefer: a member's own defaults and named presets (Midjourney's `/prefer option set`).

Everything here is private to the member (ephemeral) and works in DMs too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.community.prefs import MAX_PRESETS, PreferenceName, Preferences
from cogs.ui.options import SAMPLER_CHOICES, model_autocomplete, preset_autocomplete
from engine.api.params import MAX_STEPS

if TYPE_CHECKING:
    from bot.client.app import SDBot


def preferences_text(preferences: Preferences) -> str:
    if preferences.empty:
        return "nothing set"
    parts = []
    if preferences.model:
        parts.append(f"model {preferences.model}")
    if preferences.sampler:
        parts.append(f"sampler {preferences.sampler}")
    if preferences.steps:
        parts.append(f"{preferences.steps} steps")
    if preferences.size:
        parts.append(f"size {preferences.size[0]}x{preferences.size[1]}")
    if preferences.negative:
        parts.append(f"negative “{preferences.negative[:200]}”")
    if preferences.dm:
        parts.append("results by DM")
    return ", ".join(parts)


class Prefer(commands.Cog):
    prefer_group = app_commands.Group(
        name="prefer", description="Your own defaults and presets for /dream"
    )
    preset_group = app_commands.Group(
        name="preset", description="Named sets of options you can recall", parent=prefer_group
    )

    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def _tell(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(
            text[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @prefer_group.command(name="show", description="Your defaults and presets")
    async def show(self, interaction: discord.Interaction) -> None:
        prefs = self.bot.prefs
        user_id = interaction.user.id
        lines = [f"Your defaults: {preferences_text(await prefs.defaults(user_id))}."]
        for name in await prefs.names(user_id):
            lines.append(f"Preset `{name}`: {preferences_text(await prefs.preset(user_id, name))}.")
        lines.append("What you type in a command always wins.")
        await self._tell(interaction, "\n".join(lines))

    @prefer_group.command(name="set", description="Set one of your defaults")
    @app_commands.describe(
        option="Which default", value="model name, sampler, steps, WIDTHxHEIGHT, text, or yes/no"
    )
    async def set_option(
        self,
        interaction: discord.Interaction,
        option: PreferenceName,
        value: app_commands.Range[str, 1, 2000],
    ) -> None:
        changed = await self.bot.prefs.set(interaction.user.id, option, value)
        await self._tell(interaction, f"Saved. Your defaults: {preferences_text(changed)}.")

    @prefer_group.command(name="clear", description="Forget one of your defaults, or all")
    async def clear(
        self, interaction: discord.Interaction, option: PreferenceName | None = None
    ) -> None:
        changed = await self.bot.prefs.clear(interaction.user.id, option)
        await self._tell(interaction, f"Cleared. Your defaults: {preferences_text(changed)}.")

    @preset_group.command(name="save", description="Save a preset: your defaults plus these")
    @app_commands.describe(name="Letters, digits, - and _ (at most 32)")
    @app_commands.choices(sampler=SAMPLER_CHOICES)
    @app_commands.autocomplete(model=model_autocomplete)
    async def preset_save(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 100],
        model: str | None = None,
        sampler: str | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        size: str | None = None,
        negative: app_commands.Range[str, 1, 2000] | None = None,
        dm: bool | None = None,
    ) -> None:
        prefs = self.bot.prefs
        given: dict[PreferenceName, str | None] = {
            "model": model,
            "sampler": sampler,
            "steps": str(steps) if steps is not None else None,
            "size": size,
            "negative": negative,
            "dm": ("yes" if dm else "no") if dm is not None else None,
        }
        chosen = await prefs.defaults(interaction.user.id)
        for option, value in given.items():
            if value is not None:
                chosen = Preferences.from_dict(
                    {**chosen.to_dict(), option: prefs.parse(option, value)}
                )
        saved = await prefs.save_preset(interaction.user.id, name, chosen)
        await self._tell(
            interaction,
            f"Saved preset `{saved}`: {preferences_text(chosen)}. Use it with "
            f"`/dream preset:{saved}` (at most {MAX_PRESETS} presets).",
        )

    @preset_group.command(name="use", description="Make a preset your defaults")
    @app_commands.autocomplete(name=preset_autocomplete)
    async def preset_use(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 100]
    ) -> None:
        preset = await self.bot.prefs.use_preset(interaction.user.id, name)
        await self._tell(interaction, f"Your defaults are now: {preferences_text(preset)}.")

    @preset_group.command(name="delete", description="Delete one of your presets")
    @app_commands.autocomplete(name=preset_autocomplete)
    async def preset_delete(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 100]
    ) -> None:
        deleted = await self.bot.prefs.delete_preset(interaction.user.id, name)
        await self._tell(interaction, f"Deleted preset `{deleted}`.")


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Prefer(bot))
