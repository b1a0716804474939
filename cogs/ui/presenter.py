"""How a job looks in Discord while it waits, runs, succeeds or fails: the presenters that
the generation service reports to (what a result says is in cogs/ui/rendering.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import discord

from bot.client.replies import CHANNEL_FALLBACK, mention_only, reply_ephemeral
from bot.jobs.contracts import JobOutcome, QueueEntry
from bot.jobs.delivery import worth_retrying
from cogs.ui.live import LiveMessage
from cogs.ui.rendering import (
    DEFAULT_FILE_LIMIT,
    failure_text,
    public_failure,
    result_files,
)
from cogs.ui.rendering import result_embed as plain_embed
from data.jobs import Job
from engine.api.params import Progress
from engine.api.regions import describe_region

log = logging.getLogger(__name__)


class DreamPresenter(LiveMessage):
    """A job started by a slash command: it lives in the interaction's original response."""

    def __init__(
        self,
        interaction: discord.Interaction,
        interval: float,
        note: str = "",
        view: ResultViewFactory | None = None,
    ) -> None:
        super().__init__(interval, note)
        self.interaction = interaction
        self.view = view

    async def _write(self, **kwargs: Any) -> discord.Message | None:
        return await self.interaction.edit_original_response(**kwargs)

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        files = await asyncio.to_thread(
            result_files,
            outcome.job.id,
            outcome.images,
            self.interaction.filesize_limit,
            outcome.params,
        )
        embed = result_embed(outcome, self.interaction.user, self.note)
        mention = self.interaction.user.mention
        extra = _view_kwargs(self.view, outcome)
        async with self._lock:
            self._finished = True
            try:
                message = await self.interaction.edit_original_response(
                    content=mention,
                    embed=embed,
                    attachments=files,
                    allowed_mentions=mention_only(self.interaction.user),
                    **extra,
                )
                return message.id
            except discord.HTTPException as error:
                if worth_retrying(error):  # the service tries the same post again later
                    raise
                # The interaction token lives 15 minutes; a long queue outlives it.
                log.info("job %s: posting as a new message (%s)", outcome.job.id, error)
        channel = self.interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            return None
        files = await asyncio.to_thread(
            result_files,
            outcome.job.id,
            outcome.images,
            self.interaction.filesize_limit,
            outcome.params,
        )
        sent = await channel.send(
            mention,
            embed=embed,
            files=files,
            allowed_mentions=mention_only(self.interaction.user),
            **extra,
        )
        return sent.id

    async def failed(self, job: Job, message: str, refunded: int) -> None:
        await self.refused(failure_text(message, refunded), public=public_failure(job, refunded))

    async def refused(self, text: str, public: str = CHANNEL_FALLBACK) -> None:
        """The public progress message goes; the member alone reads why (`public`, which
        quotes nothing they typed, is what the channel reads if they cannot be reached)."""
        async with self._lock:
            self._finished = True
            await reply_ephemeral(self.interaction, text, fallback_to_channel=True, public=public)


