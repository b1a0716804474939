"""/edit on a GPU worker (issue 18): the job and its picture travel through Redis, the
worker loads the model's InstructPix2Pix UNet from its own SDBOT_MODELS, and the picture
that comes back is the one the bot's own engine thread makes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from bot.client.runner import build_bot
from bot.generation.options import DreamOptions
from bot.jobs.engines import local_engine
from engine.api.jobs import EngineJob
from tests.conftest import DEADLINE
from tests.fleet_helpers import Recorder
from tests.test_edit import pixels, png
from tests.test_fleet import Fleet
from tests.test_images_discord import picture


async def test_an_edit_runs_on_a_gpu_worker_as_on_the_bots_own_engine(
    make_settings: Any, redis_server: Any, tiny_sd1: Path, tiny_pix2pix: Path
) -> None:
    model = {"source": str(tiny_sd1), "edit_source": str(tiny_pix2pix), "default_size": (64, 64)}
    settings = make_settings(queue_url=redis_server.url, models={"tiny": model})
    bot = build_bot(settings)
    fleet = Fleet(settings, redis_server.url, lease=1.0)
    async with bot.store, bot.engine:
        dispatcher = asyncio.create_task(bot.scheduler.run())
        try:
            worker = await fleet.start("gpu-1")
            options = DreamOptions("make it winter", seed=3, steps=2)
            prepared = await bot.images.edit(options, png(picture()), image_cfg=1.25)
            observer = Recorder()
            await bot.dreams.submit(
                prepared.params,
                user_id=7,
                guild_id=None,
                channel_id=None,
                interaction_id=None,
                observer=observer,
            )
            await asyncio.wait_for(observer.ended.wait(), DEADLINE)
            assert observer.failures == []
            [outcome] = observer.outcomes
            assert worker.served == 1
        finally:
            await bot.scheduler.stop(dispatcher, grace=5.0)
            await bot.scheduler.drain()
            await fleet.stop_all()
    [image] = outcome.images
    assert "Image CFG scale: 1.25" in image.infotext
    # The same job on an engine thread of this process gives the same picture.
    inputs = {prepared.params.init_image: png(picture())}
    async with local_engine(settings) as local:
        [result] = await local.generate([EngineJob(1, prepared.params, inputs=inputs)])
    assert np.array_equal(pixels(result.images[0].png), pixels(image.png))
