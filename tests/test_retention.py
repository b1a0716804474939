"""Retention and backups (issue 14): the disk stops filling up, and the books survive both.

Written as an owner meets it: a real SQLite store in a temporary data folder, jobs made
and finished through the repositories, files where the bot keeps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.__main__ import parse_args
from bot.cli.books import books
from bot.jobs.retention import ASIDE_SUFFIX, DAY, RetentionPolicy, Sweeper, input_keys
from bot.settings import Settings
from data.credits import CreditPolicy, CreditRepository
from data.jobs import Job, JobImage, JobRepository, JobStatus
from data.loras import LoraRepository
from data.retention import RetentionRepository
from data.store import Store
from tests.conftest import wait_until
from tests.factories import tiny_params

ROOT = Path(__file__).resolve().parent.parent
IMAGE_BYTES = 1000


def owner_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "var", **values)


class Owner:
    """A data folder as a running bot leaves it: a store, its jobs, their files."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.jobs = JobRepository(store)
        self._interaction = 0

    def input(self, name: str, size: int = 500) -> str:
        """Store an input picture as bot/jobs/inputs.py does; returns its key."""
        data = name.encode().ljust(size, b".")
        key = hashlib.sha256(data).hexdigest()
        path = self.input_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return key

    def input_path(self, key: str) -> Path:
        return self.settings.inputs_dir / key[:2] / f"{key}.png"

    def folder(self, job: Job) -> Path:
        return self.settings.images_dir / str(job.id)

    async def queued(self, *, kind: str = "dream", params: dict[str, Any] | None = None) -> Job:
        self._interaction += 1
        return await self.jobs.create(
            kind=kind,
            user_id=1000 + self._interaction,  # a member each: none runs out of credits
            guild_id=20,
            channel_id=30,
            interaction_id=self._interaction,
            params=params if params is not None else tiny_params().to_dict(),
            cost=2,
        )

    async def finished(
        self,
        *,
        days_ago: float,
        status: JobStatus = JobStatus.SUCCEEDED,
        kind: str = "dream",
        params: dict[str, Any] | None = None,
        image_bytes: int = IMAGE_BYTES,
    ) -> Job:
        """A job that ended `days_ago` days ago; a succeeded one has an image on disk."""
        job = await self.queued(kind=kind, params=params)
        assert await self.jobs.mark_running(job.id)
        if status is JobStatus.SUCCEEDED:
            path = self.folder(job) / "0-1.png"
            path.parent.mkdir(parents=True)
            path.write_bytes(b"p" * image_bytes)
            image = JobImage(job.id, 0, 1, str(path), 64, 64, "a cat\nSteps: 3")
            assert await self.jobs.complete(job.id, [image])
            await self.jobs.mark_delivered(job.id, None)  # posted, as results are
        else:
            await self.jobs.finish(job.id, status, error="it broke")
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE jobs SET finished_at = finished_at - ? WHERE id = ?",
                (days_ago * DAY, job.id),
            )
        found = await self.jobs.get(job.id)
        assert found is not None
        return found

    async def job(self, job: Job) -> Job:
        found = await self.jobs.get(job.id)
        assert found is not None
        return found

    def sweeper(self, **values: Any) -> Sweeper:
        settings = self.settings.model_copy(update=values)
        sweeper = Sweeper.for_settings(settings, self.store)
        assert sweeper is not None
        return sweeper

    async def books_balance(self) -> list[str]:
        return await CreditRepository(self.store, CreditPolicy()).check()


@pytest.fixture
async def owner(tmp_path: Path) -> AsyncIterator[Owner]:
    settings = owner_settings(tmp_path)
    store = Store(settings.db_path)
    await store.open()
    yield Owner(settings, store)
    await store.close()


def image_params(**overrides: Any) -> dict[str, Any]:
    return tiny_params(**{"mode": "img2img", **overrides}).to_dict()


# -- what a sweep removes, and what it keeps --------------------------------------------


