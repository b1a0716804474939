"""Members' own defaults and named presets, as Midjourney's `/prefer` keeps them.

What a member types always wins; then the preset they name; then their own defaults; then
the server's defaults (model, sampler); then the bot's. A preference that does not fit
where it is used (a model this server does not allow, a size too large for the model,
more steps than the server allows) is passed over quietly: it is a wish, not a request.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Self

from bot.community.guilds import GuildPolicy, GuildSettingsService
from bot.generation.options import DEFAULT_STEPS, DreamOptions
from bot.settings import Settings
from data.members import DEFAULTS, MemberPresetRepository
from engine.api.checks import check_size, parse_size
from engine.api.params import MAX_STEPS, MIN_STEPS, InvalidParams
from engine.api.samplers import SAMPLERS
from engine.api.specs import ModelSpec

PreferenceName = Literal["model", "sampler", "steps", "size", "negative", "dm"]
PREFERENCES: tuple[PreferenceName, ...] = ("model", "sampler", "steps", "size", "negative", "dm")
MAX_PRESETS = 10
MAX_PRESET_NAME = 32
PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
YES = frozenset({"yes", "true", "on", "1"})
NO = frozenset({"no", "false", "off", "0"})


@dataclass(frozen=True, slots=True)
class Preferences:
    """Options a member set; None (or False for dm) means "not set"."""

    model: str | None = None
    sampler: str | None = None
    steps: int | None = None
    size: tuple[int, int] | None = None
    negative: str | None = None
    dm: bool = False  # results by DM

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, False)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Self:
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in (data or {}).items() if key in names}
        if values.get("size") is not None:
            values["size"] = tuple(values["size"])  # JSON has no tuples
        return cls(**values)

    def over(self, base: Preferences) -> Preferences:
        """These preferences, with what they leave unset taken from `base`."""
        mine = {key: value for key, value in asdict(self).items() if value not in (None, False)}
        return replace(base, **mine)

    @property
    def empty(self) -> bool:
        return not self.to_dict()


@dataclass(frozen=True, slots=True)
class Filled:
    options: DreamOptions
    dm: bool


def preset_name(name: str) -> str:
    """A preset's name, lower-cased; InvalidParams when it cannot be one."""
    cleaned = name.strip().lower()
    if not cleaned:
        raise InvalidParams("A preset needs a name.")
    if len(cleaned) > MAX_PRESET_NAME:
        raise InvalidParams(
            f"Preset names are at most {MAX_PRESET_NAME} characters; that one has {len(cleaned)}."
        )
    if not PRESET_NAME.match(cleaned):
        raise InvalidParams(
            "Preset names use letters, digits, - and _ only, and start with a letter or digit."
        )
    return cleaned


