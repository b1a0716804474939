"""The models the engine keeps loaded: one at a time, in its memory mode, compiled and
warmed up when the owner asks. Runs on the engine thread only."""

from __future__ import annotations

import gc
import logging
import time

import torch

from engine.api.errors import ModelLoadError
from engine.api.hashes import FileHashCache
from engine.api.memory import MemoryMode, MemorySetting
from engine.api.specs import ModelSpec
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.memory import compile_unet, configure_allocator, forget_hooks, lower

log = logging.getLogger(__name__)


class ModelCache:
    """Keeps the most recently used model loaded; switching models frees the previous one.

    One resident model is the safe default for a gaming GPU: an SD1.5 pipeline in fp16 takes
    about 2.5 GB of VRAM, an SDXL one about 7 GB, SD 3.5 Large about 28 GB and FLUX.1 about
    34 GB in bf16 (those two offloaded as their memory mode says: engine/api/memory.py).
    """

    def __init__(
        self,
        specs: dict[str, ModelSpec],
        device: torch.device,
        dtype: torch.dtype,
        memory: MemorySetting = "auto",
        compiled: bool = False,
    ):
        self.specs = specs
        self.device = device
        self.dtype = dtype
        self.memory: MemorySetting = memory
        self.compiled = compiled and device.type == "cuda"
        self._hashes = FileHashCache()
        self._loaded: LoadedModel | None = None
        configure_allocator()

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def get(self, name: str) -> LoadedModel:
        if self._loaded is not None and self._loaded.spec.name == name:
            return self._loaded
        spec = self.specs.get(name)
        if spec is None:
            raise ModelLoadError(name, "no model of that name is configured")
        self.release()
        self._loaded = load_model(spec, self.device, self.dtype, self._hashes, self.memory)
        if self.compiled:
            compile_unet(self._loaded.pipe)
            warm_up(self._loaded)
        return self._loaded

    def lower_memory(self) -> MemoryMode | None:
        """The loaded model one memory mode down, after it ran out of memory."""
        loaded = self._loaded
        if loaded is None:
            return None
        loaded.plan = lower(loaded.pipe, loaded.plan, self.device, loaded.family)
        forget_hooks(loaded)  # lowering hooked the model's own pipeline again
        return loaded.plan.mode

    def release(self) -> None:
        if self._loaded is None:
            return
        self._loaded = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def warm_up(loaded: LoadedModel) -> None:
    """One small generation right after compiling, so torch.compile's first-call cost is
    paid at load (the bot's start), never on a member's first job."""
    pipe = loaded.pipe
    width, height = loaded.spec.size_default()
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(prompt="", num_inference_steps=2, width=width, height=height, output_type="latent")
    log.info("compiled and warmed up %s in %.1fs", loaded.spec.name, time.perf_counter() - started)
