"""What the buttons and reactions under a result do.

Every click and reaction re-checks who may press; actions that make images become new
jobs (charged to whoever pressed, queued fairly) whose results are posted as replies to
the result they came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cogs.results.clicks import Results
from cogs.results.reactions import Reactions

if TYPE_CHECKING:
    from bot.client.app import SDBot


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Results(bot))
    await bot.add_cog(Reactions(bot))
