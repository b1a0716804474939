"""What the commands share about who asks and where, and results delivered by DM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord

from bot.jobs.contracts import JobOutcome, Requester
from cogs.ui.presenter import DreamPresenter
from cogs.ui.rendering import DEFAULT_FILE_LIMIT, result_embed, result_files

log = logging.getLogger(__name__)

# What /settings (and, reworded, /stats) tells a member who is not an admin.
ADMINS_ONLY = "Only admins (Manage Server) can change this server's settings."


def is_age_restricted(channel: Any) -> bool:
    """Channels and threads (by their parent) marked age-restricted; never a DM."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def requester_of(
    user: discord.abc.User, channel: Any, *, is_admin: bool = False, in_dm: bool = False
) -> Requester:
    roles = user.roles if isinstance(user, discord.Member) else []
    return Requester(
        role_ids=frozenset(role.id for role in roles),
        age_restricted=is_age_restricted(channel),
        is_admin=is_admin,
        in_dm=in_dm,
    )


class DirectPresenter(DreamPresenter):
    """A member who prefers results by DM: progress in the channel, the result in their DMs
    (with its buttons); the channel's message then says where it went. Closed DMs (50007):
    the result is posted in the channel after all."""

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        user = self.interaction.user
        files = await asyncio.to_thread(
            result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT, outcome.params
        )
        view = self.view(outcome) if self.view is not None else None
        extra: dict[str, Any] = {"view": view} if view is not None else {}
        try:
            sent = await user.send(
                embed=result_embed(outcome, user, self.note), files=files, **extra
            )
        except discord.Forbidden as error:  # 50007: closed DMs; anything else is retried
            log.info(
                "job %s: DM to user %s failed (%s); posting here", outcome.job.id, user.id, error
            )
            return await super().succeeded(outcome)
        async with self._lock:
            self._finished = True
            with contextlib.suppress(discord.HTTPException):
                await self.interaction.edit_original_response(
                    content=f"{user.mention} job {outcome.job.id} is done: sent to your DMs.",
                    attachments=[],
                )
        return sent.id
