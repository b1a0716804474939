"""Does the bot scale out? Throughput with 1, 2, 4 and 8 GPU workers on Redis Streams, the
bot's dispatch overhead per job, and how long a batch whose worker died waits to run again.

On a 2-core machine real diffusion would only measure CPU contention, so the workers run
the real worker code (bot/fleet/worker.py: consumer group, claims renewed, outcomes
streamed back) around an engine stand-in that takes a fixed time per image on its own
engine thread. Everything else is the bot's: the service (caps, charge and row in one
SQLite transaction), the fair queue, the scheduler holding one slot per idle worker, the
Redis adapter, images written, jobs completed. A real redis-server is started for it.

    python bench/scale_out.py                # 1, 2, 4, 8 workers, 0.2 s per image
    python bench/scale_out.py --per-image 1  # slower images, less noise
    python bench/scale_out.py --workers 1 --jobs 200  # the gaps between batches, more of them

Targets: N workers serve at least 0.9 x N the one-worker throughput; the bot's dispatch
overhead under 5 ms per job. The gaps between two batches are measured with the first
count's workers (one, by default) two ways: the bot's own share (from hearing an outcome on
sdbot:events to the next batch's XADD returning), and as the worker's GPU feels it (from
the end of one batch on the stand-in engine to the start of the next), which adds the
worker's outcome and its read of the next batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as redis

from bench.common import InstantEngine, Waiter, running_service
from bot.fleet import outcomes
from bot.fleet.adapter import RedisEngine
from bot.fleet.worker import FleetWorker
from bot.settings import Settings
from data.store import Store
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams, GenerationResult
from tests.redis_server import RedisServer

MODEL = "standin"
MEMBERS = 8


class TimedEngine(InstantEngine):
    """The engine thread, taking `seconds` per image as a GPU would. It notes when each
    batch starts and ends, so the time its GPU sits idle between two batches (the bot's
    dispatch overhead as a worker feels it) can be read off."""

    def __init__(self, settings: Settings, seconds: float) -> None:
        super().__init__(settings)
        self.seconds = seconds
        self.spans: list[tuple[float, float]] = []

    def _generate(self, jobs: Sequence[EngineJob]) -> list[GenerationResult]:
        started = time.perf_counter()
        time.sleep(self.seconds * sum(job.params.count for job in jobs))
        results = super()._generate(jobs)
        self.spans.append((started, time.perf_counter()))
        return results

    def idle_gaps(self) -> list[float]:
        """Seconds from each batch's end to the next one's start."""
        return [begin - end for (_, end), (begin, _) in itertools.pairwise(self.spans)]


class DispatchClock:
    """The bot's own share of each gap between two batches: from the bot hearing a batch's
    outcome on sdbot:events to the next batch's XADD returning. With one worker each
    outcome frees the slot the next batch takes, so each outcome heard pairs with the first
    batch sent after it. The bot's two steps are timed where the adapter calls them
    (bot/fleet/outcomes.py: `hear` and `add`), wrapped for the run and put back after."""

    def __init__(self) -> None:
        self.heard: list[float] = []  # when an outcome (not a progress line) arrived
        self.sent: list[tuple[float, int]] = []  # when a batch's XADD returned; its jobs

    def clear(self) -> None:
        self.heard.clear()
        self.sent.clear()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        hear, add = outcomes.hear, outcomes.add

        def timed_hear(sent: dict[str, outcomes.Sent], fields: dict[Any, Any]) -> bool:
            arrived = time.perf_counter()
            outcome = hear(sent, fields)
            if outcome:
                self.heard.append(arrived)
            return outcome

        async def timed_add(db: Any, batch: str, stream: str, fields: dict[str, str]) -> None:
            await add(db, batch, stream, fields)
            returned = time.perf_counter()
            self.sent.append((returned, len(json.loads(fields["request"]).get("jobs", [None]))))

        outcomes.hear, outcomes.add = timed_hear, timed_add  # type: ignore[assignment]
        try:
            yield
        finally:
            outcomes.hear, outcomes.add = hear, add  # type: ignore[assignment]

    def shares(self) -> list[tuple[float, int]]:
        """(seconds, jobs in the batch sent) for each outcome that a batch followed before
        the next outcome came."""
        # In time order, an outcome marked as a "batch" of no jobs (every batch has one).
        moments = sorted([(at, 0) for at in self.heard] + self.sent)
        return [
            (sent - heard, jobs)
            for (heard, outcome), (sent, jobs) in itertools.pairwise(moments)
            if outcome == 0 and jobs > 0
        ]


def job_params(number: int) -> GenerationParams:
    return GenerationParams("a lighthouse", "", number, 20, 7.0, 64, 64, "Euler a", 1, MODEL)


Running = list[tuple[asyncio.Task[None], asyncio.Event, FleetWorker]]


async def poll(predicate: Any) -> None:
    """Until `predicate` (what other threads and Redis do) holds."""
    while not await _value(predicate()):  # noqa: ASYNC110 (nothing here is told)
        await asyncio.sleep(0.01)


async def _value(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def start_workers(
    settings: Settings, url: str, count: int, per_image: float, lease: float
) -> Running:
    started = []
    for index in range(count):
        engine = TimedEngine(settings, per_image)
        engine.start()
        worker = FleetWorker(
            redis.Redis.from_url(url), engine, f"w{index}", settings.data_dir / f"w{index}", lease
        )
        stop = asyncio.Event()
        started.append((asyncio.create_task(worker.serve(stop)), stop, worker))
    await poll(lambda: all(worker.heartbeats for _, _, worker in started))
    return started


async def stop_workers(workers: Running) -> None:
    for task, stop, worker in workers:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.engine.stop()
        await worker.db.aclose()


async def throughput(service: Any, jobs: int) -> float:
    """Jobs per second for `jobs` jobs from MEMBERS members, all submitted at once."""
    waiters = [Waiter() for _ in range(jobs)]
    started = time.perf_counter()
    for number, waiter in enumerate(waiters):
        await service.submit(
            service.check(job_params(number)),
            user_id=1 + number % MEMBERS,
            guild_id=None,
            channel_id=None,
            interaction_id=None,
            observer=waiter,
        )
    for waiter in waiters:
        await waiter.done.wait()
        if waiter.error:
            raise RuntimeError(waiter.error)
    return jobs / (time.perf_counter() - started)


async def takeover(settings: Settings, url: str, service: Any, lease: float) -> float:
    """Seconds from a worker's death mid-batch to its batch running on another worker."""
    held = threading.Event()
    doomed_engine = TimedEngine(settings, 0.0)
    doomed_engine.start()
    hold = asyncio.ensure_future(doomed_engine.call(held.wait))  # it never finishes
    doomed = FleetWorker(
        redis.Redis.from_url(url), doomed_engine, "doomed", settings.data_dir, lease
    )
    stop = asyncio.Event()
    task = asyncio.create_task(doomed.serve(stop))
    waiter = Waiter()
    await service.submit(
        service.check(job_params(0)),
        user_id=1,
        guild_id=None,
        channel_id=None,
        interaction_id=None,
        observer=waiter,
    )
    await poll(lambda: doomed.busy)
    task.cancel()  # as SIGKILL leaves it: no outcome, no acknowledgement
    with contextlib.suppress(asyncio.CancelledError):
        await task
    died = time.perf_counter()
    survivors = await start_workers(settings, url, 1, 0.0, lease)
    await waiter.done.wait()
    elapsed = time.perf_counter() - died
    await stop_workers(survivors)
    held.set()
    await hold
    await doomed_engine.stop()
    await doomed.db.aclose()
    return elapsed


