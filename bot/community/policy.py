"""What a request may do here: a server's rules, checked before anything is charged.

DreamService.submit asks `CommunityPolicy.admit` for every job, whatever started it (a
slash command, a button, a reaction, /reproduce), so no path goes around the rules: the
blocklist, channel rules, allowed models and limits (raised by roles), banned words,
cooldowns, and the server's prices (lowered or raised by roles).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.community.guilds import (
    MATCH_TIMEOUT,
    ChannelRule,
    GuildPolicy,
    GuildSettingsService,
    WordsAction,
)
from bot.generation.options import job_kind, price_units
from bot.jobs.contracts import Admission, JobRefused, Requester
from bot.settings import Settings
from data.credits import CreditPolicy
from data.guilds import RoleLimits
from data.jobs import QueueCaps
from data.stats import GuildStats, StatsRepository
from engine.api.hires import hires_size
from engine.api.lora_tags import tidy_prompt as tidy_tag_gaps
from engine.api.params import GenerationParams
from engine.api.specs import ModelSpec

log = logging.getLogger(__name__)

BLOCKED = "You are blocked from using this bot here."
# Left behind in a prompt once banned words are taken out: empty emphasis.
EMPTY_EMPHASIS = re.compile(r"[(\[]\s*(?::\s*[\d.]+)?\s*[)\]]")


@dataclass(frozen=True, slots=True)
class Limits:
    """A member's caps and price factor here: the server's, raised by their roles."""

    max_steps: int
    max_pixels: int | None
    max_count: int
    max_pending: int
    price_factor: float = 1.0


def limits_for(policy: GuildPolicy, roles: list[RoleLimits], role_ids: frozenset[int]) -> Limits:
    """The most generous of the member's roles applies: the highest caps, the lowest price
    factor. A role lifts a cap; it never lowers the server's own."""
    mine = [role for role in roles if role.role_id in role_ids]

    def highest(base: int, values: list[int | None]) -> int:
        return max([base, *(value for value in values if value is not None)])

    pixels = policy.max_pixels
    if pixels is not None:
        pixels = highest(pixels, [role.max_pixels for role in mine])
    factors = [role.price_factor for role in mine if role.price_factor is not None]
    return Limits(
        max_steps=highest(policy.max_steps, [role.max_steps for role in mine]),
        max_pixels=pixels,
        max_count=highest(policy.max_count, [role.max_count for role in mine]),
        max_pending=highest(policy.max_pending, [role.max_pending for role in mine]),
        price_factor=min(factors) if factors else 1.0,
    )


def check_channel(policy: GuildPolicy, channel_id: int | None, requester: Requester) -> None:
    if policy.channels is ChannelRule.AGE_RESTRICTED and not requester.age_restricted:
        raise JobRefused("On this server the bot works only in channels marked age-restricted.")
    if policy.channels is ChannelRule.LISTED and channel_id not in policy.listed_channels:
        if policy.listed_channels:
            where = ", ".join(f"<#{channel}>" for channel in sorted(policy.listed_channels))
            raise JobRefused(f"The bot does not work in this channel; try {where}.")
        raise JobRefused("The bot is not enabled in any channel of this server yet.")


def check_limits(params: GenerationParams, policy: GuildPolicy, limits: Limits) -> None:
    if not policy.model_allowed(params.model):
        allowed = ", ".join(policy.allowed_models)
        raise JobRefused(f"Model {params.model} is not allowed here. Models: {allowed}.")
    for steps in (params.steps, params.hires_steps if params.has_hires else 0):
        if steps > limits.max_steps:
            raise JobRefused(f"{steps} steps is over this server's limit of {limits.max_steps}.")
    if params.count > limits.max_count:
        raise JobRefused(
            f"{params.count} images is over this server's limit of {limits.max_count} per job."
        )
    # An upscale is large by design; the bot's own upscale limit holds it.
    width, height = hires_size(params)  # what is made, after a hires pass
    pixels = width * height
    if params.mode != "upscale" and limits.max_pixels is not None and pixels > limits.max_pixels:
        raise JobRefused(
            f"Size {width}x{height} is {pixels:,} pixels; this server allows at most "
            f"{limits.max_pixels:,}."
        )