async def test_old_results_lose_their_files_and_keep_their_rows(owner: Owner) -> None:
    own = owner.input("old upload")
    old = await owner.finished(days_ago=10, params=image_params(init_image=own))
    recent = await owner.finished(days_ago=1)
    report = await owner.sweeper(retention_days=7).sweep()

    assert (report.jobs, report.bytes) == (1, IMAGE_BYTES + 500)
    assert not owner.folder(old).exists()
    assert not owner.input_path(own).exists()
    assert await owner.jobs.images(old.id) == []
    swept = await owner.job(old)
    assert swept.expired_at is not None
    assert swept.status is JobStatus.SUCCEEDED
    assert swept.params == old.params
    assert owner.folder(recent).exists()
    assert len(await owner.jobs.images(recent.id)) == 1
    assert (await owner.job(recent)).expired_at is None
    assert await owner.books_balance() == []
    again = await owner.sweeper(retention_days=7).sweep()
    assert (again.jobs, again.bytes) == (0, 0)


async def test_failed_and_cancelled_jobs_are_swept_and_the_books_still_balance(
    owner: Owner,
) -> None:
    failed = await owner.finished(days_ago=30, status=JobStatus.FAILED)
    cancelled = await owner.finished(days_ago=30, status=JobStatus.CANCELLED)
    report = await owner.sweeper(retention_days=1).sweep()
    assert report.jobs == 2
    for job in (failed, cancelled):
        assert (await owner.job(job)).expired_at is not None
    assert await owner.books_balance() == []


async def test_queued_and_running_jobs_and_every_input_a_kept_job_names_stay(
    owner: Owner,
) -> None:
    shared, masked, photo, alone = (owner.input(n) for n in ("shared", "mask", "photo", "alone"))
    old = await owner.finished(
        days_ago=40, params=image_params(init_image=shared, mask_image=masked, mode="inpaint")
    )
    old_photos = await owner.finished(
        days_ago=40, kind="train", params={"name": "rex", "image_keys": [photo, alone]}
    )
    # Left queued and running for 40 days (a long queue, a paused training): still pending.
    queued = await owner.queued(params=image_params(control_image=shared, control_type="canny"))
    running = await owner.queued(kind="train", params={"name": "rex2", "image_keys": [photo]})
    assert await owner.jobs.mark_running(running.id)
    recent = await owner.finished(days_ago=1, params=image_params(init_image=masked))
    async with owner.store.transaction() as db:
        await db.execute("UPDATE jobs SET created_at = created_at - ?", (40 * DAY,))

    report = await owner.sweeper(retention_days=7).sweep()
    assert report.jobs == 2
    assert report.bytes == 2 * IMAGE_BYTES + 500  # only `alone` was named by no kept job
    assert not owner.input_path(alone).exists()
    for key in (shared, masked, photo):
        assert owner.input_path(key).exists(), "a kept job still names it"
    for job in (old, old_photos):
        assert (await owner.job(job)).expired_at is not None
    for job in (queued, running, recent):
        assert (await owner.job(job)).expired_at is None
    assert (await owner.job(queued)).status is JobStatus.QUEUED

    # Once the queued job has run and its result is old too, its input goes with it.
    assert await owner.jobs.mark_running(queued.id)
    await owner.jobs.finish(queued.id, JobStatus.FAILED, error="out of memory")
    async with owner.store.transaction() as db:
        await db.execute(
            "UPDATE jobs SET finished_at = finished_at - ? WHERE id = ?", (40 * DAY, queued.id)
        )
    assert (await owner.sweeper(retention_days=7).sweep()).jobs == 1
    assert not owner.input_path(shared).exists()
    assert owner.input_path(photo).exists()
    assert owner.input_path(masked).exists()
    assert await owner.books_balance() == []


async def test_a_trained_lora_keeps_its_file_and_its_row(owner: Owner) -> None:
    photos = [owner.input(f"dog {n}") for n in range(3)]
    job = await owner.finished(days_ago=90, kind="train", params={"image_keys": photos})
    lora_file = owner.settings.data_dir / "loras" / "10" / f"rex-{job.id}.safetensors"
    lora_file.parent.mkdir(parents=True)
    lora_file.write_bytes(b"weights")
    loras = LoraRepository(owner.store)
    await loras.add(
        owner_id=10,
        guild_id=20,
        name="rex",
        method="lora",
        token="zwxrex",
        class_word="dog",
        base_model="sd15",
        path=str(lora_file),
        job_id=job.id,
        metadata={},
    )
    assert (await owner.sweeper(retention_days=30).sweep()).jobs == 1
    assert lora_file.read_bytes() == b"weights"
    lora = await loras.by_job(job.id)
    assert lora is not None
    assert lora.path == str(lora_file)
    assert not any(owner.input_path(key).exists() for key in photos)
    assert await owner.books_balance() == []


