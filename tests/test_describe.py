"""/describe's engine side (issue 18): the tiny BLIP captioner and CLIP ranker, saved to
folders and loaded the way an owner's SDBOT_CAPTIONER and SDBOT_CLIP_RANKER are, read a
picture into four A1111 prompts on the engine thread, the same four for the same picture;
and the same through a GPU worker on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as redis
import torch
from PIL import Image

from bot.fleet.adapter import RedisEngine
from bot.fleet.worker import FleetWorker
from engine.api.describe import (
    NOT_SET_UP,
    Reading,
    clean_caption,
    emphasised,
    four_prompts,
)
from engine.api.errors import EngineError
from engine.api.prompt_syntax import parse_attention
from engine.pipelines.describe import (
    CATEGORIES,
    LOAD_FAILED,
    Describer,
    read_picture,
    tag_list,
)
from engine.pipelines.tiny_describe import save_tiny_captioner, save_tiny_ranker
from engine.worker import EngineConfig, EngineWorker
from tests.fleet_helpers import until


@pytest.fixture(scope="session")
def blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_captioner(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_ranker(tmp_path_factory.mktemp("models") / "tiny-clip")


def picture_png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def weights(prompt: str) -> dict[str, float]:
    """Each emphasised piece of an A1111 prompt and its weight, as the engine parses it."""
    return {
        f.text.strip(" ,"): round(f.weight, 3) for f in parse_attention(prompt) if f.weight != 1
    }


READING = Reading(
    beam="arafed cat sitting on a table (at 10:30)",
    medium_led="an oil painting of a cat on a table",
    sampled=("a cat looking out of a window", "a small cat in the sun"),
    mediums=(("an oil painting", 0.6), ("a photograph", 0.3)),
    movements=(("impressionism", 0.5), ("realism", 0.25)),
    flavors=(
        ("warm tones", 0.4),
        ("soft lighting", 0.22),
        ("highly detailed", 0.12),
        ("cozy", 0.05),
        ("bokeh", 0.04),
        ("film grain", 0.02),
    ),
)


def test_the_four_prompts_are_a1111_prompts_of_their_own_shape():
    assert four_prompts(READING) == [
        r"cat sitting on a table \(at 10 30\), an oil painting, impressionism, warm tones, "
        "soft lighting, highly detailed",
        "an oil painting of a cat on a table, (impressionism:1.3), (warm tones:1.25), "
        "(soft lighting:1.15), (highly detailed:1.05)",
        "a cat looking out of a window, a photograph, realism, cozy, bokeh, film grain",
        "a small cat in the sun, an oil painting, impressionism, (warm tones:1.3), "
        "(soft lighting:1.15), (highly detailed:1.1), cozy, bokeh, film grain",
    ]
    first, second, _, fourth = four_prompts(READING)
    assert weights(first) == {}, "escaped brackets are words, not emphasis"
    assert weights(second) == {
        "impressionism": 1.3,
        "warm tones": 1.25,
        "soft lighting": 1.15,
        "highly detailed": 1.05,
    }
    assert weights(fourth)["warm tones"] == 1.3


def test_captions_lose_blips_artefacts_and_escape_a1111s_syntax():
    assert clean_caption("arafed woman with a hat") == "woman with a hat"
    assert clean_caption("  a [red] (car)\\ ,") == r"a \[red\] \(car\)\\"
    assert clean_caption("a clock at 10:30\nin a room") == "a clock at 10 30 in a room"
    # A tag CLIP barely prefers rounds to 1 and is written plain.
    assert emphasised((("a", 0.9), ("b", 0.05))) == ["(a:1.3)", "b"]


def test_the_shipped_tag_lists_are_there_and_hold_no_repeats():
    for category in CATEGORIES:
        tags = tag_list(category)
        assert len(tags) >= 6, category
        assert len(set(tags)) == len(tags), category
        assert all("(" not in tag and ":" not in tag for tag in tags), category


def test_the_tiny_models_give_four_prompts_the_same_for_the_same_picture(blip, clip):
    describer = Describer(str(blip), str(clip), "cpu", "float32")
    prompts = describer.describe(picture_png(1))
    assert len(prompts) == 4
    assert len(set(prompts)) == 4
    assert all(prompt.strip() for prompt in prompts)
    assert weights(prompts[1]), "the second and the fourth emphasise their tags"
    assert weights(prompts[3])
    _, ranker = describer.models()
    with torch.inference_mode():
        top = ranker.rank(ranker.image_features(read_picture(picture_png(1))), "flavors", 3)
    assert prompts[0].endswith(", ".join(tag for tag, _ in top)), "A1111's shape: its flavours"
    assert describer.describe(picture_png(1)) == prompts
    fresh = Describer(str(blip), str(clip), "cpu", "float32")
    assert fresh.describe(picture_png(1)) == prompts, "loaded again, the same prompts"
    assert describer.describe(picture_png(2)) != prompts, "another picture, other prompts"


def test_missing_or_broken_models_are_one_sentence(blip, tmp_path, caplog):
    with pytest.raises(EngineError) as not_set_up:
        Describer(str(blip), None).describe(picture_png(1))
    assert not_set_up.value.user_message == NOT_SET_UP
    missing = tmp_path / "no-such-model"
    with caplog.at_level(logging.ERROR), pytest.raises(EngineError) as broken:
        Describer(str(missing), str(missing), "cpu", "float32").describe(picture_png(1))
    assert broken.value.user_message == LOAD_FAILED
    assert str(missing) not in broken.value.user_message
    assert "SDBOT_CAPTIONER" in caplog.text, "the owner's log names the setting"


async def test_the_engine_thread_describes_and_keeps_its_models(blip, clip, tiny_sd1):
    config = EngineConfig(
        models={}, device="cpu", dtype="float32", captioner=str(blip), clip_ranker=str(clip)
    )
    async with EngineWorker(config) as engine:
        prompts = await engine.describe(picture_png(3))
        served = engine._describer
        assert await engine.describe(picture_png(3)) == prompts
        assert engine._describer is served, "loaded once, kept"
    expected = Describer(str(blip), str(clip), "cpu", "float32").describe(picture_png(3))
    assert prompts == expected


async def test_a_gpu_worker_describes_for_the_bot(blip, clip, redis_server, tmp_path):
    config = EngineConfig(
        models={}, device="cpu", dtype="float32", captioner=str(blip), clip_ranker=str(clip)
    )
    bot_side = RedisEngine(redis_server.url, [])
    db: Any = redis.Redis.from_url(redis_server.url)
    stop = asyncio.Event()
    async with bot_side, EngineWorker(config) as engine:
        worker = FleetWorker(db, engine, "gpu-1", tmp_path / "worker", lease=5.0)
        serving = asyncio.create_task(worker.serve(stop))
        try:
            await until(lambda: bool(worker.heartbeats))
            prompts = await bot_side.describe(picture_png(4))
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await db.aclose()
    assert prompts == Describer(str(blip), str(clip), "cpu", "float32").describe(picture_png(4))
