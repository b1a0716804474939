"""How a job looks in Discord while it waits, runs, succeeds or fails."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import discord

from bot.client.replies import CHANNEL_FALLBACK, mention_only, reply_ephemeral
from bot.generation.actions import Action
from bot.generation.service import worth_retrying
from bot.jobs.contracts import JobOutcome, StoredImage, Ticket
from data.jobs import Job
from engine.api.params import GenerationParams, Progress
from engine.api.samplers import AUTOMATIC, resolved_schedule
from engine.imaging.images import EncodedImage, fit_to_limit

log = logging.getLogger(__name__)

# Discord: 25 MiB per request in all, whatever a single file may be.
REQUEST_LIMIT = 25 * 1024 * 1024
# Discord's upload limit for a server without boosts; used where no interaction says more.
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024
PROGRESS_BAR_WIDTH = 12
FIELD_LIMIT = 1024
DESCRIPTION_LIMIT = 4096


def progress_line(progress: Progress) -> str:
    filled = round(progress.fraction * PROGRESS_BAR_WIDTH)
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    if progress.step == 0:
        return "Starting…"
    return f"`{bar}` step {progress.step}/{progress.total} ({progress.fraction:.0%})"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


MODE_TITLES = {
    "txt2img": "Dream",
    "img2img": "Image to image",
    "inpaint": "Inpainting",
    "outpaint": "Outpainting",
    "upscale": "Upscale",
}


def result_embed(
    outcome: JobOutcome, requester: discord.abc.User | None, note: str = ""
) -> discord.Embed:
    params = outcome.params
    embed = discord.Embed(description=_clip(params.prompt, DESCRIPTION_LIMIT), colour=0x5865F2)
    title = MODE_TITLES.get(params.mode, params.mode)
    if outcome.job.action:
        title = f"{title} ({action_name(outcome.job.action)} of job {outcome.job.parent_id})"
    if requester is not None:
        embed.set_author(name=f"{title} for {requester.display_name}")
    else:
        embed.set_author(name=title)
    if params.negative:
        embed.add_field(name="Negative", value=_clip(params.negative, FIELD_LIMIT), inline=False)
    seeds = ", ".join(dict.fromkeys(str(image.seed) for image in outcome.images))
    embed.add_field(name="Seed" if "," not in seeds else "Seeds", value=seeds)
    if params.has_variation:
        variations = ", ".join(str(image.variation_seed) for image in outcome.images)
        embed.add_field(name="Variation seed", value=variations)
        embed.add_field(name="Variation strength", value=f"{params.variation_strength:g}")
    if params.clip_skip != 1:
        embed.add_field(name="Clip skip", value=str(params.clip_skip))
    embed.add_field(name="Steps", value=str(params.steps))
    embed.add_field(name="Sampler", value=_sampler_text(params))
    embed.add_field(name="CFG", value=f"{params.cfg:g}")
    embed.add_field(name="Size", value=params.size)
    embed.add_field(name="Model", value=params.model)
    if params.mode != "txt2img":
        embed.add_field(name="Denoising", value=f"{params.denoise:g}")
    if params.mode == "upscale":
        embed.add_field(name="Upscale", value=f"{params.upscale:g}x")
    if params.control_type is not None:
        embed.add_field(name="Control", value=f"{params.control_type} ({params.control_scale:g})")
    embed.add_field(name="Time", value=f"{outcome.run_seconds:.1f}s")
    if note:
        embed.add_field(name="Note", value=_clip(note, FIELD_LIMIT), inline=False)
    footer = f"job {outcome.job.id} · cost {credits_text(outcome.job.cost)}"
    if outcome.balance is not None:
        footer += f" · balance {outcome.balance}"
    embed.set_footer(text=footer)
    return embed


def action_name(value: str) -> str:
    """ "Zoom out 2x" for a job's stored action "zoom2"; a name this version lacks as is."""
    try:
        return Action(value).label.lower()
    except ValueError:
        return value


