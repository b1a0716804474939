"""The engine thread: the one thread that touches torch, the pipelines and the GPU.

Shaped like aiosqlite's connection thread: a thread-safe queue brings it (work, future)
pairs, results go back to the event loop with `call_soon_threadsafe` (guarded against a
future that is already done), and a sentinel stops it. A thread that dies (something its
loop does not catch escapes it) fails the work in hand and a new thread takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Self, TypeVar

from engine.api.errors import EngineError, EngineStopped
from engine.api.jobs import EngineJob, TrainingJob, TrainingOutcome
from engine.api.memory import MemorySetting, batch_images, resolve_mode
from engine.api.params import GenerationParams, GenerationResult, ModelInfo
from engine.api.port import SteadyPace, WorkerState
from engine.api.specs import ModelSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    models: dict[str, ModelSpec]
    device: str = "auto"
    dtype: str = "auto"
    preview_interval: float = 2.0
    noise: str = "cpu"  # where starting noise is drawn: "cpu" (any device) or "gpu"
    # /upscale: a diffusers upscaler pipeline (Hub id or folder; None: Lanczos), the img2img
    # tile side (0: the model's native size) and the tiles' overlap in pixels.
    upscaler: str | None = None
    upscale_tile: int = 0
    upscale_tile_overlap: int = 64
    # A safety checker (Hub id or folder) run on every batch's images before they leave the
    # engine thread, so they cross to the event loop once with their verdicts.
    safety_checker: str | None = None
    # Memory mode for every model without its own (engine/api/memory.py), and whether the
    # UNet's repeated blocks are compiled (CUDA only), warmed up when a model loads.
    memory: MemorySetting = "auto"
    compile: bool = False
    # Loaded when the thread starts, before any job (the default model, when compiling).
    warm_models: tuple[str, ...] = ()
    # A text-prompted segmentation model (CLIPSeg) for masks described in words.
    segmenter: str | None = None
    # /describe: a BLIP captioner and a CLIP (both towers) ranking tag lists (Hub ids or folders).
    captioner: str | None = None
    clip_ranker: str | None = None


@dataclass(slots=True)
class _Request:
    work: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    # The submitter's context: callbacks posted back run in it, as with asyncio.to_thread,
    # so whatever the submitting task carried (logging, tracing, test harnesses) follows.
    context: contextvars.Context

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args, context=self.context)
        except RuntimeError:  # the loop closed while we worked: nobody is listening any more
            log.warning("event loop closed before an engine callback could be delivered")


class EngineDied(EngineError):
    """The engine thread ended while it ran this work; a new thread serves what follows."""

    def __init__(self) -> None:
        super().__init__("The image engine stopped while running this job and was restarted.")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting side gave up (cancelled); nothing to deliver
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class EngineWorker(SteadyPace):
    """Runs generation on its own thread; `await generate(jobs)` from the event loop."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cache: Any = None  # engine.pipelines.model_cache.ModelCache, created on the thread
        self._safety: Any = None  # engine.pipelines.safety.SafetyCheckers, created on the thread
        self._describer: Any = None  # engine.pipelines.describe.Describer, the same way
        self.restarts = 0  # threads started after one died
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop work comes from
        self._slot: asyncio.Semaphore | None = None  # made on the loop that asks for it
        self._serving: _Request | None = None  # what the thread is doing now
        self.served = 0  # requests served, and the seconds they took (for /workers)
        self._served_seconds = 0.0
        # The CUDA card's total memory, probed on the engine thread when models are first
        # asked for (None: none, or not probed yet); read by `batch_images` on the loop.
        self.card_bytes: int | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine thread was already started")
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sd-engine", daemon=True)
        self._thread.start()

    def _revive(self, dead: threading.Thread) -> None:
        """The supervisor, on the loop: a new thread for the requests still queued, once per
        death (the dying thread asks, and so does `call` when it finds it gone)."""
        if self._stopping or self._thread is not dead:
            return
        self.restarts += 1
        # The dead thread may have left a pipeline half changed (a scheduler swapped, LoRA
        # weights fused): its models are dropped and the new thread loads them again.
        self._cache = None
        self._safety = None
        self._describer = None
        log.warning("starting a new engine thread (restart %d)", self.restarts)
        self._start_thread()

    async def free_slot(self) -> Callable[[], None]:
        """One batch at a time: the thread runs one, and the next is taken from the queue
        only when it is done (so it batches what arrived meanwhile)."""
        if self._slot is None:
            self._slot = asyncio.Semaphore(1)
        await self._slot.acquire()
        return self._slot.release

    async def __aenter__(self) -> Self:
        """Started on entry (unless it already runs), stopped on exit; work submitted after
        that is refused with EngineStopped."""
        if self._thread is None:
            self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Finish the batch in progress, refuse what is still queued, and join the thread."""
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        self._requests.put(None)
        await asyncio.to_thread(self._thread.join)
        self._drain()  # a thread that died before the sentinel served nothing after it

    async def call(self, work: Callable[[], T]) -> T:
        """Run `work` on the engine thread and wait for its result without blocking the loop."""
        if self._thread is None or self._stopping:
            raise EngineStopped()
        if not self._thread.is_alive():  # died with no work in hand to tell the loop by
            self._revive(self._thread)
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._requests.put(_Request(work, future, loop, contextvars.copy_context()))
        return await future

    async def generate(self, jobs: Sequence[EngineJob]) -> list[GenerationResult]:
        """Generate a batch of compatible jobs. Progress reaches each job's `report` on the loop.

        `report` callbacks given here are called on the event loop thread.
        """
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        threaded = [
            EngineJob(
                job.job_id,
                job.params,
                partial(_post, loop, context, job.report),
                job.cancel,
                job.inputs,
            )
            for job in jobs
        ]
        return await self.call(partial(self._generate, threaded))

    def batch_images(self, params: GenerationParams) -> int | None:
        """How many images like these one batch can hold on this card; None before the
        card is known or without one (the queue then batches nothing)."""
        loaded = self._cache.loaded if self._cache is not None else None
        return images_per_batch(self.config, loaded, self.card_bytes, params)

    @property
    def loaded_model(self) -> str | None:  # the model on the card now (the cache holds one)
        loaded = self._cache.loaded if self._cache is not None else None
        return loaded.spec.name if loaded is not None else None

    async def workers(self) -> list[WorkerState]:
        busy = self._serving is not None
        speed = self._served_seconds / self.served if self.served else None
        models = tuple(sorted(self.config.models))
        return [WorkerState("the bot's engine thread", models, busy, self.served, speed, 0.0)]

    async def preload(self, model: str) -> ModelInfo:
        """Load a model ahead of the first job (or find it loaded) and describe it."""
        return await self.call(lambda: self._models().get(model).info())

    async def check_safety(self, source: str, images: Sequence[bytes]) -> list[bool]:
        """Whether each PNG is flagged by the safety checker at `source`, which is loaded on
        the engine thread the first time and kept."""

        return await self.call(partial(self._check_safety, source, list(images)))

    def _check_safety(self, source: str, images: list[bytes]) -> list[bool]:
        from engine.pipelines.safety import SafetyCheckers

        if self._safety is None:
            self._safety = SafetyCheckers(self.config.device, self.config.dtype)
        return self._safety.check(source, images)

    async def train(self, job: TrainingJob) -> TrainingOutcome:
        """Train on the engine thread (generation waits), then make a few sample images
        with what was learned. Progress reaches `job.report` on the loop."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        threaded = replace(job, report=partial(_post, loop, context, job.report))
        return await self.call(partial(self._train, threaded))

    def _train(self, job: TrainingJob) -> TrainingOutcome:
        from engine.training.samples import train_and_sample

        return train_and_sample(self._models().get(job.params.model), job, self.config.noise)

    async def describe(self, png: bytes) -> list[str]:
        """Four A1111 prompts for a picture (/describe), by the captioner and CLIP ranker,
        which are loaded on the engine thread the first time and kept."""
        return await self.call(partial(self._describe, png))

    def _describe(self, png: bytes) -> list[str]:
        from engine.pipelines.describe import Describer

        if self._describer is None:
            config = self.config
            self._describer = Describer(
                config.captioner, config.clip_ranker, config.device, config.dtype
            )
        return self._describer.describe(png)

    def _models(self) -> Any:
        if self._cache is None:
            # Imported and probed here, on the engine thread: nothing else touches CUDA.
            from engine.pipelines.loading import pick_device, pick_dtype
            from engine.pipelines.memory import card_memory
            from engine.pipelines.model_cache import ModelCache

            config = self.config
            device = pick_device(config.device)
            dtype = pick_dtype(config.dtype, device)
            self._cache = ModelCache(config.models, device, dtype, config.memory, config.compile)
            self.card_bytes = card_memory(device)
        return self._cache

    def _generate(self, jobs: Sequence[EngineJob]) -> list[GenerationResult]:
        from engine.pipelines.batches import run_batch, with_verdicts
        from engine.pipelines.memory import with_oom_fallback

        cache = self._models()
        loaded = cache.get(jobs[0].params.model)
        results = with_oom_fallback(
            jobs, partial(run_batch, loaded, self.config), cache.lower_memory
        )
        source = self.config.safety_checker
        return with_verdicts(results, partial(self._check_safety, source) if source else None)

    def _run(self) -> None:
        if self.restarts:
            free_what_the_dead_held()
        load_ahead(self._models, self.config.warm_models)
        request: _Request | None = None
        try:
            while (request := self._requests.get()) is not None:
                self._serve(request)
                request = None
        except BaseException as death:
            # What `_serve` does not catch: SystemExit or KeyboardInterrupt raised in this
            # thread (a library calling sys.exit, an asynchronous exception), a failure to
            # post a result back. The thread ends here; without this, whoever awaits the
            # work in hand would wait forever and nothing would serve the queue again.
            log.critical("the engine thread died", exc_info=death)
            thread = threading.current_thread()
            if request is not None:
                request.post(_settle, request.future, None, EngineDied())
                request.post(self._revive, thread)
            elif self._loop is not None:  # died between two requests: work may be queued
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody to serve
                    self._loop.call_soon_threadsafe(self._revive, thread)
            return
        self._drain()

    def _serve(self, request: _Request) -> None:
        result: Any = None
        error: BaseException | None = None
        self._serving = request
        started = time.monotonic()
        try:
            result = request.work()
        except EngineError as known:
            error = known
        except Exception as unexpected:  # keep serving: one bad job must not stop the engine
            log.exception("engine work failed")
            error = EngineError(f"Generation failed ({type(unexpected).__name__}).")
            error.__cause__ = unexpected
        finally:
            self._serving = None
            self.served += 1
            self._served_seconds += time.monotonic() - started
        request.post(_settle, request.future, result, error)

    def _drain(self) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.post(_settle, request.future, None, EngineStopped())


