"""Kill the bot with SIGKILL and start it again: every job ends once, and the books balance.

The first test kills it once, while a job runs. The randomized ones kill it again and
again at moments drawn by a seeded generator: in start-up recovery, while a job is charged,
while it runs, while its images are written and recorded. Each kill is aimed at a marker
the harness prints (tests/crash_harness.py) plus a random delay, so it lands inside that
moment or a little after; wherever it really lands, the books must come out right. A
failure names its seed: `CRASH_SEED=<seed> pytest tests/test_crash.py` draws the same plan.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where a kill is aimed, by the phase of a job's life (the harness's marker names).
KILL_POINTS = {
    "start-up recovery": ("start", "recover", "requeue", "finish", "recovered"),
    "charging": ("submit", "charge", "charged"),
    "running": ("claim", "claimed", "step"),
    "writing images": ("write", "written", "complete", "completed"),
}
ONCE_A_LIFE = ("start", "recover", "recovered")
MAX_JITTER = 0.04  # seconds after the marker; twice the harness's hold at a marked point
STARTING_CREDITS = 50  # the harness's settings leave the default
MAX_ATTEMPTS = 2  # bot/jobs/recovery.py: a job left running by a crash is run once more
# Safety nets only, never what a pass depends on: a process that prints nothing for this
# long is stuck, which is a failure of its own.
LIFE_LIMIT = 240.0


def harness(
    phase: str, data: Path, model: Path, *extra: str, stderr: IO[str] | int = subprocess.PIPE
) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SDBOT_")}
    environment.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_harness", phase, str(data), str(model), *extra],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def test_sigkill_mid_job_then_restart_finishes_every_job_exactly_once(tmp_path, tiny_sd1):
    data = tmp_path / "var"
    first = harness("first", data, tiny_sd1)
    line = first.stdout.readline()
    if not line.startswith("RUNNING "):
        first.kill()
    assert line.startswith("RUNNING "), first.stderr.read()
    killed_job = int(line.split()[1])
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    report = final_report(data, tiny_sd1)
    statuses = {job["id"]: job for job in report["jobs"]}
    assert len(statuses) == 3
    assert all(job["status"] == "succeeded" for job in statuses.values()), statuses
    assert statuses[killed_job]["attempts"] == 2, "the interrupted job ran once more"
    assert report["problems"] == []
    # Each job was charged exactly once: 50 to start, minus one credit each.
    assert report["balances"] == {"alice": 49, "bob": 49, "carol": 49}
    # The interactions died with the first process: results came as new channel messages
    # (jobs that had already finished before the kill were posted by their interaction).
    assert any(f"job {killed_job} finished after a restart" in text for text in report["posted"])


def killed_after(phase: str, data: Path, model: Path, said: str) -> str:
    """Run a harness phase that kills itself at its moment; the line it said first."""
    process = harness(phase, data, model)
    try:
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, err
    [line] = [line for line in out.splitlines() if line.startswith(said)]
    return line


def test_sigkill_right_after_a_cancel_is_answered_refunds_the_job_and_never_reruns_it(
    tmp_path, tiny_sd1
):
    data = tmp_path / "var"
    line = killed_after("cancel", data, tiny_sd1, "CANCELLED ")
    cancelled = int(line.split()[1])
    assert "is stopping" in line, "the member was told before the kill"

    report = final_report(data, tiny_sd1)
    jobs = {job["id"]: job for job in report["jobs"]}
    assert jobs[cancelled]["status"] == "cancelled"
    assert jobs[cancelled]["attempts"] == 1, "not run again after the restart"
    assert report["problems"] == []
    owner = next(n for n, i in report["members"].items() if i == report["owners"][str(cancelled)])
    assert report["balances"][owner] == 50, "charged, then refunded once"
    assert not any(f"job {cancelled} " in text for text in report["posted"])


def test_sigkill_between_storing_a_result_and_posting_it_posts_it_once_after_restart(
    tmp_path, tiny_sd1
):
    data = tmp_path / "var"
    stored = int(killed_after("store", data, tiny_sd1, "STORED ").split()[1])

    report = final_report(data, tiny_sd1)
    assert [job["status"] for job in report["jobs"]] == ["succeeded"]
    assert [text for text in report["posted"] if f"job {stored} " in text] == [
        f"<@{report['members']['alice']}> your job {stored} finished after a restart."
    ]
    assert report["balances"]["alice"] == 49, "charged once"
    assert report["problems"] == []

    again = final_report(data, tiny_sd1)  # one more restart: nothing is posted twice
    assert again["posted"] == []


def final_report(data: Path, model: Path) -> dict:
    """Start the bot once more, let it finish every job, and read its JSON report."""
    second = harness("second", data, model)
    try:
        out, err = second.communicate(timeout=300)
    finally:
        second.kill()
    assert second.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@dataclass(frozen=True, slots=True)
class Kill:
    phase: str
    point: str
    nth: int  # the how-manieth time the point is reached in this life
    jitter: float

    def __str__(self) -> str:
        return f"{self.phase}: {self.point} #{self.nth} + {1000 * self.jitter:.0f} ms"

    @property
    def fallback(self) -> str:
        """Where to kill when the planned point does not come (a life with nothing to
        recover, fewer jobs than planned): still in start-up for a start-up kill."""
        return "recovered" if self.phase == "start-up recovery" else "idle"


def plan(rng: random.Random, kills: int) -> list[Kill]:
    """`kills` kills, the phases taken in turns (each in a random order), so that even a
    short run aims at every one; the point, its occurrence and the delay at random."""
    phases: list[str] = []
    while len(phases) < kills:
        phases += rng.sample(sorted(KILL_POINTS), len(KILL_POINTS))
    planned = []
    for phase in phases[:kills]:
        point = rng.choice(KILL_POINTS[phase])
        nth = 1 if point in ONCE_A_LIFE else rng.randint(1, 2)
        planned.append(Kill(phase, point, nth, rng.uniform(0.0, MAX_JITTER)))
    return planned


class Lines:
    """A process's stdout, line by line, with a time limit on each read (a reader thread:
    a pipe has no timeout of its own)."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line; None at the end of the stream. Empty is raised after `timeout`."""
        return self._lines.get(timeout=timeout)


