"""A result as members reach it: who may see it or press its buttons, its images, and
deleting it. Decided from the stored job alone, never from where a button seems to be.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from bot.community.guilds import GuildSettingsService
from bot.generation.options import TRAIN
from bot.jobs.contracts import JobRefused, Requester
from bot.settings import Settings
from data.jobs import Job, JobImage, JobRepository, JobStatus

# The same answer whether the job is another server's, another channel's or someone's DM:
# it says nothing of the job.
NOT_YOURS = "That result is not one you can see here."


class Posted(Protocol):
    """What the rules below judge by: a job's result, or /describe's prompts."""

    @property
    def user_id(self) -> int: ...
    @property
    def guild_id(self) -> int | None: ...
    @property
    def channel_id(self) -> int | None: ...
    @property
    def private(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Presser:
    """Who pressed, and with what standing where the result was posted."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    is_admin: bool = False  # an admin of the server the click came from
    is_owner: bool = False
    requester: Requester = field(default_factory=Requester)  # roles and channel, for the rules

    def admin_of(self, job: Posted) -> bool:
        return self.is_owner or (
            self.is_admin and job.guild_id is not None and job.guild_id == self.guild_id
        )

    def rules_for(self, posted: Posted) -> tuple[int | None, Requester]:
        """The server whose rules a job this press starts is under, and the requester they
        judge: a press in a DM on what a server's member asked for there (results by DM) is
        still under that server's rules; only its channel rules cannot apply."""
        if self.guild_id is None and posted.guild_id is not None:
            return posted.guild_id, replace(self.requester, in_dm=True)
        return self.guild_id, self.requester


@dataclass(frozen=True, slots=True)
class ResultImage:
    idx: int
    seed: int
    png: bytes
    infotext: str
    filename: str


class Results:
    def __init__(
        self, settings: Settings, jobs: JobRepository, guilds: GuildSettingsService
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.guilds = guilds

    # -- what a click refers to ---------------------------------------------------------

    async def result(
        self, job_id: int, presser: Presser, *, use: bool = False, training: bool = False
    ) -> Job:
        """The finished job a button or reaction refers to, if `presser` may see it (and,
        with `use`, act on it); JobRefused when there is none or they may not.

        A training result has nothing to reroll or vary; only `training=True` (deleting it)
        accepts one.
        """
        job = await self.jobs.get(job_id)
        if job is None:
            raise JobRefused(f"There is no job {job_id} any more.")
        # Who may look comes first: a refusal must not tell a stranger anything of the job.
        if use:
            await self.check_may_press(job, presser)
        else:
            self.check_may_see(job, presser)
        if job.deleted_at is not None:
            raise JobRefused(f"Job {job_id}'s result was deleted.")
        if job.status is not JobStatus.SUCCEEDED:
            raise JobRefused(f"Job {job_id} has no result to work from ({job.status.value}).")
        if job.kind == TRAIN and not training:
            raise JobRefused("That is a training result: use what it learned in /dream.")
        return job

    async def result_for_message(self, message_id: int) -> Job | None:
        return await self.jobs.by_message(message_id)

    @staticmethod
    def check_may_see(job: Posted, presser: Presser) -> None:
        """The requester and owners anywhere; nobody else a result delivered by DM; an admin
        of the job's server from that server; anyone else only in the channel the result was
        posted in.

        Custom ids and message ids arrive from anyone who can craft an interaction, so this
        is decided from the stored job alone, never from where the button seems to be.
        """
        if job.user_id == presser.user_id or presser.is_owner:
            return
        if job.private:  # the server never saw it, so its admins have nothing to moderate
            raise JobRefused(NOT_YOURS)
        if presser.admin_of(job):
            return
        posted_here = (
            job.guild_id is not None
            and job.guild_id == presser.guild_id
            and job.channel_id == presser.channel_id
        )
        if not posted_here:
            raise JobRefused(NOT_YOURS)

    async def check_may_press(self, job: Posted, presser: Presser) -> None:
        """Seeing, and then: the requester, an admin of the job's server, an owner; anyone if
        the server lets them (each pays for their own clicks)."""
        self.check_may_see(job, presser)
        if job.user_id == presser.user_id or presser.admin_of(job):
            return
        if (await self.guilds.policy(job.guild_id)).buttons_for_anyone:
            return
        raise JobRefused(f"Only <@{job.user_id}> can use the buttons of this result.")

    async def _image(self, job: Job, image: int | None) -> JobImage:
        check_not_expired(job)
        images = await self.jobs.images(job.id)
        for stored in images:
            if stored.idx == image:
                return stored
        raise JobRefused(f"Job {job.id} has no image {(image or 0) + 1}.")

    async def _image_bytes(self, job: Job, image: JobImage) -> bytes:
        try:
            return await asyncio.to_thread(Path(image.path).read_bytes)
        except FileNotFoundError:
            raise JobRefused(
                f"The images of job {job.id} are no longer on the bot's disk."
            ) from None

    # -- actions that do not start a job ------------------------------------------------

    async def infotexts(self, job: Job) -> list[str]:
        """A result's parameters, from the store (the files are not needed for them); `job`
        comes from `result`, which checked who asks."""
        return [stored.infotext for stored in await self.jobs.images(job.id)]

    async def images(self, job_id: int, presser: Presser) -> list[ResultImage]:
        """A result's images with their parameters (for the ✉️ reaction)."""
        job = await self.result(job_id, presser)
        check_not_expired(job)
        found = []
        for stored in await self.jobs.images(job.id):
            png = await self._image_bytes(job, stored)
            name = f"{job.id}-{stored.idx}-{stored.seed}.png"
            found.append(ResultImage(stored.idx, stored.seed, png, stored.infotext, name))
        return found

    async def delete(self, job_id: int, presser: Presser) -> Job:
        """Mark the result deleted and remove its files; the caller removes the message."""
        job = await self.result(job_id, presser, training=True)
        if job.user_id != presser.user_id and not presser.admin_of(job):
            raise JobRefused(
                "Only the member who asked for this result, or an admin, can delete it."
            )
        if not await self.jobs.mark_deleted(job.id):
            raise JobRefused(f"Job {job_id}'s result was already deleted.")
        folder = self.settings.images_dir / str(job.id)
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return job


# Midjourney's Custom Zoom takes 1.0-2.0; 1 itself would change nothing.


def check_not_expired(job: Job) -> None:
    """The retention sweep (bot/jobs/retention.py) removed this result's images: what needs them
    says so; rerolls and edits, which need only the parameters, still work."""
    if job.expired_at is not None:
        raise JobRefused(
            f"The images of job {job.id} expired: this server's bot keeps results for a "
            "limited time."
        )
