"""/train: a member teaches the model a face, a pet or a style from their own photos.

Training outlives the interaction's 15-minute token, so its progress lives in a message of
the bot's own in the channel (edited with step, loss and time left, under a Cancel
button), and the result is posted as a new message and sent to the member by DM.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client.replies import first_delivery, mention_only
from bot.jobs.contracts import JobRefused, Ticket
from bot.jobs.kinds import JobKind
from bot.training.outcomes import TrainedOutcome
from cogs.ui.buttons import NO_SUCH_BUTTON, job_id_of
from cogs.ui.context import requester_of
from cogs.ui.live import LiveMessage, with_pause
from cogs.ui.options import model_autocomplete
from cogs.ui.presenter import DreamPresenter
from cogs.ui.rendering import credits_text, failure_text
from cogs.ui.starting import download
from data.jobs import Job
from engine.api.lora_files import copy_readers
from engine.api.params import InvalidParams
from engine.api.training_params import TrainingProgress

if TYPE_CHECKING:
    from bot.client.app import SDBot

log = logging.getLogger(__name__)

MAX_ATTACHMENTS = 10  # Discord's slash commands take a fixed list of options
DM_FILE_LIMIT = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES  # a DM's upload limit: 10 MiB
CANCEL_TEMPLATE = r"sd:traincancel:(?P<job>[0-9]{1,20})"


def training_line(progress: TrainingProgress) -> str:
    if progress.step == 0:
        return "Starting…"
    filled = round(progress.fraction * 12)
    bar = "█" * filled + "░" * (12 - filled)
    parts = [f"`{bar}` {progress.phase} {progress.step}/{progress.total}"]
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.seconds_left is not None:
        parts.append(f"about {_duration(progress.seconds_left)} left")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class CancelTraining(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CANCEL_TEMPLATE):
    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel",
                style=discord.ButtonStyle.danger,
                custom_id=f"sd:traincancel:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any
    ) -> CancelTraining:
        return cls(job_id_of(match["job"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return first_delivery(interaction)

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: SDBot = interaction.client  # type: ignore[assignment]
        if self.job_id == 0:
            await interaction.response.send_message(f"❌ {NO_SUCH_BUTTON}", ephemeral=True)
            return
        try:
            result = await bot.scheduler.cancel(
                self.job_id,
                by_user=interaction.user.id,
                is_admin=bot.is_admin(interaction.user),
                guild_id=interaction.guild_id,
                is_owner=bot.is_owner_id(interaction.user.id),
            )
        except JobRefused as refused:
            await interaction.response.send_message(f"❌ {refused}", ephemeral=True)
            return
        refund = f" {credits_text(result.refunded)} refunded." if result.refunded else ""
        await interaction.response.send_message(result.message + refund, ephemeral=True)


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelTraining(job_id))
    return view


class TrainingPresenter(LiveMessage):
    """A training job's own message in its channel: queued, progress, then done or failed.

    The same for a job just asked for and one restored after a restart: it needs no
    interaction, only the channel and the member.
    """

    def __init__(self, bot: SDBot, channel_id: int | None, user_id: int, name: str) -> None:
        super().__init__(bot.settings.progress_interval)
        self.bot = bot
        self.channel_id = channel_id
        self.user_id = user_id
        self.name = name
        self.message: discord.Message | None = None
        self.job_id: int | None = None

    @classmethod
    def for_job(cls, bot: SDBot, job: Job) -> TrainingPresenter:
        presenter = cls(bot, job.channel_id, job.user_id, str(job.params.get("name", "?")))
        presenter.job_id = job.id
        return presenter

    def decorate(self, text: str) -> str:
        return f"Training **{self.name}** for <@{self.user_id}>: {text}"

    def progress_text(self, progress: Any) -> str:
        return training_line(progress)

    async def _channel(self) -> discord.abc.Messageable | None:
        if self.channel_id is None:
            return None
        channel = self.bot.get_channel(self.channel_id)
        if channel is None:
            with contextlib.suppress(discord.HTTPException):
                channel = await self.bot.fetch_channel(self.channel_id)
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def _write(self, **kwargs: Any) -> discord.Message | None:
        kwargs.pop("attachments", None)
        if self.message is not None:
            return await self.message.edit(**kwargs)
        channel = await self._channel()
        if channel is None:
            return None
        view = cancel_view(self.job_id) if self.job_id is not None else discord.ui.View()
        self.message = await channel.send(
            kwargs.get("content"), allowed_mentions=discord.AllowedMentions.none(), view=view
        )
        return self.message

    async def queued(self, ticket: Ticket) -> int | None:
        self.job_id = ticket.job.id
        return await super().queued(ticket)

    def queued_text(self, ticket: Ticket) -> str:
        money = f"cost {credits_text(ticket.job.cost)}"
        if ticket.balance is not None:
            money += f", balance {ticket.balance}"
        notes = with_pause(ticket.note, ticket.paused)
        tail = f" {notes}" if notes else ""
        return f"queued as job {ticket.job.id}, position {ticket.position} ({money}).{tail}"

    async def trained(self, outcome: TrainedOutcome) -> int | None:
        async with self._lock:
            self._finished = True
            if self.message is not None:
                with contextlib.suppress(discord.HTTPException):
                    await self.message.edit(
                        content=self.decorate(f"done in {_duration(outcome.seconds)}."), view=None
                    )
        text = _done_text(outcome)
        sent = None
        channel = await self._channel()
        if channel is not None:
            try:
                sent = await channel.send(
                    f"<@{self.user_id}> {text}",
                    files=_sample_files(outcome),
                    allowed_mentions=mention_only(self.user_id),
                )
            except discord.HTTPException as error:  # no right to post here: the DM has it
                log.info("training job %s: could not post in its channel (%s)", self.job_id, error)
        copy_line, copy_files = await _a1111_attachment(outcome)
        dm_text = f"{text}\n{copy_line}" if copy_line else text
        await self._dm(dm_text, _sample_files(outcome) + copy_files)
        return sent.id if sent is not None else None

    async def failed(self, job: Job, message: str, refunded: int) -> None:
        text = failure_text(message, refunded)
        async with self._lock:
            self._finished = True
            if self.message is not None:
                with contextlib.suppress(discord.HTTPException):
                    await self.message.edit(content=self.decorate(text), view=None)
        await self._dm(f"Training {self.name} (job {job.id}): {text}", [])

    async def _dm(self, text: str, files: list[discord.File]) -> None:
        user = self.bot.get_user(self.user_id)
        try:
            user = user or await self.bot.fetch_user(self.user_id)
            await user.send(text, files=files)
        except discord.HTTPException as error:  # 50007: DMs closed; the channel has it
            log.info("could not DM user %s about training (%s)", self.user_id, error)


def _done_text(outcome: TrainedOutcome) -> str:
    kind = "LoRA" if outcome.lora.method == "lora" else "embedding"
    resumed = f" (resumed from step {outcome.resumed_from})" if outcome.resumed_from else ""
    return (
        f"your {kind} **{outcome.lora.name}** is ready{resumed}. Use it with\n"
        f"`/dream prompt: {outcome.usage}`\n"
        f"It is private; `/loras share {outcome.lora.name}` lets this server use it."
    )


async def _a1111_attachment(outcome: TrainedOutcome) -> tuple[str, list[discord.File]]:
    """The DM's file in A1111's format, or why it is not attached (Discord's upload limit
    for a DM: boosts raise only a server's). The channel never gets it: it is private."""
    path = outcome.a1111_file
    if path is None:
        return "", []
    name, lora = outcome.a1111_name, outcome.lora
    readers = copy_readers(lora.metadata)
    if lora.method == "lora":
        where = f"put it in `models/Lora` (ComfyUI: `models/loras`), use `<lora:{lora.name}:0.8>`"
    else:
        where = f"put it in `embeddings` (ComfyUI: `models/embeddings`), write `{lora.token}`"
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    if size > DM_FILE_LIMIT:
        return (
            f"The file for {readers} ({size / 1024**2:.1f} MB) is over Discord's "
            f"{DM_FILE_LIMIT // 1024**2} MB limit for a DM, so it is not attached; the bot's "
            "owner can give it to you.",
            [],
        )
    data = await asyncio.to_thread(path.read_bytes)
    return f"`{name}` is attached for {readers}: {where}.", [
        discord.File(io.BytesIO(data), filename=name)
    ]


def _sample_files(outcome: TrainedOutcome) -> list[discord.File]:
    return [
        discord.File(
            io.BytesIO(sample.png),
            filename=f"{outcome.lora.name}-sample-{idx + 1}.png",
            spoiler=sample.spoiler,  # the server's safety policy covers it
        )
        for idx, sample in enumerate(outcome.samples)
    ]


class Train(commands.Cog):
    def __init__(self, bot: SDBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CancelTraining)
        self.bot.scheduler.hear_restored(
            JobKind.TRAIN, lambda job: TrainingPresenter.for_job(self.bot, job)
        )

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CancelTraining)
        self.bot.scheduler.hear_restored(JobKind.TRAIN, None)

    @app_commands.command(name="train", description="Teach the model a face, a pet or a style")
    @app_commands.describe(
        name="A name for what you train (letters, digits, - or _)",
        image1="A photo, or one .zip of 3-20 photos",
        class_word="What it is: person, dog, cat, style...",
        method="lora (DreamBooth-style, the default) or embedding (textual inversion)",
        steps="Training steps (more learns more, and costs more)",
        rank="LoRA rank: its capacity (4-32 is usual)",
        learning_rate="How fast it learns (LoRA 1e-4, embedding 5e-3 by default)",
        prior_preservation="Also train on generated pictures of the class, to keep it general",
        model="The model to train on",
    )
    @app_commands.autocomplete(model=model_autocomplete)
    async def train(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 64],
        image1: discord.Attachment,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        image5: discord.Attachment | None = None,
        image6: discord.Attachment | None = None,
        image7: discord.Attachment | None = None,
        image8: discord.Attachment | None = None,
        image9: discord.Attachment | None = None,
        image10: discord.Attachment | None = None,
        class_word: app_commands.Range[str, 0, 32] = "",
        method: Literal["lora", "embedding"] = "lora",
        steps: app_commands.Range[int, 1, 100_000] | None = None,
        rank: app_commands.Range[int, 1, 1024] | None = None,
        learning_rate: app_commands.Range[float, 0.0, 1.0] | None = None,
        prior_preservation: bool = False,
        model: str | None = None,
    ) -> None:
        attachments = [
            a
            for a in (
                image1,
                image2,
                image3,
                image4,
                image5,
                image6,
                image7,
                image8,
                image9,
                image10,
            )
            if a is not None
        ]
        for attachment in attachments:  # by the size Discord reports, before downloading
            self.bot.images.check_size(attachment.size, f"file {attachment.filename[:40]}")
        await interaction.response.defer(thinking=True)
        training = self.bot.training
        try:
            files = [(a.filename, await download(a, a.filename[:40])) for a in attachments]
            params, note = await training.prepare(
                files,
                name=name,
                user_id=interaction.user.id,
                model=model,
                class_word=class_word,
                method=method,
                steps=steps,
                rank=rank,
                learning_rate=learning_rate,
                prior_preservation=prior_preservation,
            )
            presenter = TrainingPresenter(
                self.bot, interaction.channel_id, interaction.user.id, params.name
            )
            ticket = await training.submit(
                params,
                user_id=interaction.user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                interaction_id=interaction.id,
                observer=presenter,
                requester=requester_of(
                    interaction.user,
                    interaction.channel,
                    is_admin=self.bot.is_admin(interaction.user),
                ),
            )
        except (InvalidParams, JobRefused) as bad:
            await DreamPresenter(interaction, 0.0).refused(f"❌ {bad}")
            return
        if ticket.duplicate:
            await interaction.edit_original_response(
                content=f"Already queued as job {ticket.job.id}."
            )
            return
        message_id = await presenter.queued(ticket)
        if message_id is not None:
            await self.bot.scheduler.set_message(ticket.job.id, message_id)
        skipped = f"\nSkipped: {note}" if note else ""
        count = len(params.image_keys)
        await interaction.edit_original_response(
            content=(
                f"Training **{params.name}** on {count} pictures ({params.method}, "
                f"{params.steps} steps, token `{params.token}`): job {ticket.job.id}, "
                f"cost {credits_text(ticket.job.cost)}. Progress is posted in this channel, "
                f"and you get a DM when it is done.{skipped}"
            )
        )


async def setup(bot: SDBot) -> None:
    await bot.add_cog(Train(bot))
