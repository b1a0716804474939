"""The engine the scheduler is given, from the settings: today the in-process engine
thread (engine.worker), the first adapter of the port in engine/api/port.py."""

from __future__ import annotations

from bot.settings import Settings
from engine.api.specs import ModelSpec
from engine.worker import EngineConfig, EngineWorker


def build_engine(settings: Settings, models: dict[str, ModelSpec] | None = None) -> EngineWorker:
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
        )
    )
