"""Does the bot scale out? Throughput with 1, 2, 4 and 8 GPU workers on Redis Streams, the
bot's dispatch overhead per job, and how long a batch whose worker died waits to run again.

Each worker is an OS process of its own (bench/standin_worker.py), as on a fleet: the real
worker code (bot/fleet/worker.py: consumer group, claims renewed, outcomes streamed back)
around an engine stand-in that takes a fixed time per image on its own engine thread, since
on a 2-core machine real diffusion would only measure CPU contention. Everything in this
process is the bot's: the service (caps, charge and row in one SQLite transaction), the fair
queue, the scheduler holding one slot per idle worker, the Redis adapter, images written,
jobs completed. A real redis-server is started for it. Before each timed count the bot
sees every worker and each has served one untimed job, so no process's start is timed.

    python bench/scale_out.py                # 1, 2, 4, 8 workers, 0.2 s per image
    python bench/scale_out.py --per-image 1  # slower images, less noise
    python bench/scale_out.py --workers 1 --jobs 200  # the gaps between batches, more of them

Targets: N workers serve at least 0.9 x N the one-worker throughput; the bot's dispatch
overhead under 5 ms per job. The gaps between two batches are measured with the first
count's workers (one, by default) two ways: the bot's own share (from hearing an outcome on
sdbot:events to the next batch's XADD returning), and as the worker's GPU feels it (from
the end of one batch on the stand-in engine to the start of the next, which each worker
process writes down when it is stopped), which adds the worker's outcome and its read of
the next batch. Last, a worker process is killed with SIGKILL mid-batch and the time from
the kill to its batch starting on another worker process is printed beside the lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Waiter, running_service
from bot.fleet import outcomes
from bot.fleet.adapter import RedisEngine
from bot.settings import Settings
from data.store import Store
from engine.api.params import GenerationParams, Progress
from tests.redis_server import RedisServer

MODEL = "standin"
MEMBERS = 8
STANDIN = Path(__file__).resolve().parent / "standin_worker.py"
DOOMED_PER_IMAGE = 3600.0  # the killed worker's batch: it would never end by itself
Span = tuple[float, float]  # a batch's start and end on a stand-in engine (time.monotonic)


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


async def poll(predicate: Any) -> None:
    """Until `predicate` (what other processes and Redis do) holds."""
    while not await _value(predicate()):  # noqa: ASYNC110 (nothing here is told)
        await asyncio.sleep(0.01)


async def _value(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


class WorkerProcess:
    """One worker, an OS process of its own (bench/standin_worker.py) serving from Redis."""

    def __init__(self, workdir: Path, url: str, name: str, per_image: float, lease: float) -> None:
        self.name = name
        self.gaps_file = workdir / f"{name}.json"
        argv = [
            *("--url", url, "--name", name, "--models", MODEL),
            *("--per-image", f"{per_image}", "--lease", f"{lease}"),
            *("--workdir", str(workdir / name), "--gaps", str(self.gaps_file)),
        ]
        self.process = subprocess.Popen([sys.executable, str(STANDIN), *argv])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited ({self.process.returncode})")

    async def stop(self) -> list[Span]:
        """SIGTERM, as an owner stops `python -m bot worker`: it finishes the batch in
        hand, removes its heartbeat, and leaves the spans of the batches it ran."""
        self.process.terminate()
        if await asyncio.to_thread(self.process.wait, 60.0):
            raise RuntimeError(f"worker {self.name} did not stop cleanly")
        return [(start, end) for start, end in json.loads(self.gaps_file.read_text())["spans"]]

    def kill(self) -> None:
        """SIGKILL: no outcome, no acknowledgement, its heartbeat left to expire."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def worker_processes(
    service: Any, workdir: Path, url: str, names: list[str], per_image: float, lease: float
) -> AsyncIterator[tuple[list[WorkerProcess], list[Span]]]:
    """The worker processes, once the bot sees each one's heartbeat; on the way out each
    still running is stopped, and the spans of all their batches are in the list given."""
    workers = [WorkerProcess(workdir, url, name, per_image, lease) for name in names]
    spans: list[Span] = []
    try:
        await poll(lambda: _all_seen(service, workers))
        yield workers, spans
        for worker in workers:
            if worker.process.poll() is None:
                spans += await worker.stop()
    finally:
        for worker in workers:
            worker.kill()  # only those a failure left running


async def _all_seen(service: Any, workers: list[WorkerProcess]) -> bool:
    for worker in workers:
        worker.check_alive()
    return {w.name for w in workers} <= {s.name for s in await service.scheduler.engine.workers()}


