"""/settings: what an admin decides for their own server. Every change applies at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.community.guilds import (
    ALLOWED_MODELS,
    CHANNELS,
    COOLDOWNS,
    DEFAULT_MODEL,
    DEFAULT_SAMPLER_KEY,
    LISTED_CHANNELS,
    MAX_COUNT_KEY,
    MAX_PIXELS,
    MAX_STEPS_KEY,
    MAX_WORDS,
    PRICE_PER_IMAGE,
    SAFETY,
    TOPUP,
    WORDS,
    WORDS_ACTION,
    ChannelRule,
    GuildPolicy,
    SafetyAction,
    SettingRefused,
    WordsAction,
    check_word,
)
from cogs.dream import SAMPLER_CHOICES, model_autocomplete
from data.guilds import RoleLimits
from engine.api.params import MAX_COUNT, MAX_STEPS, InvalidParams, parse_size

if TYPE_CHECKING:
    from bot.client.app import SDBot

ADMINS_ONLY = "Only admins (Manage Server) can change this server's settings."
Family = Literal["dream", "img2img", "inpaint", "outpaint", "upscale"]
MAX_COOLDOWN = 24 * 3600
MAX_PRICE = 10_000.0
MAX_TOPUP = 1_000_000
MAX_TOPUP_HOURS = 24 * 365.0
MAX_PRICE_FACTOR = 100.0
MAX_PENDING = 50
MAX_LISTED_CHANNELS = 50


def buttons_text(policy: GuildPolicy) -> str:
    who = (
        "anyone (each pays for their own clicks)" if policy.buttons_for_anyone else "the requester"
    )
    return f"Result buttons and reactions: {who} (admins always)."


def channels_text(policy: GuildPolicy) -> str:
    if policy.channels is ChannelRule.AGE_RESTRICTED:
        return "Channels: only those marked age-restricted."
    if policy.channels is ChannelRule.LISTED:
        listed = ", ".join(f"<#{c}>" for c in sorted(policy.listed_channels)) or "none yet"
        return f"Channels: only {listed}."
    return "Channels: every channel."


def pixels_text(pixels: int | None) -> str:
    if pixels is None:
        return "each model's own"
    side = math.isqrt(pixels)
    return f"{pixels:,} pixels ({side}x{side})"


def policy_text(policy: GuildPolicy, *, roles: Sequence[RoleLimits] = (), full: bool = True) -> str:
    words = ", ".join(rule.shown for rule in policy.words) if full else f"{len(policy.words)}"
    cooldowns = ", ".join(f"{k} {v:g}s" for k, v in sorted(policy.cooldowns.items()) if v > 0)
    lines = [
        buttons_text(policy),
        channels_text(policy),
        f"Models: {', '.join(policy.allowed_models) or 'all'}; default {policy.default_model}, "
        f"sampler {policy.default_sampler}.",
        f"Limits: {policy.max_steps} steps, {policy.max_count} images per job, size "
        f"{pixels_text(policy.max_pixels)}.",
        f"Flagged images outside age-restricted channels: {policy.safety.value}.",
        f"Price: {policy.price_per_image:g} credits per standard image (512x512, 20 steps).",
        f"Top-up: {policy.topup_amount} credits every {policy.topup_hours:g} h, up to "
        f"{policy.topup_ceiling}.",
        f"Banned words ({policy.words_action.value}): {words or 'none'}.",
        f"Cooldowns: {cooldowns or 'none'}.",
    ]
    for role in roles:
        lines.append(f"Role <@&{role.role_id}>: {role_limits_text(role)}.")
    return "\n".join(lines)


def role_limits_text(role: RoleLimits) -> str:
    parts = []
    if role.max_steps is not None:
        parts.append(f"{role.max_steps} steps")
    if role.max_pixels is not None:
        parts.append(f"size {pixels_text(role.max_pixels)}")
    if role.max_count is not None:
        parts.append(f"{role.max_count} images")
    if role.max_pending is not None:
        parts.append(f"{role.max_pending} pending jobs")
    if role.price_factor is not None:
        parts.append(f"price x{role.price_factor:g}")
    return ", ".join(parts) or "nothing changed"


def size_pixels(text: str) -> int:
    width, height = parse_size(text)
    if width < 64 or height < 64:
        raise InvalidParams(f"Size {width}x{height}: each side must be at least 64.")
    return width * height


class GuildSettings(commands.Cog):
    settings_group = app_commands.Group(
        name="settings",
        description="This server's settings for the bot (admins)",
        guild_only=True,
    )
    words_group = app_commands.Group(
        name="words", description="Words and patterns banned from prompts", parent=settings_group
    )

    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def _admin_guild(self, interaction: discord.Interaction) -> int | None:
        """The server's id when an admin asks; otherwise they are told, and None."""
        if interaction.guild_id is None or not self.bot.is_admin(interaction.user):
            await interaction.response.send_message(ADMINS_ONLY, ephemeral=True)
            return None
        return interaction.guild_id

    async def _put(self, interaction: discord.Interaction, key: str, value: object) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        await self.bot.guild_settings.put(guild_id, key, value, by=interaction.user.id)

    async def _saved(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(f"Saved. {text}", ephemeral=True)

    @settings_group.command(name="show", description="This server's settings")
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

    @settings_group.command(name="buttons", description="Who may press the buttons of results")
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

    @settings_group.command(name="models", description="The models members may use here")
    @app_commands.describe(allowed="Model names separated by commas, or `all`")
    async def models(
        self, interaction: discord.Interaction, allowed: app_commands.Range[str, 1, 1000]
    ) -> None:
        if await self._admin_guild(interaction) is None:
            return
        known = self.bot.dreams.models
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

    @settings_group.command(name="defaults", description="The model and sampler used here")
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
            if model not in self.bot.dreams.models:
                known = ", ".join(sorted(self.bot.dreams.models))
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

    @settings_group.command(name="limits", description="The most a job may ask for here")
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

    @settings_group.command(name="channels", description="Where the bot works on this server")
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

    @settings_group.command(name="channel", description="Add a channel to the list, or remove it")
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

    @settings_group.command(name="safety", description="What happens to flagged images")
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

    @settings_group.command(name="price", description="Credits per standard image here")
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

    @settings_group.command(name="topup", description="The free top-up members get here")
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

    @settings_group.command(name="cooldown", description="Seconds between a member's jobs")
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

    @settings_group.command(name="block", description="Bar a member from using the bot here")
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

    @settings_group.command(name="unblock", description="Let a blocked member use the bot again")
    async def unblock(self, interaction: discord.Interaction, member: discord.Member) -> None:
        guild_id = await self._admin_guild(interaction)
        if guild_id is None:
            return
        if not await self.bot.guild_settings.unblock(guild_id, member.id):
            raise InvalidParams(f"{member.mention} is not blocked.")
        await self._saved(interaction, f"{member.mention} may use the bot here again.")

    @settings_group.command(name="role", description="Higher caps or another price for a role")
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

    @words_group.command(name="add", description="Ban a word, or a pattern, from prompts")
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

    @words_group.command(name="remove", description="Allow a banned word or pattern again")
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

    @words_group.command(name="action", description="What a banned word in a prompt does")
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


async def setup(bot: SDBot) -> None:
    await bot.add_cog(GuildSettings(bot))
