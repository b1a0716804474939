"""Does the bot leak over a long life? Thousands of jobs through the real service, with memory,
file descriptors and the database's size read as they go.

A bot runs for weeks: a few bytes kept per job, or one file left open, add up to a crash
that no single-job benchmark shows. Here 10,000 tiny jobs go through DreamService (caps,
charge and row in one SQLite transaction, the fair queue, the dispatcher, the engine
thread, images written, the job completed, the outcome delivered) on a store in a temporary
folder. The engine is `bench.common.InstantEngine`: the real engine thread with generation
replaced by a small PNG made at once, so what is measured is the bot's own cost, at a far
higher rate than a GPU would ever drive it.

Several members submit at once, each keeping one to three jobs in flight, so the queue is
never empty and serves them in turns (round-robin: every member is served about as often,
whatever their depth). After a warm-up (caches, the SQLite page cache and WAL reach their
working size) the growth to the end is what counts:

    python bench/soak.py                 # 10,000 jobs
    python bench/soak.py --jobs 500      # a quick try

Target: resident memory at the end at most 5 % above its level after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import InstantEngine, Waiter, running_service
from bot.generation.service import DreamService
from bot.logs import configure_logging
from bot.settings import Settings
from data.store import Store
from engine.api.params import GenerationParams

MODEL = "standin"
TARGET_GROWTH = 0.05
# Jobs each member keeps in flight (under the default cap of 3 per member): members with
# more waiting must not be served more often.
DEPTHS = (1, 2, 3, 1, 2, 3, 1, 2)


@dataclass(frozen=True, slots=True)
class Reading:
    jobs: int
    seconds: float
    rss: int | None
    traced: int | None  # with --trace: Python allocations since the warm-up, still alive
    tracer: int | None  # with --trace: what tracemalloc itself holds
    fds: int | None
    db: int  # the file
    wal: int  # the write-ahead log beside it
    pages: int  # the database's own size, pages still in the WAL included


@dataclass(slots=True)
class Tally:
    started: int = 0
    failed: list[str] = field(default_factory=list)
    served: Counter[int] = field(default_factory=Counter)
    deepest: int = 0  # the furthest back in line a job was queued


def rss_bytes() -> int | None:
    """Resident memory now (not the peak that `resource` reports); Linux only."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def open_fds() -> int | None:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # listing the folder opens one itself
        except OSError:
            continue
    return None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def logical_size(store: Store) -> int:
    """What the database holds, whether its pages are in the file or still in the WAL: the
    file alone lags until a checkpoint (every 1,000 pages). Asked on the bot's own
    connection: a second one would leave SQLite holding an extra descriptor (it keeps a
    closed connection's file open while another holds locks on it), which would be counted."""
    return await pragma(store, "page_count") * await pragma(store, "page_size")


async def pragma(store: Store, name: str) -> int:
    async with store.db.execute(f"PRAGMA {name}") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def page_cache_limit(store: Store) -> int:
    """Bytes SQLite may keep cached for the connection (`cache_size`: KiB when negative)."""
    size = await pragma(store, "cache_size")
    return -1024 * size if size < 0 else size * await pragma(store, "page_size")


async def read(settings: Settings, store: Store, jobs: int, started: float) -> Reading:
    gc.collect()  # count what is still referenced, not what the collector has yet to free
    db = settings.db_path
    return Reading(
        jobs,
        time.perf_counter() - started,
        rss_bytes(),
        tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
        tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else None,
        open_fds(),
        file_size(db),
        file_size(db.with_name(db.name + "-wal")),
        await logical_size(store),
    )


def job_params(number: int) -> GenerationParams:
    return GenerationParams(
        f"soak job {number}, a lighthouse at dusk",
        "blurry",
        number,
        4,
        7.0,
        64,
        64,
        "Euler a",
        1,
        MODEL,
    )