async def test_the_size_budget_removes_the_oldest_until_it_is_met(owner: Owner) -> None:
    jobs = [await owner.finished(days_ago=days) for days in (5, 4, 3, 2)]
    # 4000 bytes of images; a budget of 2500 takes the two oldest away, and no more.
    report = await owner.sweeper(retention_max_gb=2500 / 1e9).sweep()
    assert report.jobs == 2
    assert [(await owner.job(job)).expired_at is not None for job in jobs] == [
        True,
        True,
        False,
        False,
    ]
    used = sum(f.stat().st_size for f in owner.settings.data_dir.rglob("*.png"))
    assert used == 2 * IMAGE_BYTES <= 2500


async def test_the_size_budget_never_takes_what_a_queued_job_needs(owner: Owner) -> None:
    big = owner.input("a big upload", size=5000)
    old = await owner.finished(days_ago=3, params=image_params(init_image=big))
    await owner.queued(params=image_params(init_image=big))
    report = await owner.sweeper(retention_max_gb=1000 / 1e9).sweep()
    assert (report.jobs, report.bytes) == (1, IMAGE_BYTES)
    assert (await owner.job(old)).expired_at is not None
    assert owner.input_path(big).stat().st_size == 5000


async def test_age_and_budget_together(owner: Owner) -> None:
    old = await owner.finished(days_ago=20)
    middle = await owner.finished(days_ago=5)
    new = await owner.finished(days_ago=1)
    report = await owner.sweeper(retention_days=10, retention_max_gb=1500 / 1e9).sweep()
    assert report.jobs == 2
    assert [(await owner.job(job)).expired_at is None for job in (old, middle, new)] == [
        False,
        False,
        True,
    ]


async def test_a_job_made_meanwhile_from_the_same_picture_keeps_it(owner: Owner) -> None:
    """The sweep decides from the rows, then sets the files aside; a member who sends the
    same picture in between (stored once, so nothing is written) gets it put back."""
    key = owner.input("the same cat")
    await owner.finished(days_ago=10, params=image_params(init_image=key))

    class Racing(RetentionRepository):
        calls = 0

        async def unexpired(self) -> list[Job]:
            self.calls += 1
            if self.calls == 2:  # after the decision, before the file is removed for good
                assert not owner.input_path(key).exists()
                await owner.queued(params=image_params(init_image=key))
            return await super().unexpired()

    sweeper = owner.sweeper(retention_days=7)
    sweeper.repository = Racing(owner.store)
    assert (await sweeper.sweep()).jobs == 1
    assert owner.input_path(key).exists()
    assert not list(owner.settings.inputs_dir.rglob(f"*{ASIDE_SUFFIX}"))


async def test_an_input_left_aside_by_a_crash_is_put_back(owner: Owner) -> None:
    key = owner.input("mid-sweep")
    await owner.queued(params=image_params(init_image=key))
    path = owner.input_path(key)
    path.rename(path.with_name(path.name + ASIDE_SUFFIX))
    await owner.sweeper(retention_days=7).sweep()
    assert path.exists()


async def test_one_log_line_per_sweep_that_removed_something(
    owner: Owner, caplog: pytest.LogCaptureFixture
) -> None:
    await owner.finished(days_ago=10)
    caplog.set_level(logging.INFO, logger="bot.jobs.retention")
    sweeper = owner.sweeper(retention_days=7)
    await sweeper.sweep()
    await sweeper.sweep()
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.jobs.retention"]
    assert lines == [f"retention: 1 job(s) expired, {IMAGE_BYTES} bytes removed (0.0 MB)"]