async def measure(
    workdir: Path, counts: list[int], per_image: float, lease: float, jobs: int = 16
) -> None:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed: run scripts/ensure-redis")
    server = RedisServer(workdir / "redis", executable=executable, deadline=60.0)
    server.start()
    clock = DispatchClock()
    try:
        settings = Settings(
            _env_file=None,
            data_dir=workdir / "var",
            starting_credits=1_000_000,
            max_pending_per_member=10_000,
            max_queued_total=100_000,
            models={MODEL: {"source": "none: the stand-in engine loads nothing"}},
            default_model=MODEL,
            queue_url=server.url,
        )
        store = Store(settings.db_path)
        with clock.watching():
            async with running_service(settings, RedisEngine(server.url, [MODEL]), store) as bot:
                figures = Figures(per_image, jobs)
                for count in counts:
                    await figures.run(bot, settings, server.url, count, lease, clock)
                figures.report()
                seconds = await takeover(settings, server.url, bot, lease)
                print(
                    f"a worker killed mid-batch: its batch ran elsewhere {seconds:.1f} s later "
                    f"(lease {lease:g} s)"
                )
    finally:
        server.stop()


class Figures:
    """Throughput at each worker count, and at the first count (one worker) the gaps
    between two batches: as the worker's GPU sits idle, and the bot's own share."""

    def __init__(self, per_image: float, jobs: int) -> None:
        self.per_image = per_image
        self.jobs = jobs
        self.rates: dict[int, float] = {}
        self.gaps: list[float] = []
        self.shares: list[tuple[float, int]] = []

    async def run(
        self, service: Any, settings: Settings, url: str, count: int, lease: float, clock: Any
    ) -> None:
        workers = await start_workers(settings, url, count, self.per_image, lease)
        # One job per worker first, untimed: the bot has seen every worker, as in a fleet
        # that is running (a worker that joins is noticed within POLL_SECONDS).
        await throughput(service, count)
        engines = [w.engine for _, _, w in workers if isinstance(w.engine, TimedEngine)]
        for engine in engines:
            engine.spans.clear()
        clock.clear()
        self.rates[count] = await throughput(service, max(self.jobs, 4 * count))
        if not self.gaps:
            self.gaps = [gap for engine in engines for gap in engine.idle_gaps()]
            self.shares = clock.shares()
        await stop_workers(workers)
        await poll(lambda: _none(service.scheduler.engine.workers()))

    def report(self) -> None:
        counts = list(self.rates)
        one = self.rates[counts[0]]
        print(f"stand-in engine: {self.per_image:.2f} s per 64x64 image on its own thread")
        print(f"{'workers':>8} {'jobs/s':>8} {'x one':>7} {'target':>7}")
        for count, rate in self.rates.items():
            print(f"{count:>8} {rate:>8.2f} {rate / one:>7.2f} {0.9 * count:>7.1f}")
        overhead_ms = max(0.0, (1.0 / one - self.per_image) * 1000)
        print(
            f"dispatch overhead with {counts[0]} worker(s): {overhead_ms:.1f} ms per job from "
            "the throughput (the first batch's dispatch and the last one's storing included)"
        )
        per_job = [seconds / jobs for seconds, jobs in self.shares]
        sizes = sorted({jobs for _, jobs in self.shares})
        print(
            f"the bot's dispatch overhead per job (an outcome heard to the next batch's XADD "
            f"returning, batches of {'/'.join(map(str, sizes))} job): {spread(per_job)} "
            f"over {len(per_job)} batches (target < 5)"
        )
        print(
            f"a worker's GPU idle between two batches: {spread(self.gaps)} over "
            f"{len(self.gaps)} gaps"
        )


def spread(seconds: Sequence[float]) -> str:
    if not seconds:
        return "none measured"
    return f"median {statistics.median(seconds) * 1000:.1f} ms, worst {max(seconds) * 1000:.1f} ms"


async def _none(found: Any) -> bool:
    """No worker's heartbeat is left (a stopped worker removes its own)."""
    return not await found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts (default 1,2,4,8)")
    parser.add_argument("--per-image", type=float, default=0.2, help="seconds per image")
    parser.add_argument("--lease", type=float, default=2.0, help="a dead worker's lease, s")
    parser.add_argument(
        "--jobs", type=int, default=16, help="timed jobs per count, at least 4 per worker"
    )
    args = parser.parse_args()
    counts = [int(part) for part in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(measure(Path(workdir), counts, args.per_image, args.lease, args.jobs))


if __name__ == "__main__":
    main()