class ReplyPresenter(LiveMessage):
    """A job started from a result (a button or a reaction): it lives in a reply to that
    result, a message of the bot's own that it can edit for as long as it likes.

    A failure is told privately: to the click's interaction while its token lives, else
    by DM.
    """

    def __init__(
        self,
        client: discord.Client,
        channel: discord.abc.Messageable,
        reference: discord.Message | discord.PartialMessage | None,
        requester: discord.abc.User,
        label: str,
        interval: float,
        *,
        interaction: discord.Interaction | None = None,
        view: ResultViewFactory | None = None,
    ) -> None:
        super().__init__(interval)
        self.client = client
        self.channel = channel
        self.reference = reference
        self.requester = requester
        self.label = label
        self.interaction = interaction
        self.view = view
        self.message: discord.Message | None = None

    def decorate(self, text: str) -> str:
        return f"{self.label} for {self.requester.mention}: {text}"

    async def _write(self, **kwargs: Any) -> discord.Message | None:
        if self.message is None:
            kwargs.pop("attachments", None)
            self.message = await self._send(
                allowed_mentions=discord.AllowedMentions.none(), **kwargs
            )
            return self.message
        return await self.message.edit(**kwargs)

    async def _send(self, **kwargs: Any) -> discord.Message:
        if self.reference is not None:
            try:
                return await self.channel.send(reference=self.reference, **kwargs)
            except discord.HTTPException:  # the result was deleted meanwhile: no reply
                pass
        return await self.channel.send(**kwargs)

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        files = await asyncio.to_thread(
            result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT, outcome.params
        )
        content = f"{self.label} for {self.requester.mention}"
        if outcome.params.mask_preview:
            content += ": the tinted part is what Run repaints; Cancel leaves the picture be."
        embed = result_embed(outcome, self.requester)
        extra = _view_kwargs(self.view, outcome)
        mentions = mention_only(self.requester)
        async with self._lock:
            self._finished = True
            if self.message is not None:
                try:
                    edited = await self.message.edit(
                        content=content, embed=embed, attachments=files, **extra
                    )
                    return edited.id
                except discord.HTTPException as error:
                    if worth_retrying(error):  # the service tries the same post again later
                        raise
                    log.info("job %s: posting as a new message (%s)", outcome.job.id, error)
                    files = await asyncio.to_thread(
                        result_files,
                        outcome.job.id,
                        outcome.images,
                        DEFAULT_FILE_LIMIT,
                        outcome.params,
                    )
            sent = await self._send(
                content=content, embed=embed, files=files, allowed_mentions=mentions, **extra
            )
            return sent.id

    async def failed(self, job: Job, message: str, refunded: int) -> None:
        await self.refused(
            f"Job {job.id}: {failure_text(message, refunded)}", public=public_failure(job, refunded)
        )

    async def refused(self, text: str, public: str = CHANNEL_FALLBACK) -> None:
        async with self._lock:
            self._finished = True
            if self.message is not None:
                with contextlib.suppress(discord.HTTPException):
                    await self.message.delete()
        await tell_privately(
            self.client, self.requester, text, self.interaction, self.channel, public=public
        )


async def tell_privately(
    client: discord.Client,
    user: discord.abc.User,
    text: str,
    interaction: discord.Interaction | None = None,
    channel: discord.abc.Messageable | None = None,
    *,
    public: str = CHANNEL_FALLBACK,
) -> None:
    """An ephemeral followup while the interaction lives, else a DM, else the channel.

    The channel reads `public` instead of `text`: a refusal may quote what the member typed
    (a banned word, a LoRA's name), and only they should read that.
    """
    if interaction is not None and not interaction.is_expired():
        try:
            await interaction.followup.send(text, ephemeral=True)
            return
        except discord.HTTPException as error:
            log.info("followup to user %s failed (%s); trying a DM", user.id, error)
    try:
        await user.send(text)  # type: ignore[attr-defined]  # a User or a Member: both DM
        return
    except discord.HTTPException as error:  # 50007: the member closed their DMs
        log.info("could not DM user %s (%s)", user.id, error)
    if channel is not None:
        with contextlib.suppress(discord.HTTPException):
            await channel.send(f"{user.mention} {public}", allowed_mentions=mention_only(user))


def previews_allowed(settings: Any, age_restricted: bool) -> bool:
    """Previews are posted unreviewed: only without a safety checker, or where anything may
    be shown (an age-restricted channel)."""
    return not settings.safety_checker or age_restricted