def apply_words(
    params: GenerationParams, policy: GuildPolicy, max_prompt: int, negative: bool = True
) -> tuple[GenerationParams, str]:
    """Refuse a prompt holding a banned word, or move the words to the negative prompt;
    for a model without one (`negative` false: FLUX), take them out of the prompt.

    Every match runs under MATCH_TIMEOUT: a pattern that would backtrack for minutes gets
    the prompt refused instead of stalling the bot for every server.
    """
    try:
        return _apply_words(params, policy, max_prompt, negative)
    except TimeoutError:
        log.warning("a banned-word pattern timed out on a prompt; refused unchecked")
        raise JobRefused(
            "This server's word list could not be checked against your prompt; "
            "try a shorter one, or ask an admin to simplify the patterns."
        ) from None


class _Budget:
    """One time budget for all of a prompt's matching: a hundred patterns each allowed the
    full timeout would still hold the event loop for seconds."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left


def check_banned_words(policy: GuildPolicy, *texts: str) -> None:
    """Refuse texts that hold a banned word whatever the server's action: a name or class
    word cannot be moved to a negative prompt."""
    budget = _Budget(MATCH_TIMEOUT)
    try:
        hits = [
            rule
            for rule in policy.words
            if any(rule.pattern().search(text, timeout=budget.left()) for text in texts)
        ]
    except TimeoutError:
        raise JobRefused("This server's word list could not be checked; try other words.") from None
    if hits:
        shown = ", ".join(rule.shown for rule in hits)
        raise JobRefused(f"This server does not allow {shown}.")


def _apply_words(
    params: GenerationParams, policy: GuildPolicy, max_prompt: int, to_negative: bool
) -> tuple[GenerationParams, str]:
    if params.hires_prompt:
        # Hires fix's own prompt is refused rather than edited: its words would have to go to
        # a hires negative prompt, which when empty is the main one (A1111's "use the same").
        check_banned_words(policy, params.hires_prompt)
    budget = _Budget(MATCH_TIMEOUT)
    hits = [
        rule for rule in policy.words if rule.pattern().search(params.prompt, timeout=budget.left())
    ]
    if not hits:
        return params, ""
    if policy.words_action is WordsAction.REFUSE:
        shown = ", ".join(rule.shown for rule in hits)
        raise JobRefused(f"This server does not allow {shown} in prompts.")
    prompt, moved = params.prompt, []
    for rule in hits:
        pattern = rule.pattern()
        moved += [
            match.group(0).strip() for match in pattern.finditer(prompt, timeout=budget.left())
        ]
        prompt = pattern.sub(" ", prompt, timeout=budget.left())
    prompt = tidy_prompt(prompt)
    if not prompt:
        raise JobRefused("Nothing is left of the prompt without this server's banned words.")
    seen: dict[str, str] = {}
    for word in moved:
        if word:
            seen.setdefault(word.lower(), word)  # "Gore" and "GORE" are one word
    words = list(seen.values())
    if not to_negative:
        note = f"Taken out of the prompt by this server's rules: {', '.join(words)}."
        return replace(params, prompt=prompt), note
    negative = ", ".join(part for part in (params.negative.strip(), *words) if part)
    if len(negative) > max_prompt:
        raise JobRefused(
            "This server moves some of your words to the negative prompt, which would then be "
            f"over {max_prompt} characters."
        )
    note = f"Moved to the negative prompt by this server's rules: {', '.join(words)}."
    return replace(params, prompt=prompt, negative=negative), note


def tidy_prompt(prompt: str) -> str:
    """What taking words out leaves: emptied emphasis, then the commas and spaces a removed
    LoRA tag would leave too."""
    return tidy_tag_gaps(EMPTY_EMPHASIS.sub(" ", prompt))


def job_price(
    params: GenerationParams, per_image: float, factor: float, spec: ModelSpec | None = None
) -> int:
    """As DreamService.price, at this server's price and the member's role factor."""
    return max(1, math.ceil(price_units(params, spec) * per_image * factor - 1e-9))


class CommunityPolicy:
    """The Gate that DreamService.submit consults for every job."""

    def __init__(
        self,
        settings: Settings,
        guilds: GuildSettingsService,
        stats: StatsRepository,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.models = settings.model_specs()
        self.guilds = guilds
        self.stats_repository = stats
        self.clock = clock

    async def limits(self, guild_id: int | None, requester: Requester) -> Limits:
        policy = await self.guilds.policy(guild_id)
        roles = await self.guilds.role_limits(guild_id)
        return limits_for(policy, roles, requester.role_ids)

    async def admit(
        self,
        params: GenerationParams,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        requester: Requester,
    ) -> Admission:
        policy = await self.admit_member(
            user_id=user_id, guild_id=guild_id, channel_id=channel_id, requester=requester
        )
        limits = await self.limits(guild_id, requester)
        check_limits(params, policy, limits)
        spec = self._spec(params)
        takes_negative = spec is None or spec.family_row().negative_prompt
        params, note = apply_words(
            params, policy, self.settings.max_prompt_length, negative=takes_negative
        )
        if not requester.is_admin:
            await self._check_cooldown(policy, params, user_id, guild_id, interaction_id)
        cost = job_price(params, policy.price_per_image, limits.price_factor, self._spec(params))
        caps = QueueCaps(limits.max_pending, self.settings.max_queued_total)
        return Admission(params, cost, caps, note, self.credit_policy(policy))

    def _spec(self, params: GenerationParams) -> ModelSpec | None:
        """The job's model, whose family sets what a step costs."""
        return self.models.get(params.model)

    def credit_policy(self, policy: GuildPolicy) -> CreditPolicy:
        """The bot's starting grant with this server's top-up."""
        return CreditPolicy(
            starting=self.settings.starting_credits,
            topup_amount=policy.topup_amount,
            topup_ceiling=policy.topup_ceiling,
            topup_interval=policy.topup_hours * 3600,
        )

    async def admit_member(
        self,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        requester: Requester,
        model: str | None = None,
    ) -> GuildPolicy:
        """Whether this member may use the bot here at all (the blocklist, the channel
        rules, and `model` when given); /train checks this much, generation all of admit."""
        policy = await self.guilds.policy(guild_id)
        if guild_id is not None:
            if await self.guilds.is_blocked(guild_id, user_id):
                raise JobRefused(BLOCKED)
            if not requester.in_dm:
                check_channel(policy, channel_id, requester)
        if model is not None and not policy.model_allowed(model):
            allowed = ", ".join(policy.allowed_models)
            raise JobRefused(f"Model {model} is not allowed here. Models: {allowed}.")
        return policy

    async def quote(
        self, params: GenerationParams, *, guild_id: int | None, requester: Requester
    ) -> int:
        """What `params` cost this member here: the server's price times their role factor."""
        policy = await self.guilds.policy(guild_id)
        limits = await self.limits(guild_id, requester)
        return job_price(params, policy.price_per_image, limits.price_factor, self._spec(params))

    async def withheld(self, job_id: int) -> set[int]:
        """A result's images flagged where they were asked for and not shown as they are:
        never sent on by the ✉️ reaction either."""
        flags = await self.stats_repository.flags(job_id)
        return {idx for idx, action in flags.items() if action != "posted"}

    async def stats(self, guild_id: int, days: int = 7) -> GuildStats:
        return await self.stats_repository.guild_stats(guild_id, days=days, now=self.clock())

    async def _check_cooldown(
        self,
        policy: GuildPolicy,
        params: GenerationParams,
        user_id: int,
        guild_id: int | None,
        interaction_id: int | None,
    ) -> None:
        kind = job_kind(params)
        seconds = policy.cooldowns.get(kind, 0.0)
        if seconds <= 0:
            return
        last = await self.stats_repository.last_job_at(
            user_id, guild_id, kind, except_interaction=interaction_id
        )
        if last is None:
            return
        left = last + seconds - self.clock()
        if left > 0:
            raise JobRefused(
                f"Slow down: your next {kind} here can start in {math.ceil(left)}s "
                f"(this server's cooldown is {seconds:g}s)."
            )