async def member(
    service: DreamService, user_id: int, count: int, numbers: itertools.count[int], tally: Tally
) -> None:
    """One of a member's job slots: submit, wait for the outcome, submit again."""
    while tally.started < count:  # no await between the test and the count: no race
        tally.started += 1
        number = next(numbers)
        waiter = Waiter()
        ticket = await service.submit(
            service.check(job_params(number)),
            user_id=user_id,
            guild_id=1,
            channel_id=2,
            interaction_id=10**12 + number,  # unique, as Discord's are: no retry is seen
            observer=waiter,
        )
        tally.deepest = max(tally.deepest, ticket.position)
        await waiter.done.wait()
        if waiter.error is not None:
            tally.failed.append(f"job {ticket.job.id}: {waiter.error}")
        else:
            tally.served[user_id] += 1


async def run_jobs(service: DreamService, count: int, numbers: itertools.count[int]) -> Tally:
    tally = Tally()
    slots = [
        member(service, user_id, count, numbers, tally)
        for user_id, depth in enumerate(DEPTHS, start=1)
        for _ in range(depth)
    ]
    await asyncio.gather(*slots)
    return tally


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def growth(before: int | None, after: int | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return (after - before) / before


def images_bytes(folder: Path) -> tuple[int, int]:
    """(files, bytes) under the images folder."""
    files = total = 0
    for path in folder.rglob("*.png"):
        files += 1
        total += path.stat().st_size
    return files, total


def report(
    jobs: int,
    readings: list[Reading],
    closed_db: int,
    tallies: list[Tally],
    images: tuple[int, int],
    top: list[tracemalloc.StatisticDiff],
    cache_limit: int,
) -> int:
    """Print the figures; returns how many jobs failed (none should)."""
    start, warm, end = readings[0], readings[1], readings[-1]
    measured = end.jobs - warm.jobs
    print(
        f"{jobs} jobs ({warm.jobs} warm-up), {len(DEPTHS)} members keeping "
        f"{min(DEPTHS)}-{max(DEPTHS)} jobs each in flight; instant stand-in engine"
    )
    print("                    start        after warm-up    end")
    print(f"  resident memory   {mib(start.rss):<12} {mib(warm.rss):<16} {mib(end.rss)}")
    print(f"  open files        {start.fds!s:<12} {warm.fds!s:<16} {end.fds}")
    print(f"  database (pages)  {mib(start.pages):<12} {mib(warm.pages):<16} {mib(end.pages)}")
    print(f"  database file     {mib(start.db):<12} {mib(warm.db):<16} {mib(end.db)}")
    print(f"  WAL file          {mib(start.wal):<12} {mib(warm.wal):<16} {mib(end.wal)}")
    if end.rss is not None:
        curve = " ".join(f"{r.rss / 2**20:.1f}" for r in readings[1:] if r.rss is not None)
        print(f"  resident memory every {warm.jobs} jobs from the warm-up on: {curve} MiB")
    rss = growth(warm.rss, end.rss)
    if rss is None:
        print("  memory growth after warm-up: n/a (no /proc on this system)")
    else:
        verdict = "met" if rss <= TARGET_GROWTH else "MISSED"
        print(
            f"  memory growth after warm-up: {100 * rss:+.2f} % RSS "
            f"(target <= {100 * TARGET_GROWTH:.0f} %: {verdict})"
        )
        if warm.pages < cache_limit:
            # Not a leak: the cache grows with the database up to its limit, then stays.
            print(
                f"    note: at the warm-up the database ({mib(warm.pages)}) was smaller than "
                f"SQLite's page cache limit ({mib(cache_limit)}), so part of this growth is "
                "that cache filling; a longer --warmup leaves it out"
            )
    if end.traced is not None:
        print(
            f"  Python allocations made after warm-up and still alive: {mib(end.traced)} "
            f"({end.traced / max(measured, 1):.0f} bytes per job); tracemalloc's own tables, "
            f"in the memory figures above: {mib(end.tracer)}"
        )
        for stat in top:
            frame = stat.traceback[0]
            print(f"    {stat.size_diff / 1024:8.1f} KiB  {stat.count_diff:6d} blocks  {frame}")
    print(
        f"  database per job: {(end.pages - warm.pages) / max(measured, 1):.0f} bytes after "
        f"warm-up, {closed_db / jobs:.0f} bytes overall (the file once closed and checkpointed: "
        f"{mib(closed_db)}); the WAL file reached {mib(max(r.wal for r in readings))}"
    )
    files, total = images[0], images[1]
    print(f"  images on disk: {files} files, {total / max(files, 1):.0f} bytes each")
    seconds = end.seconds - warm.seconds
    print(
        f"  throughput: {jobs / end.seconds:.0f} jobs/s overall, "
        f"{measured / max(seconds, 1e-9):.0f} jobs/s after warm-up"
    )
    served = Counter[int]()
    for tally in tallies:
        served.update(tally.served)
    by_depth = {
        depth: [served[user] for user, d in enumerate(DEPTHS, start=1) if d == depth]
        for depth in sorted(set(DEPTHS))
    }
    shares = ", ".join(
        f"{depth} in flight: {sum(counts) / len(counts):.0f}" for depth, counts in by_depth.items()
    )
    print(
        f"  fair queue: jobs served per member ({shares}; first come, first served would give "
        f"1:2:3), queued up to position {max(t.deepest for t in tallies)}"
    )
    failures = [f for t in tallies for f in t.failed]
    if failures:
        print(f"  FAILED jobs: {len(failures)}, first: {failures[0]}")
    return len(failures)


async def soak(jobs: int, warmup: int, trace: bool, workdir: Path) -> int:
    settings = Settings(
        _env_file=None,
        data_dir=workdir / "var",
        starting_credits=10 * jobs,  # every job is charged; nobody runs out
        models={MODEL: {"source": "none: the stand-in engine loads nothing"}},
        default_model=MODEL,
    )
    numbers = itertools.count(1)
    store = Store(settings.db_path)
    async with running_service(settings, InstantEngine(settings), store) as service:
        cache_limit = await page_cache_limit(store)
        started = time.perf_counter()
        readings = [await read(settings, store, 0, started)]
        tallies = [await run_jobs(service, warmup, numbers)]
        readings.append(await read(settings, store, warmup, started))
        if trace:
            # From here on: what the measured jobs allocate and never give back.
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
        # In chunks of the warm-up's size, read after each: a curve tells a cache filling up
        # to its limit (it flattens) from a leak (it keeps climbing).
        done = warmup
        while done < jobs:
            chunk = min(warmup, jobs - done)
            tallies.append(await run_jobs(service, chunk, numbers))
            done += chunk
            readings.append(await read(settings, store, done, started))
        top: list[tracemalloc.StatisticDiff] = []
        if trace:
            after = tracemalloc.take_snapshot()
            top = after.compare_to(before, "lineno")[:5]
            tracemalloc.stop()
    closed_db = file_size(settings.db_path)
    images = images_bytes(settings.images_dir)
    return report(jobs, readings, closed_db, tallies, images, top, cache_limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in all (default 10,000)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs before the baseline (default: a tenth)"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="also trace Python allocations after the warm-up, and show where the survivors "
        "were made (slower; tracemalloc's own tables then count in the memory figures)",
    )
    args = parser.parse_args()
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")
    warmup = args.warmup if args.warmup is not None else max(1, args.jobs // 10)
    if not 0 < warmup < args.jobs:
        parser.error("--warmup must be between 1 and --jobs - 1")
    # The service logs a line per job at INFO; at 10,000 jobs that would be the benchmark.
    configure_logging("WARNING", quiet_ml=False)
    with tempfile.TemporaryDirectory(prefix="sdbot-soak-") as workdir:
        failed = asyncio.run(soak(args.jobs, warmup, args.trace, Path(workdir)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
