"""/settings for what members pay and may do: price, topup, cooldown, block, unblock, role,
and the banned words of `/settings words`."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands

from bot.community.guilds import (
    COOLDOWNS,
    MAX_WORDS,
    PRICE_PER_IMAGE,
    TOPUP,
    WORDS,
    WORDS_ACTION,
    SettingRefused,
    WordsAction,
    check_word,
)
from cogs.settings.base import SettingsCog, size_pixels
from cogs.settings.text import role_limits_text
from data.guilds import RoleLimits
from engine.api.params import MAX_COUNT, MAX_STEPS, InvalidParams

Family = Literal["dream", "img2img", "inpaint", "outpaint", "upscale", "edit"]
MAX_COOLDOWN = 24 * 3600
MAX_PRICE = 10_000.0
MAX_TOPUP = 1_000_000
MAX_TOPUP_HOURS = 24 * 365.0
MAX_PRICE_FACTOR = 100.0
MAX_PENDING = 50


class MemberSettings(SettingsCog):
    @SettingsCog.settings_group.command(name="price", description="Credits per standard image here")
    @app_commands.describe(per_image="Credits for a 512x512, 20-step image; jobs scale from it")
    async def price(
        self,
        interaction: discord.Interaction,
        per_image: app_commands.Range[float, 0.0, MAX_PRICE],
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        await self._put(interaction, PRICE_PER_IMAGE, per_image)
        await self._saved(interaction, f"Price: {per_image:g} credits per standard image.")

    @SettingsCog.settings_group.command(
        name="topup", description="The free top-up members get here"
    )
    @app_commands.describe(
        amount="Credits given each time",
        ceiling="No top-up past this balance",
        hours="Hours between top-ups",
    )
    async def topup(
        self,
        interaction: discord.Interaction,
        amount: app_commands.Range[int, 0, MAX_TOPUP],
        ceiling: app_commands.Range[int, 0, MAX_TOPUP],
        hours: app_commands.Range[float, 0.1, MAX_TOPUP_HOURS],
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        await self._put(interaction, TOPUP, {"amount": amount, "ceiling": ceiling, "hours": hours})
        await self._saved(
            interaction, f"Top-up: {amount} credits every {hours:g} h, up to {ceiling}."
        )

    @SettingsCog.settings_group.command(
        name="cooldown", description="Seconds between a member's jobs"
    )
    @app_commands.describe(command="Which kind of job", seconds="0 turns the cooldown off")
    async def cooldown(
        self,
        interaction: discord.Interaction,
        command: Family,
        seconds: app_commands.Range[int, 0, MAX_COOLDOWN],
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        cooldowns = {k: v for k, v in policy.cooldowns.items() if k != command}
        if seconds:
            cooldowns[command] = float(seconds)
        await self._put(interaction, COOLDOWNS, cooldowns)
        await self._saved(interaction, f"Cooldown for {command}: {seconds}s.")

    @SettingsCog.settings_group.command(
        name="block", description="Bar a member from using the bot here"
    )
    async def block(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        reason: app_commands.Range[str, 1, 200] | None = None,
    ) -> None:
        guild_id = await self._admin_guild(interaction)
        if guild_id is None:
            return
        if member.bot or member.id == interaction.user.id or self.bot.is_admin(member):
            raise InvalidParams("Bots, admins and yourself cannot be blocked.")
        if not await self.bot.guild_settings.block(
            guild_id, member.id, reason, by=interaction.user.id
        ):
            raise InvalidParams(f"{member.mention} is already blocked.")
        await self._saved(interaction, f"{member.mention} is blocked from using the bot here.")

    @SettingsCog.settings_group.command(
        name="unblock", description="Let a blocked member use the bot again"
    )
    async def unblock(self, interaction: discord.Interaction, member: discord.Member) -> None:
        guild_id = await self._admin_guild(interaction)
        if guild_id is None:
            return
        if not await self.bot.guild_settings.unblock(guild_id, member.id):
            raise InvalidParams(f"{member.mention} is not blocked.")
        await self._saved(interaction, f"{member.mention} may use the bot here again.")

    @SettingsCog.settings_group.command(
        name="role", description="Higher caps or another price for a role"
    )
    @app_commands.describe(
        steps="Most steps for its members",
        size="Largest size, WIDTHxHEIGHT",
        count="Most images per job",
        pending="Jobs waiting or running at once",
        price_factor="Multiplies prices (0.5: half price)",
        clear="Remove this role's limits",
    )
    async def role(
        self,
        interaction: discord.Interaction,
        role: discord.Role,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        size: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        pending: app_commands.Range[int, 1, MAX_PENDING] | None = None,
        price_factor: app_commands.Range[float, 0.0, MAX_PRICE_FACTOR] | None = None,
        clear: bool = False,
    ) -> None:
        guild_id = await self._admin_guild(interaction)
        if guild_id is None:
            return
        guilds = self.bot.guild_settings
        if clear:
            if not await guilds.remove_role_limits(guild_id, role.id):
                raise InvalidParams(f"{role.mention} has no limits of its own.")
            await self._saved(interaction, f"{role.mention} has the server's limits again.")
            return
        pixels = size_pixels(size) if size is not None else None
        limits = RoleLimits(role.id, steps, pixels, count, pending, price_factor)
        if limits == RoleLimits(role.id):
            raise InvalidParams("Give at least one limit (or clear).")
        await guilds.put_role_limits(guild_id, limits, by=interaction.user.id)
        await self._saved(interaction, f"{role.mention}: {role_limits_text(limits)}.")

    # -- banned words -----------------------------------------------------------------

    @SettingsCog.words_group.command(
        name="add", description="Ban a word, or a pattern, from prompts"
    )
    @app_commands.describe(entry="A word, or a regular expression", regex="Read it as a pattern")
    async def words_add(
        self,
        interaction: discord.Interaction,
        entry: app_commands.Range[str, 1, 200],
        regex: bool = False,
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        try:
            rule = check_word(entry, regex)
        except SettingRefused as refused:
            raise InvalidParams(str(refused)) from None
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        if rule in policy.words:
            raise InvalidParams(f"{rule.shown} is already banned.")
        if len(policy.words) >= MAX_WORDS:
            raise InvalidParams(f"At most {MAX_WORDS} words and patterns can be banned.")
        entries = [*policy.words, rule]
        await self._put(interaction, WORDS, [{"entry": w.entry, "regex": w.regex} for w in entries])
        await self._saved(interaction, f"Banned {rule.shown} ({policy.words_action.value}).")

    @SettingsCog.words_group.command(
        name="remove", description="Allow a banned word or pattern again"
    )
    async def words_remove(
        self, interaction: discord.Interaction, entry: app_commands.Range[str, 1, 200]
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        kept = [w for w in policy.words if w.entry != entry.strip()]
        if len(kept) == len(policy.words):
            raise InvalidParams(f"{entry.strip()!r} is not banned.")
        await self._put(interaction, WORDS, [{"entry": w.entry, "regex": w.regex} for w in kept])
        await self._saved(interaction, f"{entry.strip()} is allowed again.")

    @SettingsCog.words_group.command(
        name="action", description="What a banned word in a prompt does"
    )
    @app_commands.describe(
        action="refuse: the job is refused; negative: the words move to the negative prompt"
    )
    async def words_action(
        self, interaction: discord.Interaction, action: Literal["refuse", "negative"]
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        await self._put(interaction, WORDS_ACTION, WordsAction(action).value)
        await self._saved(interaction, f"Banned words: {action}.")
