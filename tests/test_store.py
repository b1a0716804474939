"""The SQLite store: migrations, jobs and images."""

from __future__ import annotations

import pytest

from data import JobImage, JobRepository, JobStatus, Store
from data.jobs import DuplicateInteraction
from data.store import _migrations


@pytest.fixture
async def store(tmp_path):
    store = Store(tmp_path / "db" / "bot.sqlite3")
    await store.open()
    yield store
    await store.close()


async def create(jobs: JobRepository, interaction_id: int | None = 1, **params):
    return await jobs.create(
        kind="dream",
        user_id=10,
        guild_id=20,
        channel_id=30,
        interaction_id=interaction_id,
        params={"prompt": "a cat", **params},
    )


async def test_created_and_migrated_with_wal_and_foreign_keys(store):
    assert await store.schema_version() == max(version for version, _, _ in _migrations())
    async with store.db.execute("PRAGMA journal_mode") as cursor:
        assert (await cursor.fetchone())[0] == "wal"
    async with store.db.execute("PRAGMA foreign_keys") as cursor:
        assert (await cursor.fetchone())[0] == 1


async def test_reopening_keeps_rows_and_does_not_migrate_twice(tmp_path):
    path = tmp_path / "bot.sqlite3"
    first = Store(path)
    await first.open()
    job = await create(JobRepository(first))
    await first.close()
    second = Store(path)
    await second.open()
    assert (await JobRepository(second).get(job.id)).params == {"prompt": "a cat"}
    await second.close()


async def test_job_lifecycle(store):
    jobs = JobRepository(store)
    job = await create(jobs, seed=5)
    assert job.status == JobStatus.QUEUED
    assert job.params == {"prompt": "a cat", "seed": 5}
    assert await jobs.mark_running(job.id)
    assert not await jobs.mark_running(job.id), "a job is claimed once"
    image = JobImage(job.id, 0, 5, "/x/0.png", 64, 64, "a cat\nSteps: 1")
    assert await jobs.complete(job.id, [image])
    assert not await jobs.complete(job.id, [image]), "an ended job is not completed again"
    await jobs.set_message(job.id, 999)
    done = await jobs.get(job.id)
    assert (done.status, done.message_id) == (JobStatus.SUCCEEDED, 999)
    assert done.finished_at >= done.started_at >= done.created_at
    assert [image.seed for image in await jobs.images(job.id)] == [5]
    assert await jobs.with_status(JobStatus.QUEUED, JobStatus.RUNNING) == []


async def test_an_interaction_makes_one_job(store):
    jobs = JobRepository(store)
    job = await create(jobs, interaction_id=77)
    with pytest.raises(DuplicateInteraction) as caught:
        await create(jobs, interaction_id=77)
    assert caught.value.job.id == job.id
    assert len(await jobs.with_status(*JobStatus)) == 1


async def test_a_rerun_replaces_the_images_of_an_interrupted_run(store):
    jobs = JobRepository(store)
    job = await create(jobs)
    await jobs.mark_running(job.id)
    async with store.transaction() as db:  # a crash right after the first run wrote images
        await db.execute(
            "INSERT INTO images (job_id, idx, seed, path, width, height, infotext)"
            " VALUES (?, 0, 1, '/old', 8, 8, 'old')",
            (job.id,),
        )
    assert await jobs.complete(job.id, [JobImage(job.id, 0, 1, "/new", 8, 8, "new")])
    assert [image.path for image in await jobs.images(job.id)] == ["/new"]


async def test_complete_is_all_or_nothing(store):
    jobs = JobRepository(store)
    job = await create(jobs)
    image = JobImage(job.id, 0, 1, "/p", 8, 8, "t")
    with pytest.raises(Exception, match="UNIQUE"):
        await jobs.complete(job.id, [image, image])
    assert await jobs.images(job.id) == []
    assert (await jobs.get(job.id)).status == JobStatus.QUEUED


async def test_finish_needs_a_final_status(store):
    jobs = JobRepository(store)
    job = await create(jobs)
    with pytest.raises(ValueError, match="not a final status"):
        await jobs.finish(job.id, JobStatus.RUNNING)
