"""/describe: a member's picture read into four prompts, and the buttons 1-4 under them,
each of which runs /dream with its prompt for whoever pressed.

Describing is free, as Midjourney's /describe costs no fast time: it is a second of the
GPU, far less than the image it leads to, which is priced and queued as any /dream. What
bounds it is the server's rules (the blocklist, the channels the bot works in) and one
/describe at a time per member, so nobody can fill the engine's queue with them.
The prompts are stored (data/descriptions.py); a button carries only their row's id and
the prompt's number, and who may press is decided as for a result's buttons.
"""

from __future__ import annotations

import asyncio
import logging

from bot.community.policy import CommunityPolicy
from bot.community.prefs import PreferenceService
from bot.generation.options import DreamOptions
from bot.generation.results import Presser, Results
from bot.generation.service import DreamService
from bot.jobs.contracts import JobObserver, JobRefused, Requester, Ticket
from bot.settings import Settings
from data.descriptions import Description, DescriptionRepository
from data.jobs import Origin
from engine.api.describe import NOT_SET_UP, PROMPTS
from engine.api.errors import EngineError
from engine.api.port import EnginePort
from engine.imaging import attachments

log = logging.getLogger(__name__)

ACTION = "describe"  # the jobs its buttons start, as a result's actions are named
STILL_DESCRIBING = "Your last picture is still being described; wait for its prompts."
GONE = "Those prompts are gone; describe the picture again."
# What the engine is sent: the captioner looks at 384 pixels a side, CLIP at 224.
LONGEST_SIDE = 768


class Descriptions:
    def __init__(
        self,
        settings: Settings,
        engine: EnginePort,
        repository: DescriptionRepository,
        results: Results,
        dreams: DreamService,
        prefs: PreferenceService,
        community: CommunityPolicy | None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.repository = repository
        self.results = results
        self.dreams = dreams
        self.prefs = prefs
        self.community = community
        self._describing: set[int] = set()  # members with a /describe in hand

    @property
    def available(self) -> bool:
        return bool(self.settings.captioner and self.settings.clip_ranker)

    def check_available(self) -> None:
        if not self.available:
            raise JobRefused(NOT_SET_UP)

    async def describe(
        self,
        picture: bytes,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        requester: Requester,
    ) -> Description:
        """The picture's four prompts, stored for the buttons; JobRefused (not set up, the
        server's rules, one at a time, the engine failing) or UnreadableImage say why not,
        having stored nothing."""
        self.check_available()
        if self.community is not None:
            await self.community.admit_member(
                user_id=user_id, guild_id=guild_id, channel_id=channel_id, requester=requester
            )
        if user_id in self._describing:
            raise JobRefused(STILL_DESCRIBING)
        self._describing.add(user_id)
        try:
            prepared = await asyncio.to_thread(
                attachments.prepare_for_reading,
                picture,
                max_pixels=self.settings.max_attachment_pixels,
                longest=LONGEST_SIDE,
            )
            try:
                prompts = await self.engine.describe(prepared.png)
            except EngineError as failed:
                raise JobRefused(failed.user_message) from None
        finally:
            self._describing.discard(user_id)
        described = await self.repository.add(
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            private=guild_id is None,
            prompts=prompts[:PROMPTS],
        )
        log.info("description=%s user=%s prompts=%d", described.id, user_id, len(prompts))
        return described

    async def pressed(
        self, description_id: int, number: int, presser: Presser
    ) -> tuple[Description, str]:
        """The prompts a button refers to and the one it names, if `presser` may press it
        (the rule of a result's buttons)."""
        described = await self.repository.get(description_id)
        if described is None:
            raise JobRefused(GONE)
        await self.results.check_may_press(described, presser)
        if not 1 <= number <= len(described.prompts):
            raise JobRefused(GONE)
        return described, described.prompts[number - 1]

    async def dream(
        self,
        description_id: int,
        number: int,
        presser: Presser,
        observer: JobObserver,
        *,
        interaction_id: int | None = None,
    ) -> Ticket:
        """/dream with prompt `number` for the presser: their preferences and the server's
        defaults fill the rest; priced, admitted and queued as any /dream. A second press
        while its job is pending gets that job back, charged once."""
        self.check_available()
        described, prompt = await self.pressed(description_id, number, presser)
        options = DreamOptions(prompt, prompt_syntax="a1111")  # the prompts are A1111's
        filled = await self.prefs.fill(
            options, user_id=presser.user_id, guild_id=described.guild_id
        )
        params = self.dreams.build_params(filled.options)
        guild_id, requester = presser.rules_for(described)
        key = f"{ACTION}:{description_id}:{number}"
        return await self.dreams.submit(
            params,
            user_id=presser.user_id,
            guild_id=guild_id,
            channel_id=presser.channel_id,
            interaction_id=interaction_id,
            observer=observer,
            origin=Origin(None, ACTION, key),
            requester=requester,
            private=described.private or presser.guild_id is None,
        )