async def test_the_task_sweeps_at_start_and_stops_at_once_between_sweeps(owner: Owner) -> None:
    old = await owner.finished(days_ago=10)
    swept = asyncio.Event()

    class Watched(Sweeper):
        async def sweep(self) -> Any:
            report = await super().sweep()
            swept.set()
            return report

    sweeper = Watched(
        RetentionRepository(owner.store),
        owner.settings.images_dir,
        owner.settings.inputs_dir,
        RetentionPolicy(max_age=7 * DAY),
    )
    sweeper.start()
    await asyncio.wait_for(swept.wait(), timeout=10)
    assert (await owner.job(old)).expired_at is not None
    await asyncio.wait_for(sweeper.stop(), timeout=10)  # resting for an hour: cancelled


async def test_stopping_lets_a_sweep_under_way_finish(owner: Owner) -> None:
    old = await owner.finished(days_ago=10)
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(Sweeper):
        async def sweep(self) -> Any:
            started.set()
            await release.wait()
            return await super().sweep()

    sweeper = Slow(
        RetentionRepository(owner.store),
        owner.settings.images_dir,
        owner.settings.inputs_dir,
        RetentionPolicy(max_age=7 * DAY),
    )
    sweeper.start()
    await started.wait()
    stopping = asyncio.create_task(sweeper.stop())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, timeout=10)
    assert (await owner.job(old)).expired_at is not None


def test_input_keys_are_found_wherever_the_parameters_name_them() -> None:
    a, b, c = (hashlib.sha256(n).hexdigest() for n in (b"a", b"b", b"c"))
    params = {"init_image": a, "image_keys": [b], "later": {"deep": (c,)}, "prompt": "a", "n": 3}
    assert input_keys(params) == {a, b, c}
    assert input_keys({"init_image": "../../etc/passwd"}) == set()


# -- settings -----------------------------------------------------------------------------


def test_retention_is_off_unless_the_owner_turns_it_on(tmp_path: Path) -> None:
    settings = owner_settings(tmp_path)
    assert (settings.retention_days, settings.retention_max_gb) == (0, 0)
    assert Sweeper.for_settings(settings, Store(settings.db_path)) is None
    policy = RetentionPolicy.from_settings(
        owner_settings(tmp_path, retention_days=0.5, retention_max_gb=2)
    )
    assert policy == RetentionPolicy(max_age=DAY / 2, max_bytes=2 * 10**9)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SDBOT_RETENTION_DAYS", "-1", "greater than or equal to 0"),
        ("SDBOT_RETENTION_DAYS", "inf", "finite number"),
        ("SDBOT_RETENTION_DAYS", "nan", "finite number"),
        ("SDBOT_RETENTION_MAX_GB", "-0.5", "greater than or equal to 0"),
        ("SDBOT_RETENTION_MAX_GB", "lots", "valid number"),
    ],
)
def test_bad_retention_settings_are_refused_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)


# -- db backup ----------------------------------------------------------------------------


