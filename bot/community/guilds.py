"""Per-server settings with types, falling back to the bot's own settings.

Stored as key/value rows (data/guilds.py); a missing key means the bot's own setting, so a
change of `.env` reaches every server that did not choose otherwise. Values are JSON.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import regex as timed_re

from bot.settings import Settings
from data.guilds import GuildSettingsRepository, RoleLimits
from engine.api.params import MAX_COUNT, MAX_STEPS
from engine.api.samplers import DEFAULT_SAMPLER

log = logging.getLogger(__name__)

BUTTONS_FOR_ANYONE = "buttons_for_anyone"
ALLOWED_MODELS = "allowed_models"
DEFAULT_MODEL = "default_model"
DEFAULT_SAMPLER_KEY = "default_sampler"
MAX_STEPS_KEY = "max_steps"
MAX_PIXELS = "max_pixels"
MAX_COUNT_KEY = "max_count"
CHANNELS = "channels"
LISTED_CHANNELS = "listed_channels"
SAFETY = "safety"
PRICE_PER_IMAGE = "price_per_image"
TOPUP = "topup"
WORDS = "words"
WORDS_ACTION = "words_action"
COOLDOWNS = "cooldowns"

# Word lists are matched against every prompt: kept short so no list or pattern can make
# matching slow (Python's `re` has no timeout).
MAX_WORDS = 100
MAX_WORD_LENGTH = 100
# A quantified group that itself holds a quantifier, e.g. (a+)+ or (\w*)*: the shape of
# catastrophic backtracking.
# Seconds all of a server's patterns may spend on one prompt before it is refused unchecked.
MATCH_TIMEOUT = 0.1
NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]")


class ChannelRule(StrEnum):
    EVERYWHERE = "everywhere"
    AGE_RESTRICTED = "age_restricted"  # only channels marked age-restricted (NSFW)
    LISTED = "listed"  # only the listed channels


class SafetyAction(StrEnum):
    """What happens to a flagged image outside age-restricted channels."""

    BLUR = "blur"
    SPOILER = "spoiler"
    REFUSE = "refuse"


class WordsAction(StrEnum):
    REFUSE = "refuse"
    NEGATIVE = "negative"  # moved from the prompt to the negative prompt


class SettingRefused(Exception):
    """A setting an admin asked for that cannot be; the message says why."""


@dataclass(frozen=True, slots=True)
class WordRule:
    entry: str
    regex: bool = False

    def pattern(self) -> timed_re.Pattern[str]:
        """Compiled with the `regex` package, whose matching takes a timeout: an admin's
        pattern that backtracks catastrophically (`(a|a)+b`) must not stall the event loop
        for every server (MATCH_TIMEOUT)."""
        if self.regex:
            return timed_re.compile(self.entry, timed_re.IGNORECASE | timed_re.VERSION0)
        # A plain word matches as a whole word, whatever characters it holds.
        return timed_re.compile(rf"(?<!\w){timed_re.escape(self.entry)}(?!\w)", timed_re.IGNORECASE)

    @property
    def shown(self) -> str:
        return f"/{self.entry}/" if self.regex else self.entry


def check_word(entry: str, regex: bool) -> WordRule:
    """A word or pattern an admin typed, checked; SettingRefused says what is wrong."""
    entry = entry.strip()
    if not entry:
        raise SettingRefused("The word is empty.")
    if len(entry) > MAX_WORD_LENGTH:
        raise SettingRefused(
            f"That is {len(entry)} characters; words and patterns are at most {MAX_WORD_LENGTH}."
        )
    rule = WordRule(entry, regex)
    if regex:
        if NESTED_QUANTIFIER.search(entry):
            raise SettingRefused(
                "That pattern repeats a repeated group (like `(a+)+`), which can make "
                "matching take forever; write it without the nesting."
            )
        try:
            rule.pattern()
        except timed_re.error as error:
            raise SettingRefused(f"That is not a valid pattern: {error}.") from None
    return rule


@dataclass(frozen=True, slots=True)
class GuildPolicy:
    """What one server has chosen; every field starts as the bot's own setting."""

    buttons_for_anyone: bool
    allowed_models: tuple[str, ...] = ()  # empty: every model of the bot
    default_model: str = ""
    default_sampler: str = DEFAULT_SAMPLER
    max_steps: int = MAX_STEPS
    max_pixels: int | None = None  # None: each model's own cap
    max_count: int = MAX_COUNT
    channels: ChannelRule = ChannelRule.EVERYWHERE
    listed_channels: frozenset[int] = frozenset()
    safety: SafetyAction = SafetyAction.BLUR
    price_per_image: float = 1.0
    # The free top-up a member gets when they use the bot here (credits are one balance
    # across servers; the top-up follows the server they use it in).
    topup_amount: int = 20
    topup_ceiling: int = 50
    topup_hours: float = 24.0
    words: tuple[WordRule, ...] = ()
    words_action: WordsAction = WordsAction.REFUSE
    cooldowns: dict[str, float] = field(default_factory=dict)  # job kind -> seconds
    max_pending: int = 3

    def model_allowed(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


class GuildSettingsService:
    """Reads are cached per server and dropped on every change, so a change applies at once."""

    def __init__(self, settings: Settings, repository: GuildSettingsRepository) -> None:
        self.settings = settings
        self.repository = repository
        self._cache: dict[int, GuildPolicy] = {}
        self._roles: dict[int, list[RoleLimits]] = {}

    def defaults(self) -> GuildPolicy:
        settings = self.settings
        return GuildPolicy(
            buttons_for_anyone=settings.buttons_for_anyone,
            default_model=settings.default_model,
            channels=(
                ChannelRule.AGE_RESTRICTED
                if settings.age_restricted_only
                else ChannelRule.EVERYWHERE
            ),
            safety=SafetyAction(settings.safety_action),
            price_per_image=settings.price_per_image,
            topup_amount=settings.topup_amount,
            topup_ceiling=settings.topup_ceiling,
            topup_hours=settings.topup_hours,
            max_pending=settings.max_pending_per_member,
        )

    async def policy(self, guild_id: int | None) -> GuildPolicy:
        if guild_id is None:  # DMs: the bot's own settings
            return self.defaults()
        cached = self._cache.get(guild_id)
        if cached is None:
            values = await self.repository.values(guild_id)
            cached = self._cache[guild_id] = self._parse(values)
        return cached

    async def role_limits(self, guild_id: int | None) -> list[RoleLimits]:
        if guild_id is None:
            return []
        cached = self._roles.get(guild_id)
        if cached is None:
            cached = self._roles[guild_id] = await self.repository.role_limits(guild_id)
        return cached

    def _parse(self, values: dict[str, str]) -> GuildPolicy:
        policy = self.defaults()
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            try:
                changes.update(_decode(key, json.loads(raw)))
            except (ValueError, TypeError, KeyError):
                # A value written by an older version that this one cannot read: the bot's
                # own setting applies rather than the server's bot breaking.
                log.warning("ignoring unreadable guild setting %s=%r", key, raw)
        policy = replace(policy, **changes)
        known = set(self.settings.models)
        allowed = tuple(name for name in policy.allowed_models if name in known)
        if policy.default_model not in known or not policy.model_allowed(policy.default_model):
            fallback = allowed[0] if allowed else self.settings.default_model
            policy = replace(policy, default_model=fallback)
        return replace(policy, allowed_models=allowed)

    # -- changes ----------------------------------------------------------------------

    async def put(self, guild_id: int, key: str, value: Any, *, by: int) -> GuildPolicy:
        """Store one setting (None: back to the bot's own) and return the policy it makes."""
        if value is None:
            await self.repository.remove(guild_id, key)
        else:
            await self.repository.put(guild_id, key, json.dumps(_encode(value)), by=by)
        self._cache.pop(guild_id, None)
        return await self.policy(guild_id)

    async def set_buttons_for_anyone(self, guild_id: int, anyone: bool, *, by: int) -> None:
        await self.put(guild_id, BUTTONS_FOR_ANYONE, anyone, by=by)

    async def put_role_limits(self, guild_id: int, limits: RoleLimits, *, by: int) -> None:
        await self.repository.put_role_limits(guild_id, limits, by=by)
        self._roles.pop(guild_id, None)

    async def remove_role_limits(self, guild_id: int, role_id: int) -> bool:
        removed = await self.repository.remove_role_limits(guild_id, role_id)
        self._roles.pop(guild_id, None)
        return removed

    # -- the blocklist ------------------------------------------------------------------

    async def block(self, guild_id: int, user_id: int, reason: str | None, *, by: int) -> bool:
        """False when the member was already blocked."""
        return await self.repository.block(guild_id, user_id, reason, by=by)

    async def unblock(self, guild_id: int, user_id: int) -> bool:
        return await self.repository.unblock(guild_id, user_id)

    async def blocked(self, guild_id: int) -> list[int]:
        return await self.repository.blocked(guild_id)

    async def is_blocked(self, guild_id: int | None, user_id: int) -> bool:
        return guild_id is not None and await self.repository.is_blocked(guild_id, user_id)


def _encode(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return value


def _decode(key: str, value: Any) -> dict[str, Any]:
    """One stored value as GuildPolicy's field(s); ValueError/TypeError when malformed."""
    if key == BUTTONS_FOR_ANYONE:
        return {"buttons_for_anyone": bool(value)}
    if key == ALLOWED_MODELS:
        return {"allowed_models": tuple(str(name) for name in value)}
    if key == DEFAULT_MODEL:
        return {"default_model": str(value)}
    if key == DEFAULT_SAMPLER_KEY:
        return {"default_sampler": str(value)}
    if key == MAX_STEPS_KEY:
        return {"max_steps": int(value)}
    if key == MAX_PIXELS:
        return {"max_pixels": int(value)}
    if key == MAX_COUNT_KEY:
        return {"max_count": int(value)}
    if key == CHANNELS:
        return {"channels": ChannelRule(value)}
    if key == LISTED_CHANNELS:
        return {"listed_channels": frozenset(int(c) for c in value)}
    if key == SAFETY:
        return {"safety": SafetyAction(value)}
    if key == PRICE_PER_IMAGE:
        return {"price_per_image": float(value)}
    if key == TOPUP:
        return {
            "topup_amount": int(value["amount"]),
            "topup_ceiling": int(value["ceiling"]),
            "topup_hours": float(value["hours"]),
        }
    if key == WORDS:
        return {"words": tuple(WordRule(str(w["entry"]), bool(w["regex"])) for w in value)}
    if key == WORDS_ACTION:
        return {"words_action": WordsAction(value)}
    if key == COOLDOWNS:
        return {"cooldowns": {str(k): float(v) for k, v in value.items()}}
    raise KeyError(key)
