"""What the GPU-worker tests share: stand-ins for the member's presenters, a wait on
work done elsewhere, and the environment `python -m bot` is started with."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import DEADLINE
from tests.factories import photo

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """Stands where the Discord presenter does: what the member would have been told."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.failures: list[tuple[int, str]] = []
        self.steps: list[int] = []
        self.waits: list[Any] = []  # the QueueEntry of each pause and resume told
        self.ended = asyncio.Event()

    def progress(self, job_id: int, progress: Any) -> None:
        self.steps.append(progress.step)

    async def succeeded(self, outcome: Any) -> int | None:
        self.outcomes.append(outcome)
        self.ended.set()
        return None

    async def failed(self, job: Any, message: str, refunded: int) -> None:
        self.failures.append((job.id, message))
        self.ended.set()

    async def waiting(self, entry: Any) -> None:
        self.waits.append(entry)


class TrainingRecorder:
    """Stands where /train's presenter does."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.failures: list[str] = []
        self.steps: list[int] = []
        self.ended = asyncio.Event()

    def progress(self, job_id: int, progress: Any) -> None:
        self.steps.append(progress.step)

    async def trained(self, outcome: Any) -> int | None:
        self.outcomes.append(outcome)
        self.ended.set()
        return None

    async def failed(self, job: Any, message: str, refunded: int) -> None:
        self.failures.append(message)
        self.ended.set()

    async def waiting(self, entry: Any) -> None:
        pass


async def submit_training(bot: Any, observer: TrainingRecorder, steps: int) -> Any:
    """A member's /train of three photos on `bot`, heard by `observer`; its ticket."""
    photos = [(f"rex{seed}.png", photo(seed)) for seed in range(3)]
    params, _ = await bot.training.prepare(
        photos, name="rex", user_id=10, class_word="dog", steps=steps
    )
    return await bot.training.submit(
        params,
        user_id=10,
        guild_id=None,
        channel_id=None,
        interaction_id=None,
        observer=observer,
    )


async def until(predicate: Callable[[], Any]) -> None:
    """Wait for what another thread or process does (`predicate` may be async); DEADLINE
    only tells a hang."""
    async with asyncio.timeout(DEADLINE):
        while True:
            held = predicate()
            if await held if asyncio.iscoroutine(held) else held:
                return
            await asyncio.sleep(0.05)


def bot_environment(
    url: str, models: dict[str, str], data_dir: Path, **settings: str
) -> dict[str, str]:
    """This process's environment without its SDBOT_ settings, plus these: a fleet member
    pointing at `url`, serving `models` (name: source), offline, on the CPU."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SDBOT_")}
    environment.update(
        {
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
            "SDBOT_QUEUE_URL": url,
            # The tiny models at the tests' settings' size (make_settings), as an owner
            # gives the workers the bot's own SDBOT_MODELS.
            "SDBOT_MODELS": json.dumps(
                {name: {"source": src, "default_size": [64, 64]} for name, src in models.items()}
            ),
            "SDBOT_DEFAULT_MODEL": next(iter(models)),
            "SDBOT_DATA_DIR": str(data_dir),
            "SDBOT_DEVICE": "cpu",
            **{f"SDBOT_{key.upper()}": value for key, value in settings.items()},
        }
    )
    return environment