async def console(*args: str, cwd: Path, data_dir: Path) -> tuple[int, str, str]:
    """`python -m bot ...` as an owner types it, in its own process."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SDBOT_")}
    environment.update({"PYTHONPATH": str(ROOT), "SDBOT_DATA_DIR": str(data_dir)})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_backup_while_the_bot_keeps_writing(owner: Owner, tmp_path: Path) -> None:
    for _ in range(50):
        await owner.finished(days_ago=1)
    before = len(await RetentionRepository(owner.store).unexpired())
    done = asyncio.Event()
    written = 0

    async def keep_writing() -> None:  # the live bot: a charged job after another
        nonlocal written
        while not done.is_set():
            await owner.queued()
            written += 1

    writer = asyncio.create_task(keep_writing())
    target = tmp_path / "backups" / "bot.sqlite3"
    target.parent.mkdir()
    try:
        code, out, err = await console(
            "db", "backup", str(target), cwd=tmp_path, data_dir=owner.settings.data_dir
        )
    finally:
        done.set()
        await writer
    assert (code, err) == (0, "")
    assert out == f"backup written to {target} ({target.stat().st_size} bytes)\n"
    assert written > 0
    assert not target.with_name(target.name + "-wal").exists()
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".part")]

    copy = Store(target)
    await copy.open()
    try:
        async with copy.db.execute("PRAGMA integrity_check") as cursor:
            assert (await cursor.fetchone())[0] == "ok"
        rows = len(await RetentionRepository(copy).unexpired())
        assert before <= rows <= before + written, "one moment of the database, whole"
        assert await CreditRepository(copy, CreditPolicy()).check() == []  # books balance
    finally:
        await copy.close()


def backup_args(path: Path | str) -> Any:
    return parse_args(["db", "backup", str(path)])


def test_backup_refuses_a_folder_a_missing_folder_and_the_live_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = owner_settings(tmp_path)
    live = settings.db_path
    live.parent.mkdir(parents=True)
    with sqlite3.connect(live) as db:
        db.execute("CREATE TABLE precious (x)")
    db.close()
    original = live.read_bytes()
    refusals = {
        tmp_path: "is a folder",
        tmp_path / "nowhere" / "backup.sqlite3": "does not exist",
        live: "is the live database",
        live.parent / ".." / "var" / live.name: "is the live database",
        live.with_name(live.name + "-wal"): "is the live database",
    }
    for path, reason in refusals.items():
        assert books(settings, backup_args(path)) == 2, path
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith("error: ")
        assert err.count("\n") == 1
        assert reason in err, err
    link = tmp_path / "link.sqlite3"
    link.symlink_to(live)
    assert books(settings, backup_args(link)) == 2
    assert "is the live database" in capsys.readouterr().err
    assert live.read_bytes() == original


def test_backup_of_no_database_is_refused_without_making_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = owner_settings(tmp_path)
    assert books(settings, backup_args(tmp_path / "backup.sqlite3")) == 2
    assert "there is no database" in capsys.readouterr().err
    assert not settings.db_path.exists()


@pytest.mark.parametrize("command", [("db", "backup", "b.sqlite3"), ("db", "check")])
async def test_the_books_commands_exit_when_the_database_cannot_be_opened(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """They used to hang for ever: the database thread outlived the failed open."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "bot.sqlite3").write_bytes(b"this is not a database" * 100)
    code, out, err = await console(*command, cwd=tmp_path, data_dir=data_dir)
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot open the database"), err
    assert err.count("\n") == 1


# -- in the bot ---------------------------------------------------------------------------


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(retention_days=7)


async def test_the_bot_sweeps_old_results_when_it_starts(sim: Any) -> None:
    member = sim.member("ada")
    result = await member.slash(sim.channel, "dream", prompt="a cat", steps=2)
    await wait_until(sim.env, lambda: bool(result.response and result.response.embeds))
    await sim.bot.scheduler.drain()
    [job] = await RetentionRepository(sim.bot.store).unexpired()
    folder = sim.settings.images_dir / str(job.id)
    assert folder.exists(), "a fresh result is kept"
    async with sim.bot.store.transaction() as db:
        await db.execute("UPDATE jobs SET finished_at = finished_at - ?", (8 * DAY,))
    await sim.restart()
    await wait_until(sim.env, lambda: not folder.exists())
    await sim.env.settle()
    assert (await sim.bot.scheduler.jobs.get(job.id)).expired_at is not None
    # Its buttons still work after the restart: what needs the images says they expired,
    # a reroll (the parameters alone) still runs.
    upscale = await member.click(result.response, label="Upscale")
    expired = f"❌ The images of job {job.id} expired: this server's bot keeps results for a"
    assert upscale.response.content.startswith(expired)
    await member.react(result.response, "✉️")
    assert member.user.dm_channel.history()[-1].content.startswith(expired)
    reroll = await member.click(result.response, label="Reroll")
    assert reroll.response.content.startswith("Queued as job")


async def test_a_result_not_yet_posted_keeps_its_files_whatever_its_age(owner: Owner) -> None:
    job = await owner.finished(days_ago=30)
    async with owner.store.transaction() as db:
        await db.execute("UPDATE jobs SET delivered_at = NULL WHERE id = ?", (job.id,))
    report = await owner.sweeper(retention_days=7).sweep()
    assert report.jobs == 0
    assert owner.folder(job).exists(), "start-up posts it from these files"