async def warm_up(service: Any, workers: list[WorkerProcess]) -> None:
    """Untimed jobs until each worker has served one: the bot has heard from every worker
    and each process has run a batch, as in a fleet that is running (a worker that joins is
    noticed within POLL_SECONDS)."""
    names = {worker.name for worker in workers}
    served: set[str] = set()
    for _ in range(10):
        await throughput(service, len(workers))
        served = {s.name for s in await service.scheduler.engine.workers() if s.served}
        if served >= names:
            return
    raise RuntimeError(f"workers {sorted(names - served)} served no job")


def idle_gaps(spans: Sequence[Span], since: float) -> list[float]:
    """Seconds from each batch's end to the next one's start, of the batches started after
    `since` (the warm-up's left out)."""
    timed = sorted(span for span in spans if span[0] >= since)
    return [begin - end for (_, end), (begin, _) in itertools.pairwise(timed)]


async def submit(service: Any, number: int, waiter: Waiter) -> None:
    await service.submit(
        service.check(job_params(number)),
        user_id=1 + number % MEMBERS,
        guild_id=None,
        channel_id=None,
        interaction_id=None,
        observer=waiter,
    )


async def throughput(service: Any, jobs: int) -> float:
    """Jobs per second for `jobs` jobs from MEMBERS members, all submitted at once."""
    waiters = [Waiter() for _ in range(jobs)]
    started = time.perf_counter()
    for number, waiter in enumerate(waiters):
        await submit(service, number, waiter)
    for waiter in waiters:
        await waiter.done.wait()
        if waiter.error:
            raise RuntimeError(waiter.error)
    return jobs / (time.perf_counter() - started)


class ProgressWaiter(Waiter):
    """A Waiter told of each progress line of its job, as the bot hears it."""

    def __init__(self) -> None:
        super().__init__()
        self.progressed = asyncio.Event()

    def progress(self, job_id: int, progress: Progress) -> None:
        self.progressed.set()


async def takeover(service: Any, workdir: Path, url: str, per_image: float, lease: float) -> float:
    """Seconds from a worker process's SIGKILL mid-batch to its batch starting (its first
    progress line heard) on another worker process."""
    waiter = ProgressWaiter()
    async with worker_processes(service, workdir, url, ["doomed"], DOOMED_PER_IMAGE, lease) as (
        (doomed,),
        _,
    ):
        await submit(service, 0, waiter)
        await waiter.progressed.wait()  # its batch runs on the doomed worker's engine
        # The survivor is up before the kill, so its start is not timed.
        async with worker_processes(service, workdir, url, ["survivor"], per_image, lease):
            waiter.progressed.clear()
            doomed.kill()
            died = time.perf_counter()
            await waiter.progressed.wait()
            elapsed = time.perf_counter() - died
            await waiter.done.wait()
    if waiter.error:
        raise RuntimeError(waiter.error)
    return elapsed


async def measure(
    workdir: Path, counts: list[int], per_image: float, lease: float, jobs: int = 20
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
        workers = workdir / "workers"
        workers.mkdir()
        with clock.watching():
            async with running_service(settings, RedisEngine(server.url, [MODEL]), store) as bot:
                figures = Figures(per_image, jobs)
                for count in counts:
                    await figures.run(bot, workers, server.url, count, lease, clock)
                figures.report()
                seconds = await takeover(bot, workers, server.url, per_image, lease)
                print(
                    f"a worker process killed (SIGKILL) mid-batch: its batch ran elsewhere "
                    f"{seconds:.1f} s later (lease {lease:g} s)"
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
        self.gaps: list[float] | None = None
        self.shares: list[tuple[float, int]] = []

    async def run(
        self, service: Any, workdir: Path, url: str, count: int, lease: float, clock: Any
    ) -> None:
        names = [f"n{count}-w{index}" for index in range(count)]
        async with worker_processes(service, workdir, url, names, self.per_image, lease) as (
            workers,
            spans,
        ):
            await warm_up(service, workers)
            clock.clear()
            since = time.monotonic()  # the stand-ins' clock, one for the whole machine
            self.rates[count] = await throughput(service, self.jobs * count)
            shares = clock.shares()
        # Each process's spans are written when it stops: read once they all have.
        if self.gaps is None:
            self.gaps = idle_gaps(spans, since)
            self.shares = shares
        await poll(lambda: _none(service.scheduler.engine.workers()))

    def report(self) -> None:
        counts = list(self.rates)
        one = self.rates[counts[0]]
        print(
            f"workers: {'/'.join(map(str, counts))} separate OS processes (bench/standin_worker.py"
            ": the real FleetWorker.serve around the stand-in), the bot in this process"
        )
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
        gaps = self.gaps or []
        print(f"a worker's GPU idle between two batches: {spread(gaps)} over {len(gaps)} gaps")


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
        "--jobs",
        type=int,
        default=20,
        help="timed jobs per worker (each count runs jobs x workers: every count about as long)",
    )
    args = parser.parse_args()
    counts = [int(part) for part in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(measure(Path(workdir), counts, args.per_image, args.lease, args.jobs))


if __name__ == "__main__":
    main()