def one_life(data: Path, model: Path, life: int, seed: int, kill: Kill, log: Path) -> str:
    """Run one life of the bot and SIGKILL it as `kill` says (or at its fallback, when the
    planned point never comes). Returns where it was killed, for the failure message."""
    with log.open("w") as stderr:
        process = harness("chaos", data, model, str(life), str(seed), stderr=stderr)
        assert process.stdout is not None
        lines = Lines(process.stdout)
        seen = 0
        last = "nothing"
        try:
            while True:
                try:
                    line = lines.next(timeout=LIFE_LIMIT)
                except queue.Empty:
                    raise AssertionError(
                        f"life {life} printed nothing for {LIFE_LIMIT:.0f} s after {last}:\n"
                        f"{log.read_text()[-4000:]}"
                    ) from None
                if line is None:
                    process.wait(timeout=30)
                    raise AssertionError(
                        f"life {life} ended by itself (exit {process.returncode}) after "
                        f"{last}:\n{log.read_text()[-4000:]}"
                    )
                if not line.startswith("MARK "):
                    continue
                last = line.removeprefix("MARK ")
                point = last.split()[0]
                seen += point == kill.point
                if seen == kill.nth or point in (kill.fallback, "idle"):
                    time.sleep(kill.jitter)
                    break
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"life {life}: exit {process.returncode}"
    return f"life {life}: planned {kill}; killed after '{last}'"


