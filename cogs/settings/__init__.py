"""/settings: what an admin decides for their own server. Every change applies at once.

One cog, `GuildSettings`, put together from the classes of this package: a group belongs to
the one cog that defines it (discord.py copies it onto that cog), so the subcommands of
/settings are split across classes of one cog, not across cogs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cogs.settings.jobs import JobSettings
from cogs.settings.members import MemberSettings

if TYPE_CHECKING:
    from bot.client.app import SDBot


class GuildSettings(JobSettings, MemberSettings):
    """Every /settings subcommand: those of `JobSettings`, then those of `MemberSettings`,
    in the order they are synced (the order their modules are imported in, above)."""


async def setup(bot: SDBot) -> None:
    await bot.add_cog(GuildSettings(bot))
