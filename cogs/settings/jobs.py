"""/settings for where the bot works and what a job may ask for: show, buttons, models,
defaults, limits, channels, channel and safety."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands

from bot.community.guilds import (
    ALLOWED_MODELS,
    CHANNELS,
    DEFAULT_MODEL,
    DEFAULT_SAMPLER_KEY,
    LISTED_CHANNELS,
    MAX_COUNT_KEY,
    MAX_PIXELS,
    MAX_STEPS_KEY,
    SAFETY,
    ChannelRule,
    SafetyAction,
)
from cogs.settings.base import SettingsCog, size_pixels
from cogs.settings.text import buttons_text, channels_text, pixels_text, policy_text
from cogs.ui.options import SAMPLER_CHOICES, model_autocomplete
from engine.api.params import MAX_COUNT, MAX_STEPS, InvalidParams

MAX_LISTED_CHANNELS = 50


class JobSettings(SettingsCog):
    @SettingsCog.settings_group.command(name="show", description="This server's settings")
    async def show(self, interaction: discord.Interaction) -> None:
        guilds = self.bot.guild_settings
        policy = await guilds.policy(interaction.guild_id)
        admin = self.bot.is_admin(interaction.user)
        roles = await guilds.role_limits(interaction.guild_id)
        text = policy_text(policy, roles=roles, full=admin)
        if admin and interaction.guild_id is not None:
            blocked = await guilds.blocked(interaction.guild_id)
            if blocked:
                text += "\nBlocked: " + ", ".join(f"<@{user}>" for user in blocked) + "."
        await interaction.response.send_message(
            text[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @SettingsCog.settings_group.command(
        name="buttons", description="Who may press the buttons of results"
    )
    @app_commands.describe(who="requester: only the member who asked; anyone: every member")
    async def buttons(
        self, interaction: discord.Interaction, who: Literal["requester", "anyone"]
    ) -> None:
        guild_id = await self._admin_guild(interaction)
        if guild_id is None:
            return
        await self.bot.guild_settings.set_buttons_for_anyone(
            guild_id, who == "anyone", by=interaction.user.id
        )
        policy = await self.bot.guild_settings.policy(guild_id)
        await self._saved(interaction, buttons_text(policy))

    @SettingsCog.settings_group.command(
        name="models", description="The models members may use here"
    )
    @app_commands.describe(allowed="Model names separated by commas, or `all`")
    async def models(
        self, interaction: discord.Interaction, allowed: app_commands.Range[str, 1, 1000]
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        known = self.bot.models
        names = list(dict.fromkeys(n.strip() for n in allowed.split(",") if n.strip()))
        if [n.lower() for n in names] == ["all"]:
            await self._put(interaction, ALLOWED_MODELS, None)
            await self._saved(interaction, "Every model is allowed.")
            return
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise InvalidParams(
                f"Unknown model(s): {', '.join(unknown) or '(none given)'}. "
                f"Models: {', '.join(sorted(known))}."
            )
        await self._put(interaction, ALLOWED_MODELS, names)
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        await self._saved(
            interaction, f"Models: {', '.join(names)}; default {policy.default_model}."
        )

    @SettingsCog.settings_group.command(
        name="defaults", description="The model and sampler used here"
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES)
    @app_commands.autocomplete(model=model_autocomplete)
    async def defaults(
        self,
        interaction: discord.Interaction,
        model: str | None = None,
        sampler: str | None = None,
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        if model is None and sampler is None:
            raise InvalidParams("Give a model, a sampler, or both.")
        if model is not None:
            if model not in self.bot.models:
                known = ", ".join(sorted(self.bot.models))
                raise InvalidParams(f"Unknown model {model!r}. Models: {known}.")
            if not policy.model_allowed(model):
                raise InvalidParams(f"Model {model} is not among this server's allowed models.")
            await self._put(interaction, DEFAULT_MODEL, model)
        if sampler is not None:
            await self._put(interaction, DEFAULT_SAMPLER_KEY, sampler)
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        await self._saved(
            interaction, f"Default model {policy.default_model}, sampler {policy.default_sampler}."
        )

    @SettingsCog.settings_group.command(
        name="limits", description="The most a job may ask for here"
    )
    @app_commands.describe(
        steps="Most denoising steps",
        size="Largest size, as WIDTHxHEIGHT (its pixel count is the limit)",
        count="Most images per job",
        reset="Back to the bot's own limits",
    )
    async def limits(
        self,
        interaction: discord.Interaction,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        size: str | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        reset: bool = False,
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        if reset:
            for key in (MAX_STEPS_KEY, MAX_PIXELS, MAX_COUNT_KEY):
                await self._put(interaction, key, None)
        pixels = size_pixels(size) if size is not None else None
        if not reset and steps is None and pixels is None and count is None:
            raise InvalidParams("Give steps, size or count (or reset).")
        for key, value in ((MAX_STEPS_KEY, steps), (MAX_PIXELS, pixels), (MAX_COUNT_KEY, count)):
            if value is not None:
                await self._put(interaction, key, value)
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        await self._saved(
            interaction,
            f"Limits: {policy.max_steps} steps, {policy.max_count} images per job, size "
            f"{pixels_text(policy.max_pixels)}.",
        )

    @SettingsCog.settings_group.command(
        name="channels", description="Where the bot works on this server"
    )
    @app_commands.describe(
        where="everywhere; age_restricted: only NSFW channels; listed: see /settings channel"
    )
    async def channels(
        self,
        interaction: discord.Interaction,
        where: Literal["everywhere", "age_restricted", "listed"],
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        await self._put(interaction, CHANNELS, ChannelRule(where).value)
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        await self._saved(interaction, channels_text(policy))

    @SettingsCog.settings_group.command(
        name="channel", description="Add a channel to the list, or remove it"
    )
    async def channel(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        action: Literal["add", "remove"],
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        listed = set(policy.listed_channels)
        if action == "add":
            if len(listed) >= MAX_LISTED_CHANNELS and channel.id not in listed:
                raise InvalidParams(f"At most {MAX_LISTED_CHANNELS} channels can be listed.")
            listed.add(channel.id)
        elif channel.id not in listed:
            raise InvalidParams(f"{channel.mention} is not listed.")
        else:
            listed.discard(channel.id)
        await self._put(interaction, LISTED_CHANNELS, listed)
        policy = await self.bot.guild_settings.policy(interaction.guild_id)
        shown = ", ".join(f"<#{c}>" for c in sorted(listed)) or "none"
        note = (
            ""
            if policy.channels is ChannelRule.LISTED
            else " They apply once `/settings channels listed` is chosen."
        )
        await self._saved(interaction, f"Listed channels: {shown}.{note}")

    @SettingsCog.settings_group.command(name="safety", description="What happens to flagged images")
    @app_commands.describe(
        action="Outside age-restricted channels (where images post as they are): blur, "
        "spoiler, or refuse (not posted, refunded)"
    )
    async def safety(
        self, interaction: discord.Interaction, action: Literal["blur", "spoiler", "refuse"]
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        await self._put(interaction, SAFETY, SafetyAction(action).value)
        checker = (
            ""
            if self.bot.settings.safety_checker
            else (" No safety checker is configured on this bot, so nothing is flagged yet.")
        )
        await self._saved(
            interaction, f"Flagged images outside age-restricted channels: {action}.{checker}"
        )
