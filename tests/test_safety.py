"""The safety checker on the engine thread, with tiny random checkers whose thresholds
flag every image or none (engine/pipelines/safety.py, EngineWorker.check_safety)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.community.safety import blur_png
from engine.api.errors import EngineError
from engine.imaging.images import encode_png, read_png_infotext
from engine.pipelines.safety import save_tiny_checker
from engine.worker import EngineConfig, EngineWorker


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    return encode_png(Image.new("RGB", size, colour), "a cat\nSteps: 1, Seed: 1")


@pytest.fixture(scope="module")
def checkers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkers")
    return {
        "all": save_tiny_checker(root / "all", flag_everything=True),
        "none": save_tiny_checker(root / "none", flag_everything=False),
    }


@pytest.fixture
async def engine():
    worker = EngineWorker(EngineConfig(models={}, device="cpu"))
    worker.start()
    yield worker
    await worker.stop()


async def test_thresholds_forced_low_flag_everything_and_high_nothing(engine, checkers):
    images = [png((200, 30, 30)), png((10, 10, 10), (32, 96))]
    assert await engine.check_safety(str(checkers["all"]), images) == [True, True]
    assert await engine.check_safety(str(checkers["none"]), images) == [False, False]
    assert await engine.check_safety(str(checkers["none"]), []) == []


async def test_a_full_model_folder_holds_the_checker_in_subfolders(engine, checkers, tmp_path):
    model = tmp_path / "model"
    save_tiny_checker(model / "safety_checker", flag_everything=True)
    # The image processor's config sits in feature_extractor/, as in SD model repos.
    (model / "feature_extractor").mkdir()
    (model / "safety_checker" / "preprocessor_config.json").rename(
        model / "feature_extractor" / "preprocessor_config.json"
    )
    assert await engine.check_safety(str(model), [png((1, 2, 3))]) == [True]


async def test_a_checker_that_cannot_load_is_an_engine_error(engine, tmp_path):
    with pytest.raises(EngineError, match="The safety checker could not be loaded"):
        await engine.check_safety(str(tmp_path / "missing"), [png((1, 2, 3))])
    # The engine goes on serving.
    assert engine.running


def test_blur_keeps_size_and_parameters_and_loses_the_detail():
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 32, 64))  # a hard edge
    original = encode_png(image, "a cat\nSteps: 1")
    blurred = blur_png(original, "a cat\nSteps: 1")
    result = Image.open(io.BytesIO(blurred))
    assert result.size == (64, 64)
    assert read_png_infotext(blurred) == "a cat\nSteps: 1"
    # Across the edge the blur leaves a gradient, not black and white.
    assert 30 < result.convert("L").getpixel((31, 32)) < 225