def _post(
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
    report: Callable[[Any], None],
    progress: Any,
) -> None:
    # RuntimeError: the loop closed, so nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(report, progress, context=context)


def load_ahead(models: Callable[[], Any], names: Sequence[str]) -> None:
    """Load (and compile) the configured models before the first job, so the first member
    does not wait for torch.compile; a model that fails is tried again by its first job."""
    for name in names:
        try:
            models().get(name)
        except Exception:  # the job that needs it reports the failure to its member
            log.exception("warming up model %s failed", name)


def images_per_batch(
    config: EngineConfig, loaded: Any, card_bytes: int | None, params: GenerationParams
) -> int | None:
    """`EngineWorker.batch_images`: from the model's family and memory mode (as loaded, or
    lowered since; else as it would load) and the card's memory."""
    spec = config.models.get(params.model)
    if spec is None or card_bytes is None:
        return None
    family = spec.family or spec.guessed_family()
    setting: Any = spec.memory or config.memory
    mode = resolve_mode(setting, family, card_bytes)
    if loaded is not None and loaded.spec.name == params.model:
        family, mode = loaded.family, loaded.plan.mode
    return batch_images(family, mode, card_bytes, params.width, params.height)


def free_what_the_dead_held() -> None:
    """Free what a dead engine thread's models held before a new one loads them again."""
    gc.collect()
    torch = sys.modules.get("torch")  # never imported here for its own sake
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def quiet_libraries() -> None:
    """Mute diffusers' and transformers' progress bars and warnings. Importing them takes
    seconds, so the console calls this only once its arguments and set-up are checked."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
