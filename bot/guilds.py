"""Per-server settings with types, falling back to the bot's own settings."""

from __future__ import annotations

from dataclasses import dataclass

from bot.settings import Settings
from data.guilds import GuildSettingsRepository

BUTTONS_FOR_ANYONE = "buttons_for_anyone"


@dataclass(frozen=True, slots=True)
class GuildPolicy:
    """What one server has chosen; every field starts as the bot's own setting."""

    buttons_for_anyone: bool


class GuildSettingsService:
    """Reads are cached per server and dropped on every change, so a change applies at once."""

    def __init__(self, settings: Settings, repository: GuildSettingsRepository) -> None:
        self.settings = settings
        self.repository = repository
        self._cache: dict[int, GuildPolicy] = {}

    def defaults(self) -> GuildPolicy:
        return GuildPolicy(buttons_for_anyone=self.settings.buttons_for_anyone)

    async def policy(self, guild_id: int | None) -> GuildPolicy:
        if guild_id is None:  # DMs: the bot's own settings
            return self.defaults()
        cached = self._cache.get(guild_id)
        if cached is None:
            values = await self.repository.values(guild_id)
            cached = self._cache[guild_id] = self._parse(values)
        return cached

    def _parse(self, values: dict[str, str]) -> GuildPolicy:
        defaults = self.defaults()
        anyone = values.get(BUTTONS_FOR_ANYONE)
        return GuildPolicy(
            buttons_for_anyone=defaults.buttons_for_anyone if anyone is None else anyone == "1",
        )

    async def set_buttons_for_anyone(self, guild_id: int, anyone: bool, *, by: int) -> None:
        await self.repository.put(guild_id, BUTTONS_FOR_ANYONE, "1" if anyone else "0", by=by)
        self._cache.pop(guild_id, None)