class ChannelPresenter:
    """For a job nobody waits on an interaction for (restored after a restart): the result
    is posted as a new message in the job's channel (a reply to the result it came from,
    for a button's job), a failure told by DM."""

    def __init__(
        self, client: discord.Client, job: Job, view: ResultViewFactory | None = None
    ) -> None:
        self.client = client
        self.job = job
        self.view = view

    def progress(self, job_id: int, progress: Progress) -> None:
        """No message to edit: the member hears when it is done."""

    async def waiting(self, entry: QueueEntry) -> None:
        """No message shows it waiting: nothing to edit when the queue pauses."""

    async def _channel(self) -> discord.abc.Messageable | None:
        if self.job.channel_id is None:
            return None
        channel = self.client.get_channel(self.job.channel_id)
        if channel is None:
            try:
                channel = await self.client.fetch_channel(self.job.channel_id)
            except (discord.NotFound, discord.Forbidden):  # gone, or no longer ours to see
                return None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        """Posted in the job's channel (a reply to the result it came from, for a button's
        job); by DM for a private result or when the channel is gone. None when neither
        can be reached: there is nowhere left to post it."""
        files = await asyncio.to_thread(
            result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT, outcome.params
        )
        kwargs: dict[str, Any] = {
            "embed": result_embed(outcome, None),
            "files": files,
            "allowed_mentions": mention_only(self.job.user_id),
            # Discord returns the message already made with this nonce instead of a second
            # one: a restart soon after a post that was not yet marked delivered.
            "nonce": f"sdr{self.job.id}",
            **_view_kwargs(self.view, outcome),
        }
        text = f"<@{self.job.user_id}> your job {self.job.id} finished after a restart."
        channel = None if self.job.private else await self._channel()
        if channel is None:
            return await self._send_to_member(text, kwargs)
        reference = outcome.parent_message_id
        if reference is not None and isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            with contextlib.suppress(discord.HTTPException):
                sent = await channel.send(
                    text, reference=channel.get_partial_message(reference), **kwargs
                )
                return sent.id
            kwargs["files"] = await asyncio.to_thread(
                result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT, outcome.params
            )
        try:
            sent = await channel.send(text, **kwargs)
        except discord.Forbidden as error:  # no right to post there any more: by DM then
            log.info("job %s: cannot post in its channel (%s); sending by DM", self.job.id, error)
            kwargs["files"] = await asyncio.to_thread(
                result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT, outcome.params
            )
            return await self._send_to_member(text, kwargs)
        return sent.id

    async def _send_to_member(self, text: str, kwargs: dict[str, Any]) -> int | None:
        user = self.client.get_user(self.job.user_id)
        try:
            user = user or await self.client.fetch_user(self.job.user_id)
            sent = await user.send(text, **kwargs)
        except (discord.NotFound, discord.Forbidden) as error:  # no such user, or DMs closed
            log.warning(
                "job %s: its channel is gone and its member cannot be reached (%s); the "
                "images stay on disk",
                self.job.id,
                error,
            )
            return None
        return sent.id

    async def failed(self, job: Job, message: str, refunded: int) -> None:
        text = f"Job {job.id}: {failure_text(message, refunded)}"
        user = self.client.get_user(job.user_id)
        if user is None:
            with contextlib.suppress(discord.HTTPException):
                user = await self.client.fetch_user(job.user_id)
        channel = await self._channel()
        public = public_failure(job, refunded)
        if user is not None:
            await tell_privately(self.client, user, text, channel=channel, public=public)
        elif channel is not None:
            await channel.send(
                f"<@{job.user_id}> {public}", allowed_mentions=mention_only(job.user_id)
            )


def result_embed(
    outcome: JobOutcome, requester: discord.abc.User | None, note: str = ""
) -> discord.Embed:
    """The result's embed (cogs/ui/rendering.py), naming the region of a Vary (Region)."""
    embed = plain_embed(outcome, requester, note)
    params = outcome.params
    if params.mode == "inpaint" and params.has_region:
        region = describe_region(params.mask_prompt, params.mask_cell)
        embed.insert_field_at(0, name="Region", value=region[:1024], inline=False)
    return embed


# Builds the buttons under a result (cogs/ui/buttons.py); a factory, so the presenters need
# not know the button classes.
ResultViewFactory = Callable[[JobOutcome], discord.ui.View | None]


def _view_kwargs(factory: ResultViewFactory | None, outcome: JobOutcome) -> dict[str, Any]:
    view = factory(outcome) if factory is not None else None
    return {"view": view} if view is not None else {}
