"""Image prompts on a GPU worker (issue 18): the pictures travel to it as the job's stored
inputs, by key, and the worker's engine thread applies the model's IP-Adapter as the bot's
own would, against a real redis-server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.settings import Settings
from engine.api.infotext import parse_infotext
from engine.imaging.images import read_png_infotext
from engine.pipelines.tiny_ip_adapter import WEIGHT_NAME, save_tiny_ip_adapter
from tests.conftest import DEADLINE
from tests.fleet_helpers import Recorder
from tests.test_fleet import fleet_bot, submit

__all__ = ["fleet_bot"]  # the fleet's fixture, over this module's settings


@pytest.fixture(scope="session")
def tiny_ip_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_sd1: Path) -> Path:
    return save_tiny_ip_adapter(tmp_path_factory.mktemp("models") / "tiny-ip-adapter", tiny_sd1)


@pytest.fixture
def fleet_settings(
    make_settings: Callable[..., Settings], redis_server: Any, tiny_sd1: Path, tiny_ip_adapter: Path
) -> Settings:
    model = {
        "source": str(tiny_sd1),
        "default_size": (64, 64),
        "ip_adapter": str(tiny_ip_adapter / WEIGHT_NAME),
    }
    return make_settings(queue_url=redis_server.url, models={"tiny": model})


def picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (220, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_image_prompts_run_on_a_gpu_worker_from_their_stored_pictures(fleet_bot):
    bot, fleet = fleet_bot
    await fleet.start("gpu")
    key = bot.images.inputs.put(picture())
    observer = Recorder()
    await submit(bot, 10, observer, steps=2, image_prompts=(key,), image_weight=1.0)
    await asyncio.wait_for(observer.ended.wait(), DEADLINE)
    assert not observer.failures
    [outcome] = observer.outcomes
    values = parse_infotext(read_png_infotext(outcome.images[0].png)).values
    assert values["IP-Adapter"] == "ip-adapter_tiny"
    assert values["IP-Adapter images"] == "1"