class PreferenceService:
    def __init__(
        self,
        settings: Settings,
        guilds: GuildSettingsService,
        repository: MemberPresetRepository,
    ) -> None:
        self.settings = settings
        self.models: dict[str, ModelSpec] = settings.model_specs()
        self.guilds = guilds
        self.repository = repository

    # -- reading ------------------------------------------------------------------------

    async def defaults(self, user_id: int) -> Preferences:
        return Preferences.from_dict(await self.repository.get(user_id))

    async def preset(self, user_id: int, name: str) -> Preferences:
        found = await self.repository.get(user_id, preset_name(name))
        if found is None:
            names = await self.repository.names(user_id)
            known = f" Yours: {', '.join(names)}." if names else " You have none yet."
            raise InvalidParams(f"You have no preset called {name.strip()!r}.{known}")
        return Preferences.from_dict(found)

    async def names(self, user_id: int) -> list[str]:
        return await self.repository.names(user_id)

    # -- changing -----------------------------------------------------------------------

    def parse(self, option: PreferenceName, value: str) -> Any:
        """A preference as typed, checked; InvalidParams says what is wrong."""
        text = value.strip()
        if option == "model":
            if text not in self.models:
                known = ", ".join(sorted(self.models))
                raise InvalidParams(f"Unknown model {text!r}. Models: {known}.")
            return text
        if option == "sampler":
            matches = [name for name in SAMPLERS if name.lower() == text.lower()]
            if not matches:
                raise InvalidParams(f"Unknown sampler {text!r}. Samplers: {', '.join(SAMPLERS)}.")
            return matches[0]
        if option == "steps":
            # isdigit() alone takes `²` and `٣`, which int() then refuses or reads: ASCII only.
            if not (text.isascii() and text.isdigit()) or not MIN_STEPS <= int(text) <= MAX_STEPS:
                raise InvalidParams(f"Steps must be a whole number {MIN_STEPS}-{MAX_STEPS}.")
            return int(text)
        if option == "size":
            return self._size(text)
        if option == "negative":
            limit = self.settings.max_prompt_length
            if len(text) > limit:
                raise InvalidParams(
                    f"The negative prompt is {len(text)} characters; the limit is {limit}."
                )
            return text
        if text.lower() in YES:
            return True
        if text.lower() in NO:
            return False
        raise InvalidParams("Results by DM is yes or no.")

    def _size(self, text: str) -> tuple[int, int]:
        width, height = parse_size(text)
        # Checked against the largest model: whether it fits the one used is seen each time.
        largest = max(self.models.values(), key=lambda spec: spec.pixel_cap())
        check_size(width, height, largest)
        return width, height

    async def set(self, user_id: int, option: PreferenceName, value: str) -> Preferences:
        parsed = self.parse(option, value)
        current = await self.defaults(user_id)
        change: dict[str, Any] = {option: parsed if parsed != "" else None}
        changed = replace(current, **change)
        await self.repository.put(user_id, DEFAULTS, changed.to_dict())
        return changed

    async def clear(self, user_id: int, option: PreferenceName | None = None) -> Preferences:
        if option is None:
            await self.repository.remove(user_id, DEFAULTS)
            return Preferences()
        current = await self.defaults(user_id)
        change: dict[str, Any] = {option: False if option == "dm" else None}
        changed = replace(current, **change)
        await self.repository.put(user_id, DEFAULTS, changed.to_dict())
        return changed

    async def save_preset(self, user_id: int, name: str, preferences: Preferences) -> str:
        cleaned = preset_name(name)
        if preferences.empty:
            raise InvalidParams(
                "That preset would hold nothing: set defaults with /prefer set, or give options."
            )
        saved = await self.repository.put(
            user_id, cleaned, preferences.to_dict(), max_presets=MAX_PRESETS
        )
        if not saved:
            raise InvalidParams(
                f"You have {MAX_PRESETS} presets already; delete one with /prefer preset delete."
            )
        return cleaned

    async def use_preset(self, user_id: int, name: str) -> Preferences:
        """Make a preset the member's defaults."""
        preset = await self.preset(user_id, name)
        await self.repository.put(user_id, DEFAULTS, preset.to_dict())
        return preset

    async def delete_preset(self, user_id: int, name: str) -> str:
        cleaned = preset_name(name)
        if not await self.repository.remove(user_id, cleaned):
            raise InvalidParams(f"You have no preset called {cleaned!r}.")
        return cleaned

    # -- using --------------------------------------------------------------------------

    async def fill(
        self,
        options: DreamOptions,
        *,
        user_id: int,
        guild_id: int | None,
        preset: str | None = None,
        with_size: bool = True,
    ) -> Filled:
        """The member's options with their preferences and the server's defaults filled in."""
        chosen = await self.defaults(user_id)
        if preset:
            chosen = (await self.preset(user_id, preset)).over(chosen)
        policy = await self.guilds.policy(guild_id)
        model = options.model or self._model(chosen.model, policy)
        spec = self.models.get(model)
        row = spec.family_row() if spec is not None else None
        steps = options.steps
        if steps is None:
            # The model's own default (FLUX.1 schnell's 4), else the member's; never one the
            # server would refuse: capped at its limit.
            own = spec.steps_default() if spec is not None else DEFAULT_STEPS
            preferred = chosen.steps if row is None or row.steps == DEFAULT_STEPS else None
            steps = min(preferred or own, policy.max_steps)
        size = options.size
        if size is None and with_size:
            size = self._fitting_size(chosen.size, model, policy)
        negative = options.negative
        if negative is None and (row is None or row.negative_prompt):
            negative = chosen.negative  # a saved negative only where the family takes one
        sampler = options.sampler
        if sampler is None:
            saved = chosen.sampler or policy.default_sampler
            # A saved or server sampler the family has no scheduler for gives way to its own.
            sampler = saved if row is None or row.allows_sampler(saved or "") else None
        filled = replace(
            options,
            model=model,
            sampler=sampler,
            steps=steps,
            size=size,
            negative=negative,
        )
        return Filled(filled, chosen.dm)

    def _model(self, preferred: str | None, policy: GuildPolicy) -> str:
        if preferred in self.models and policy.model_allowed(preferred or ""):
            return preferred or policy.default_model
        return policy.default_model

    def _fitting_size(
        self, size: tuple[int, int] | None, model: str, policy: GuildPolicy
    ) -> tuple[int, int] | None:
        spec = self.models.get(model)
        if size is None or spec is None:
            return None
        width, height = size
        if policy.max_pixels is not None and width * height > policy.max_pixels:
            return None
        try:
            check_size(width, height, spec)
        except InvalidParams:
            return None
        return size
