"""The engine the scheduler is given, from the settings: the in-process engine thread
(engine.worker), or GPU workers on other machines through Redis (bot/fleet), the two
adapters of the port in engine/api/port.py."""

from __future__ import annotations

from bot.settings import Settings
from engine.api.port import EnginePort
from engine.api.specs import ModelSpec
from engine.worker import EngineConfig, EngineWorker


def build_engine(settings: Settings) -> EnginePort:
    """The GPU workers behind Redis when SDBOT_QUEUE_URL is set, else the engine thread."""
    if settings.queue_url is not None:
        from bot.fleet.adapter import RedisEngine  # redis-py only when it is used

        return RedisEngine(settings.queue_url.get_secret_value(), list(settings.models))
    return local_engine(settings)


def local_engine(settings: Settings, models: dict[str, ModelSpec] | None = None) -> EngineWorker:
    """The engine thread in this process (the bot's own, a worker's, the console's)."""
    return EngineWorker(
        EngineConfig(
            models=models if models is not None else settings.model_specs(),
            device=settings.device,
            dtype=settings.dtype,
            preview_interval=settings.progress_interval,
            noise=settings.noise,
            upscaler=settings.upscaler,
            upscale_tile=settings.upscale_tile,
            upscale_tile_overlap=settings.upscale_tile_overlap,
            safety_checker=settings.safety_checker or None,
            memory=settings.memory,
            compile=settings.compile,
            warm_models=(settings.default_model,) if settings.compile else (),
            segmenter=settings.segmenter or None,
            captioner=settings.captioner or None,
            clip_ranker=settings.clip_ranker or None,
        )
    )