def db_check(data: Path) -> subprocess.CompletedProcess[str]:
    """`python -m bot db check` as an owner runs it, on the test's data folder. It runs in
    the data folder's parent so no `.env` of the working tree is read."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SDBOT_")}
    environment.update({"PYTHONPATH": str(ROOT), "SDBOT_DATA_DIR": str(data)})
    return subprocess.run(
        [sys.executable, "-m", "bot", "db", "check"],
        cwd=data.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def books(
    data: Path,
) -> tuple[list[sqlite3.Row], dict[int, int], dict[int, int], dict[int, list[str]]]:
    """Jobs, charges and refunds per job, and image files per job, read from the database
    itself rather than through the bot."""
    connection = sqlite3.connect(f"file:{data / 'bot.sqlite3'}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        jobs = connection.execute("SELECT * FROM jobs ORDER BY id").fetchall()

        def per_job(kind: str) -> dict[int, int]:
            rows = connection.execute(
                "SELECT job_id, COUNT(*) FROM ledger WHERE kind = ? GROUP BY job_id", (kind,)
            )
            return dict(rows.fetchall())

        images: dict[int, list[str]] = {}
        for job_id, path in connection.execute("SELECT job_id, path FROM images"):
            images.setdefault(job_id, []).append(path)
        return jobs, per_job("charge"), per_job("refund"), images
    finally:
        connection.close()


def crash_again_and_again(tmp_path: Path, model: Path, kills: int) -> None:
    seed = int(os.environ.get("CRASH_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    data = tmp_path / "var"
    history: list[str] = []
    started = time.monotonic()

    def context() -> str:
        return f"seed {seed} (replay with CRASH_SEED={seed}); kills:\n" + "\n".join(history)

    for life, kill in enumerate(plan(rng, kills)):
        try:
            history.append(one_life(data, model, life, seed, kill, tmp_path / f"life{life}.log"))
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{context()}") from None

    report = final_report(data, model)
    checked = db_check(data)
    assert checked.returncode == 0, f"db check: {checked.stdout}{checked.stderr}\n{context()}"
    assert checked.stdout.strip() == "OK", f"{checked.stdout}\n{context()}"
    assert report["problems"] == [], context()

    jobs, charges, refunds, images = books(data)
    assert jobs, f"no job was ever accepted\n{context()}"
    spent: dict[int, int] = {}
    for job in jobs:
        where = f"job {job['id']} ({job['status']}, attempts {job['attempts']})\n{context()}"
        assert job["status"] in ("succeeded", "failed", "cancelled"), where
        assert job["attempts"] <= MAX_ATTEMPTS, where
        assert charges.get(job["id"], 0) == (1 if job["cost"] > 0 else 0), f"charges: {where}"
        if job["status"] == "succeeded":
            assert refunds.get(job["id"], 0) == 0, f"a success refunded: {where}"
            paths = images.get(job["id"], [])
            assert len(paths) == json.loads(job["params"])["count"], f"images: {where}"
            assert all(Path(p).is_file() for p in paths), f"image files: {where}"
            spent[job["user_id"]] = spent.get(job["user_id"], 0) + job["cost"]
        else:
            assert refunds.get(job["id"], 0) == (1 if job["cost"] > 0 else 0), f"refund: {where}"
    # What each member has left is what they started with, less what their successes cost.
    balances = {report["members"][name]: value for name, value in report["balances"].items()}
    expected = {user: STARTING_CREDITS - spent.get(user, 0) for user in balances}
    assert balances == expected, context()
    outcomes = {
        status: sum(j["status"] == status for j in jobs)
        for status in ("succeeded", "failed", "cancelled")
    }
    print(
        f"{kills} kills in {time.monotonic() - started:.0f} s, {len(jobs)} jobs "
        f"{outcomes}; {context()}"
    )


def test_random_sigkills_leave_every_job_ended_once_and_the_books_balanced(tmp_path, tiny_sd1):
    crash_again_and_again(tmp_path, tiny_sd1, kills=len(KILL_POINTS))  # one in each phase


@pytest.mark.slow
def test_thirty_random_sigkills_leave_the_books_balanced(tmp_path, tiny_sd1):
    crash_again_and_again(tmp_path, tiny_sd1, kills=30)