def encode_for_upload(images: list[StoredImage], file_limit: int) -> list[EncodedImage]:
    """Every image, each under the per-file limit and all together under the request limit."""
    per_file = min(file_limit, REQUEST_LIMIT // max(len(images), 1))
    return [fit_to_limit(image.png, image.infotext, per_file) for image in images]


def result_files(job_id: int, images: list[StoredImage], file_limit: int) -> list[discord.File]:
    encoded = encode_for_upload(images, file_limit)
    return [
        # Discord hides a file whose name starts SPOILER_ until it is clicked.
        _png_file(
            item.data,
            f"{'SPOILER_' if image.spoiler else ''}{job_id}-{idx}-{image.seed}.{item.extension}",
        )
        for idx, (image, item) in enumerate(zip(images, encoded, strict=True))
    ]


class LiveMessage:
    """A message that shows one job while it waits and runs; all edits go through a lock.

    Progress edits are throttled to one per `interval` seconds and only when the text
    changes (Discord rate-limits edits per route); the final edit always wins. Subclasses
    say how the message is written.
    """

    def __init__(self, interval: float, note: str = "") -> None:
        self.interval = interval
        self.note = note
        self._lock = asyncio.Lock()
        self._finished = False
        self._last_text = ""
        self._last_edit = float("-inf")
        self._editing = False
        self._preview: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Latent previews show the picture before the safety review has seen it: off where
        # the review applies (see `previews_allowed`).
        self.previews = True

    async def _write(self, **kwargs: Any) -> discord.Message | None:
        raise NotImplementedError

    def queued_text(self, ticket: Ticket) -> str:
        money = f" Cost {credits_text(ticket.job.cost)}"
        money += f", balance {ticket.balance}." if ticket.balance is not None else "."
        note = f"\n{self.note}" if self.note else ""
        return f"Queued: position {ticket.position}. {describe(ticket.params)}.{money}{note}"

    async def queued(self, ticket: Ticket) -> int | None:
        """Show the queue position; returns the id of the message the job lives in."""
        message = await self._edit(self.queued_text(ticket))
        return message.id if message is not None else None

    def progress_text(self, progress: Any) -> str:
        return progress_line(progress)

    def progress(self, job_id: int, progress: Any) -> None:
        preview = getattr(progress, "preview_png", None)
        if preview is not None and self.previews:
            self._preview = preview
        text = self.progress_text(progress)
        if self._finished or self._editing or text == self._last_text:
            return
        if time.monotonic() - self._last_edit < self.interval:
            return
        self._editing = True
        task = asyncio.create_task(self._progress_edit(text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _progress_edit(self, text: str) -> None:
        try:
            preview, self._preview = self._preview, None
            if preview is None:
                await self._edit(text)
            else:
                await self._edit(text, attachments=[_png_file(preview, "preview.png")])
        finally:
            self._editing = False

    async def _edit(self, text: str, **kwargs: Any) -> discord.Message | None:
        async with self._lock:
            if self._finished:
                return None
            self._last_text = text
            self._last_edit = time.monotonic()
            try:
                return await self._write(content=self.decorate(text), **kwargs)
            except discord.HTTPException as error:
                log.warning("progress edit failed: %s", error)
                return None

    def decorate(self, text: str) -> str:
        return text


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
            result_files, outcome.job.id, outcome.images, self.interaction.filesize_limit
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
            result_files, outcome.job.id, outcome.images, self.interaction.filesize_limit
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
            result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT
        )
        content = f"{self.label} for {self.requester.mention}"
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
                        result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT
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


def public_failure(job: Job, refunded: int) -> str:
    """What the channel may read of a failure the member could not be told privately: the
    job and the refund, not the reason (which may quote their prompt)."""
    refund = f" {credits_text(refunded)} refunded." if refunded else ""
    return f"job {job.id} could not be finished.{refund} Open your DMs to hear why."


def credits_text(amount: int) -> str:
    return f"{amount} credit" if amount == 1 else f"{amount} credits"


def failure_text(message: str, refunded: int) -> str:
    sentence = message if message.endswith((".", "!", "?")) else message + "."
    refund = f" Your {credits_text(refunded)} {'was' if refunded == 1 else 'were'} refunded."
    return f"❌ {sentence}{refund if refunded else ''}"


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
            result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT
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
                result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT
            )
        try:
            sent = await channel.send(text, **kwargs)
        except discord.Forbidden as error:  # no right to post there any more: by DM then
            log.info("job %s: cannot post in its channel (%s); sending by DM", self.job.id, error)
            kwargs["files"] = await asyncio.to_thread(
                result_files, outcome.job.id, outcome.images, DEFAULT_FILE_LIMIT
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


# Builds the buttons under a result (cogs/ui/buttons.py); a factory, so the presenters need
# not know the button classes.
ResultViewFactory = Callable[[JobOutcome], discord.ui.View | None]


def _view_kwargs(factory: ResultViewFactory | None, outcome: JobOutcome) -> dict[str, Any]:
    view = factory(outcome) if factory is not None else None
    return {"view": view} if view is not None else {}


def _png_file(data: bytes, filename: str) -> discord.File:
    return discord.File(io.BytesIO(data), filename=filename)


def describe(params: GenerationParams) -> str:
    return (
        f"{params.count}× {params.size}, {params.steps} steps, {_sampler_text(params)}, "
        f"CFG {params.cfg:g}, seed {params.seed}, {params.model}"
    )


def _sampler_text(params: GenerationParams) -> str:
    """`DPM++ 2M Karras`: the sampler and the schedule that ran, as members say it."""
    schedule = resolved_schedule(params.sampler, params.schedule)
    return params.sampler if schedule == AUTOMATIC else f"{params.sampler} {schedule}"
