"""One GPU worker of `bench/scale_out.py`, as its own OS process: the real worker code
(bot/fleet/worker.py, FleetWorker.serve: consumer group, claims renewed, outcomes streamed
back) around an engine stand-in that takes a fixed time per image on its own engine thread.

Like `python -m bot worker` it needs no database and no Discord token, only the Redis URL
and the models it serves (the stand-in loads nothing, so any name will do). It serves until
SIGTERM (or SIGINT), then leaves cleanly, as that command does on a signal: the batch in
hand is finished, its heartbeat removed, and the start and end of each batch its engine ran
written as JSON to --gaps, so the bench can read how long this worker's GPU sat idle
between two batches. A worker killed with SIGKILL writes nothing: that is the bench's
takeover, a batch left claimed by a worker that died.

    python bench/standin_worker.py --url redis://127.0.0.1:6379/0 --name w0 \\
        --per-image 0.2 --lease 2 --models standin --workdir /tmp/w0 --gaps /tmp/w0.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as redis

from bench.common import InstantEngine
from bot.fleet.worker import FleetWorker
from bot.settings import ModelSettings, Settings
from engine.api.jobs import EngineJob
from engine.api.params import GenerationResult, Progress

SOURCE = "none: the stand-in engine loads nothing"


class TimedEngine(InstantEngine):
    """The engine thread, taking `seconds` per image as a GPU would. It notes when each
    batch starts and ends (time.monotonic, one clock for every process on this machine),
    so the time its GPU sits idle between two batches can be read off."""

    def __init__(self, settings: Settings, seconds: float) -> None:
        super().__init__(settings)
        self.seconds = seconds
        self.spans: list[tuple[float, float]] = []

    def _generate(self, jobs: Sequence[EngineJob]) -> list[GenerationResult]:
        started = time.monotonic()
        # Its first step reported at once, as a real engine's progress starts with the
        # batch: the bench times a takeover to the moment the survivor starts the batch.
        for job in jobs:
            job.report(Progress(0, job.params.steps))
        time.sleep(self.seconds * sum(job.params.count for job in jobs))
        results = super()._generate(jobs)
        self.spans.append((started, time.monotonic()))
        return results


def worker_settings(workdir: Path, models: list[str]) -> Settings:
    """What a worker's machine is configured with: its own data directory and the models
    it can load (the same names as the bot's), nothing else."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' own argument
        data_dir=workdir,
        models={model: ModelSettings(source=SOURCE) for model in models},
        default_model=models[0],
    )


async def serve(args: argparse.Namespace) -> list[tuple[float, float]]:
    """Serve batches until a signal; the spans of the batches served."""
    engine = TimedEngine(worker_settings(args.workdir, args.models.split(",")), args.per_image)
    db = redis.Redis.from_url(args.url)
    await db.ping()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orphaned = asyncio.create_task(stop_when_orphaned(stop))
    async with engine:
        try:
            await FleetWorker(db, engine, args.name, args.workdir, args.lease).serve(stop)
        finally:
            orphaned.cancel()
            await db.aclose()
    return engine.spans


async def stop_when_orphaned(stop: asyncio.Event) -> None:
    """The bench that started this worker died without stopping it (SIGKILL, a test's
    timeout): leave too, rather than serve on for nobody."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 (nothing tells of a parent's death)
        await asyncio.sleep(1.0)
    stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the Redis the bot uses")
    parser.add_argument("--name", required=True, help="the worker's name in its heartbeat")
    parser.add_argument("--per-image", type=float, default=0.2, help="seconds per image")
    parser.add_argument("--lease", type=float, default=2.0, help="a dead worker's lease, s")
    parser.add_argument("--models", default="standin", help="models it serves, comma-separated")
    parser.add_argument("--workdir", type=Path, required=True, help="this worker's own files")
    parser.add_argument("--gaps", type=Path, required=True, help="JSON: its batches' spans")
    args = parser.parse_args()
    # Its warnings (a batch taken over, Redis unreachable) say which worker they come from.
    logging.basicConfig(level=logging.WARNING, format=f"worker {args.name}: %(message)s")
    spans = asyncio.run(serve(args))
    args.gaps.write_text(json.dumps({"spans": spans}))


if __name__ == "__main__":
    main()
