"""What the service layer and its callers exchange: tickets, outcomes, observers, and the
hooks through which a server's rules, the safety review and training plug into it.

Plain data and protocols only, so cogs, the CLI and the hooks can import them without the
service itself.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from data.credits import CreditPolicy
from data.jobs import Job, QueueCaps
from engine.api.params import GenerationParams, Progress

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredImage:
    seed: int
    path: Path
    width: int
    height: int
    infotext: str
    png: bytes
    variation_seed: int | None = None
    # Set by the safety review (bot/community/safety.py): `png` is then what may be posted
    # (blurred), the file at `path` stays the original; `spoiler` posts it behind Discord's cover.
    flagged: bool = False
    spoiler: bool = False
    # The engine's safety verdict, made with the batch; None: not checked yet.
    nsfw: bool | None = None


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job: Job
    params: GenerationParams
    images: list[StoredImage]
    model_hash: str | None
    run_seconds: float
    queued_seconds: float
    balance: int | None = None
    # For a job made from another's result (a button): the message showing that result.
    parent_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    job: Job
    params: GenerationParams
    position: int
    balance: int | None = None
    duplicate: bool = False
    note: str = ""  # what the server's rules changed (e.g. words moved to the negative)
    # Queued while the engine cannot be reached (GPU workers' Redis): it waits until it can.
    # Said apart from `note`, which stays with the result: the pause does not.
    paused: bool = False


class JobRefused(Exception):
    """The job was not accepted (credits, caps); the message is for the member."""


@dataclass(frozen=True, slots=True)
class Requester:
    """What the Discord layer knows of who asks and where, for the server's rules."""

    role_ids: frozenset[int] = frozenset()
    # The channel is marked age-restricted (NSFW). Unknown (a job restored after a restart)
    # counts as not: flagged images are then treated by the server's safety policy.
    age_restricted: bool = False
    is_admin: bool = False
    # Asked in a DM about a server's result (a button): the server's rules apply, but not
    # its channel rules.
    in_dm: bool = False


@dataclass(frozen=True, slots=True)
class Admission:
    """A job the rules let in: its parameters (the rules may change them), price and caps."""

    params: GenerationParams
    cost: int
    caps: QueueCaps
    note: str = ""
    credit_policy: CreditPolicy | None = None  # the server's top-up; None: the bot's


class Gate(Protocol):
    """A server's rules for a job, checked before anything is charged (bot/community/policy.py)."""

    async def admit(
        self,
        params: GenerationParams,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        interaction_id: int | None,
        requester: Requester,
    ) -> Admission:
        """JobRefused or InvalidParams say why not."""


class AdapterResolver(Protocol):
    """Finds the LoRA and embedding files a prompt names (bot/training/loras.py)."""

    async def resolve(
        self, params: GenerationParams, *, user_id: int, guild_id: int | None
    ) -> GenerationParams:
        """The files among those the member may use; InvalidParams for any other name."""


class Reviewer(Protocol):
    """Looks at finished images before they are posted (bot/community/safety.py)."""

    async def review(
        self, job_id: int, images: list[StoredImage], requester: Requester
    ) -> list[StoredImage]:
        """The images as they may be shown; JobRefused withholds the whole result."""

    async def reapply(self, job_id: int, images: list[StoredImage]) -> list[StoredImage]:
        """A stored result's images as the review decided they may be shown, for posting it
        again (after a restart) without checking them again."""


@dataclass(frozen=True, slots=True)
class QueueEntry:
    job_id: int
    user_id: int
    position: int  # 0 = running
    params: GenerationParams
    wait_seconds: float | None
    training: bool = False  # `params` then only describe it (its handler's `shown`)
    paused: bool = False  # waiting, and the engine cannot be reached (GPU workers' Redis)


@dataclass(frozen=True, slots=True)
class CancelResult:
    job_id: int
    message: str
    refunded: int = 0


class JobObserver(Protocol):
    """How a job's owner hears about it. `progress` runs on the loop and must not block."""

    def progress(self, job_id: int, progress: Progress) -> None: ...

    async def succeeded(self, outcome: JobOutcome) -> int | None:
        """Show the result; returns the id of the message that holds it, if any."""

    async def failed(self, job: Job, message: str, refunded: int) -> None: ...

    async def waiting(self, entry: QueueEntry) -> None:
        """The job still waits, at `entry.position`, and the queue has just paused or gone
        on (`entry.paused`; bot/jobs/pace_notices.py). Not told once the job runs."""


class IdleWait(Protocol):
    async def __call__(self, awaitable: Awaitable[T], *, reason: str) -> T: ...


async def plain_wait(awaitable: Awaitable[T], *, reason: str) -> T:
    return await awaitable


class PostAsIs:
    """The Reviewer of a bot without a safety review (the console, the benchmarks): every
    image is posted as made. The bot itself is always built with bot/community/safety.py."""

    async def review(
        self, job_id: int, images: list[StoredImage], requester: Requester
    ) -> list[StoredImage]:
        return images

    async def reapply(self, job_id: int, images: list[StoredImage]) -> list[StoredImage]:
        return images
