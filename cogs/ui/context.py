"""What the commands share about who asks and where, and results delivered by DM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import discord

from bot.generation.results import Presser
from bot.jobs.contracts import JobOutcome, Requester
from cogs.ui.presenter import DreamPresenter
from cogs.ui.rendering import DEFAULT_FILE_LIMIT, result_embed, result_files

if TYPE_CHECKING:
    from bot.client.app import SDBot

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


def presser_of(
    bot: SDBot, user: discord.abc.User, guild_id: int | None, channel_id: int | None, channel: Any
) -> Presser:
    """Who pressed (a button or a reaction), with their standing and channel."""
    is_admin = bot.is_admin(user)
    return Presser(
        user_id=user.id,
        guild_id=guild_id,
        channel_id=channel_id,
        is_admin=is_admin,
        is_owner=bot.is_owner_id(user.id),
        requester=requester_of(user, channel, is_admin=is_admin),
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
