"""The safety review: every finished image is classified before it is posted.

Flagged images are recorded. In a channel marked age-restricted they are posted as they
are; elsewhere the server's policy blurs them (the posted copy only; the stored original is
untouched), hides them behind Discord's spoiler cover, or withholds the whole result, in
which case the job fails and its credits come back: the member paid for images they were
not given.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import replace

from PIL import Image, ImageFilter

from bot.community.guilds import GuildSettingsService, SafetyAction
from bot.jobs.contracts import JobRefused, Requester, StoredImage
from bot.settings import Settings
from data.jobs import JobRepository
from data.stats import StatsRepository
from engine.api.errors import EngineError
from engine.api.port import EnginePort
from engine.imaging.images import encode_png

log = logging.getLogger(__name__)

POSTED = "posted"  # recorded for flagged images shown as they are (age-restricted channel)
# A blur radius of an eighth of the image's longer side leaves colours and nothing else.
BLUR_FRACTION = 8
MIN_BLUR = 8


def blur_png(png: bytes, infotext: str) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    radius = max(MIN_BLUR, max(image.size) // BLUR_FRACTION)
    return encode_png(image.filter(ImageFilter.GaussianBlur(radius)), infotext)


class SafetyReview:
    """The Reviewer DreamService consults after generation and before posting."""

    def __init__(
        self,
        settings: Settings,
        engine: EnginePort,
        guilds: GuildSettingsService,
        jobs: JobRepository,
        stats: StatsRepository,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.guilds = guilds
        self.jobs = jobs
        self.stats = stats

    async def review(
        self, job_id: int, images: list[StoredImage], requester: Requester
    ) -> list[StoredImage]:
        source = self.settings.safety_checker
        if not source or not images:
            return images
        try:
            flags = await self._verdicts(source, images)
        except EngineError as error:
            # Closed, not open: a community that asked for a filter gets nothing unchecked.
            log.warning("job=%s safety check failed: %s", job_id, error)
            raise JobRefused(
                "The safety check could not run, so the images were not posted."
            ) from None
        flagged = [idx for idx, flag in enumerate(flags) if flag]
        if not flagged:
            return images
        job = await self.jobs.get(job_id)
        policy = await self.guilds.policy(job.guild_id if job is not None else None)
        action = POSTED if requester.age_restricted else policy.safety.value
        await self.stats.record_flags(job_id, flagged, action)
        log.info("job=%s flagged images %s: %s", job_id, flagged, action)
        if requester.age_restricted:
            return [replace(image, flagged=flag) for image, flag in zip(images, flags, strict=True)]
        if policy.safety is SafetyAction.REFUSE:
            raise JobRefused(
                f"The safety filter flagged {len(flagged)} of the {len(images)} image(s), so "
                "this result is not posted here."
            )
        return [
            await self._treat(image, policy.safety) if flag else image
            for image, flag in zip(images, flags, strict=True)
        ]

    async def _verdicts(self, source: str, images: list[StoredImage]) -> list[bool]:
        """The engine's verdicts made with the batch, or (training samples, a checker that
        failed there) asked for now."""
        made = [image.nsfw for image in images]
        if all(flag is not None for flag in made):
            return [bool(flag) for flag in made]
        return await self.engine.check_safety(source, [image.png for image in images])

    async def reapply(self, job_id: int, images: list[StoredImage]) -> list[StoredImage]:
        flags = await self.stats.flags(job_id)
        treated = []
        for idx, image in enumerate(images):
            action = flags.get(idx)
            if action is None:
                treated.append(image)
            elif action == POSTED:  # shown as it is where it was asked for
                treated.append(replace(image, flagged=True))
            else:
                treated.append(await self._treat(image, SafetyAction(action)))
        return treated

    @staticmethod
    async def _treat(image: StoredImage, action: SafetyAction) -> StoredImage:
        if action is SafetyAction.SPOILER:
            return replace(image, flagged=True, spoiler=True)
        blurred = await asyncio.to_thread(blur_png, image.png, image.infotext)
        return replace(image, png=blurred, flagged=True)
