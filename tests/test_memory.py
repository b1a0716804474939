"""Memory modes (issue 15): what `auto` picks for the cards owners have, the same image in
every mode that runs on the CPU, VAE tiling for large pictures, a VAE that overflows in
fp16, a batch that runs out of memory, and training that fits."""

from __future__ import annotations

import io
import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.api.errors import OutOfMemory
from engine.api.jobs import EngineJob
from engine.api.memory import GIB, MemoryPlan, auto_mode, lower_mode, plan_for, resolve_mode
from engine.api.specs import ModelSpec
from engine.api.training_params import TrainingProgress
from engine.pipelines import memory
from engine.pipelines.loading import load_model
from engine.pipelines.memory import NonFiniteImage, fit_vae, guard_decoder, with_oom_fallback
from engine.pipelines.tiny import build_tiny_sd1
from engine.pipelines.txt2img import generate_batch
from engine.worker import EngineConfig, EngineWorker
from tests.factories import tiny_params
from tests.test_training import params as training_params
from tests.test_training import run as run_training

CPU = torch.device("cpu")


# -- auto's choice, from stated card sizes (the modes that need CUDA) ------------------------


@pytest.mark.parametrize(
    ("family", "gib", "mode"),
    [
        ("sd1", 4, "medium"),  # GTX 1650
        ("sd1", 8, "high"),  # GTX 1080, RTX 2070 Super
        ("sd1", 2, "low"),
        ("sd1", 6, "high"),  # RTX 2060
        ("sd2", 6, "medium"),
        ("sdxl", 8, "medium"),  # the example: SDXL on 8 GB
        ("sdxl", 10, "medium"),  # RTX 3080 10 GB
        ("sdxl", 12, "high"),  # RTX 3080 12 GB, 3060 12 GB
        ("sdxl", 24, "high"),
        ("sdxl", 4, "low"),
    ],
)
def test_auto_picks_from_the_card_and_the_family(family: Any, gib: int, mode: str) -> None:
    # Cards report a little less than their label (a "12 GB" card: about 11.8 GiB).
    total = int(gib * GIB * 0.97)
    assert auto_mode(family, total) == mode


def test_without_a_cuda_card_auto_keeps_everything_resident() -> None:
    assert auto_mode("sdxl", None) == "high"
    assert resolve_mode("auto", "sd1", None) == "high"


def test_the_owners_mode_wins_and_out_of_memory_walks_down() -> None:
    assert resolve_mode("low", "sd1", 24 * GIB) == "low"
    assert [lower_mode("high"), lower_mode("medium"), lower_mode("low")] == ["medium", "low", None]
    low = plan_for("low")
    assert low.sequential_offload
    assert low.attention_slicing
    assert low.vae_slicing
    assert plan_for("medium").model_offload
    assert not plan_for("high").offloaded


def test_the_allocator_default_is_set_unless_the_owner_set_one(monkeypatch) -> None:
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    memory.configure_allocator()
    assert os.environ["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    memory.configure_allocator()
    assert "PYTORCH_ALLOC_CONF" not in os.environ


# -- the same image in every mode the CPU runs --------------------------------------------


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def images_in_mode(folder: Path, mode: str) -> list[np.ndarray]:
    loaded = load_model(ModelSpec("tiny", str(folder), memory=mode), CPU, torch.float32)
    assert loaded.plan.mode == mode
    assert loaded.info().memory == mode
    job = EngineJob(1, tiny_params(count=2, steps=3))
    with torch.inference_mode():
        [result] = generate_batch(loaded, [job], preview_interval=60.0)
    return [pixels(image.png) for image in result.images]


def test_every_mode_gives_the_image_of_high(tiny_sd1: Path) -> None:
    high = images_in_mode(tiny_sd1, "high")
    for mode in ("medium", "low"):  # VAE slicing; attention slicing too in low
        other = images_in_mode(tiny_sd1, mode)
        for a, b in zip(high, other, strict=True):
            # Sliced matmuls round differently: at most one level of one channel.
            assert np.abs(a - b).max() <= 1, mode


def test_a_per_model_mode_turns_on_its_switches(tiny_sd1: Path) -> None:
    loaded = load_model(ModelSpec("tiny", str(tiny_sd1), memory="low"), CPU, torch.float32)
    pipe: Any = loaded.pipe
    assert pipe.vae.use_slicing
    assert pipe.vae.use_tiling
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}
    default = load_model(ModelSpec("tiny", str(tiny_sd1)), CPU, torch.float32, memory="auto")
    assert default.plan.mode == "high"
    assert not default.pipe.vae.use_slicing
    # Outside `low`, attention is torch's scaled_dot_product_attention (flash or
    # memory-efficient kernels where the device has them), which slicing would replace.
    processors = {type(p).__name__ for p in default.pipe.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}


# -- VAE tiling past 1.5x the native side ------------------------------------------------


def test_large_pictures_decode_in_tiles_and_native_ones_do_not(tmp_path: Path) -> None:
    vae: Any = build_tiny_sd1(tmp_path).vae
    plain = build_tiny_sd1(tmp_path).vae  # the same seed: the same weights
    fit_vae(vae, plan_for("high"), "sd1")
    assert vae.use_tiling
    assert vae.tile_sample_min_size == 768
    fit_vae(vae, plan_for("medium"), "sd1")
    assert vae.tile_sample_min_size == 512
    # The tiny VAE halves the side once: at tiles of 64 pixels it behaves as SD's VAE does
    # at 512, and decodes in seconds on a CPU.
    vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 32
    calls: list[tuple[int, ...]] = []
    vae.decoder.register_forward_hook(lambda m, a, out: calls.append(tuple(out.shape)))
    with torch.inference_mode():
        small = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(vae.decode(small).sample, plain.decode(small).sample)
        assert calls == [(1, 3, 64, 64)]  # not larger than a tile: decoded whole
        calls.clear()
        large = torch.randn(1, 4, 80, 80, generator=torch.Generator().manual_seed(1))
        tiled = vae.decode(large).sample
        untiled = plain.decode(large).sample
    assert tiled.shape == untiled.shape == (1, 3, 160, 160)
    assert len(calls) == 16  # tiles of 64 pixels every 48 (a quarter overlaps): 4 x 4
    # Tiles are blended over their overlap: the same picture, softened at the seams.
    assert float((tiled - untiled).abs().mean()) < 0.1


# -- a VAE that overflows in half precision ------------------------------------------------


def overflowing_vae(tmp_path: Path) -> Any:
    """A VAE whose decoder overflows fp16's range (65504) but not float32's: the failure SD
    VAEs show in fp16 at large sizes, made certain by one layer's weights near fp16's
    largest value: its sums pass 65504, and the group norm after it brings float32 back."""
    vae: Any = build_tiny_sd1(tmp_path).vae
    with torch.no_grad():
        weight = vae.decoder.conv_in.weight
        weight.copy_(weight.sign() * 6e4)
    return vae.to(torch.float16)


def test_an_fp16_overflow_is_decoded_again_in_float32(tmp_path: Path) -> None:
    vae = overflowing_vae(tmp_path)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    with torch.inference_mode():
        assert not torch.isfinite(vae.decode(latents).sample).all()
        guard_decoder(vae)
        decoded = vae.decode(latents).sample
    assert torch.isfinite(decoded).all()
    assert decoded.dtype == torch.float16
    assert vae.dtype == torch.float16


def test_a_picture_that_stays_nan_is_refused_not_posted(tmp_path: Path) -> None:
    vae: Any = build_tiny_sd1(tmp_path).vae
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(float("nan"))
    guard_decoder(vae)
    with torch.inference_mode(), pytest.raises(NonFiniteImage, match="nothing was charged"):
        vae.decode(torch.zeros(1, 4, 8, 8))


# -- out of memory: one mode down, the batch split, then the member is told ----------------


def test_an_out_of_memory_batch_is_split_and_run_one_mode_down() -> None:
    runs: list[list[int]] = []
    lowered: list[str] = []

    def run(jobs: Any) -> list[Any]:
        runs.append(list(jobs))
        if len(runs) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [f"result {job}" for job in jobs]

    def lower_once() -> Any:
        lowered.append("medium")
        return "medium"

    assert with_oom_fallback([1, 2], run, lower_once) == ["result 1", "result 2"]
    assert runs == [[1, 2], [1], [2]]
    assert lowered == ["medium"]


def test_out_of_memory_twice_tells_the_member() -> None:
    def run(jobs: Any) -> list[Any]:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(OutOfMemory):
        with_oom_fallback([1], run, lambda: None)


async def test_the_engine_retries_an_out_of_memory_batch_in_a_lower_mode(
    tiny_sd1: Path, monkeypatch
) -> None:
    from engine.pipelines import batches

    real = batches.run_batch
    calls: list[int] = []

    def first_call_out_of_memory(loaded: Any, config: Any, jobs: Any) -> Any:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(loaded, config, jobs)

    monkeypatch.setattr(batches, "run_batch", first_call_out_of_memory)
    engine = EngineWorker(
        EngineConfig({"tiny": ModelSpec("tiny", str(tiny_sd1))}, device="cpu", preview_interval=60)
    )
    async with engine:
        jobs = [EngineJob(1, tiny_params(seed=1)), EngineJob(2, tiny_params(seed=2))]
        results = await engine.generate(jobs)
        info = await engine.preload("tiny")
    assert calls == [2, 1, 1]
    assert [len(result.images) for result in results] == [1, 1]
    assert info.memory == "medium"


# -- training that fits ------------------------------------------------------------------


def losses(loaded: Any, tmp_path: Path, photos: list[bytes], plan: MemoryPlan) -> list[float]:
    loaded.plan = plan
    seen: list[float] = []

    def report(progress: TrainingProgress) -> None:
        if progress.loss is not None:
            seen.append(progress.loss)

    p = replace(training_params(steps=4), checkpoint_every=100)
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))  # a fresh run, not a resumed one
    run_training(loaded, p, photos, workdir, report=report, cancel=threading.Event())
    return seen


@pytest.fixture
def photos() -> list[bytes]:
    rng = np.random.default_rng(0)
    result = []
    for _ in range(3):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        result.append(buffer.getvalue())
    return result


def test_gradient_checkpointing_gives_the_same_loss_curve(tiny_sd1: Path, tmp_path, photos):
    loaded = load_model(ModelSpec("tiny", str(tiny_sd1)), CPU, torch.float32)
    plain = losses(loaded, tmp_path, photos, plan_for("high"))
    checkpointed = losses(loaded, tmp_path, photos, MemoryPlan("high", gradient_checkpointing=True))
    assert np.allclose(plain, checkpointed, rtol=1e-4)
    assert not loaded.pipe.unet.is_gradient_checkpointing  # put back


def test_medium_trains_with_8bit_adam_on_the_curve_of_high(tiny_sd1: Path, tmp_path, photos):
    pytest.importorskip("bitsandbytes")
    from engine.pipelines.memory import training_optimizer

    loaded = load_model(ModelSpec("tiny", str(tiny_sd1)), CPU, torch.float32)
    high = losses(loaded, tmp_path, photos, plan_for("high"))
    medium = losses(loaded, tmp_path, photos, plan_for("medium"))
    assert high[0] == pytest.approx(medium[0], rel=1e-4)  # before any update: the same
    # bitsandbytes keeps 32-bit moments for tensors under 4096 elements (its min_8bit_size),
    # which the tiny model's LoRA matrices all are: the same curve.
    assert np.allclose(high, medium, rtol=1e-4)
    # A LoRA matrix of SD's size (1280 x 16) gets 8-bit moments, and trains.
    weight = torch.nn.Parameter(torch.randn(1280, 16, generator=torch.Generator().manual_seed(0)))
    optimizer = training_optimizer([weight], 1e-3, 1e-2, plan_for("medium"))
    assert type(optimizer).__name__ == "AdamW8bit"
    assert type(training_optimizer([weight], 1e-3, 1e-2, plan_for("high"))).__name__ == "AdamW"
    before = weight.detach().clone()
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    assert optimizer.state[weight]["state1"].dtype == torch.uint8  # quantized moments
    assert float((before - weight.detach()).mean()) == pytest.approx(1e-3, rel=0.05)


def test_the_engine_answers_how_many_images_its_card_batches(tiny_sd1: Path) -> None:
    specs = {
        "sd15": ModelSpec("sd15", str(tiny_sd1)),
        "xl": ModelSpec("xl", "stabilityai/stable-diffusion-xl-base-1.0"),
        "lean": ModelSpec("lean", str(tiny_sd1), memory="low"),
    }
    engine = EngineWorker(EngineConfig(specs, device="cpu"))
    at_512 = tiny_params(model="sd15", width=512, height=512)
    assert engine.batch_images(at_512) is None  # the card is not known before a model loads
    engine.card_bytes = int(7.8 * GIB)
    assert engine.batch_images(at_512) == 6
    assert engine.batch_images(replace(at_512, model="xl", width=1024, height=1024)) == 1
    assert engine.batch_images(replace(at_512, model="lean")) == 1
    assert engine.batch_images(replace(at_512, model="unknown")) is None


async def test_models_to_warm_are_loaded_before_the_first_job(tiny_sd1: Path) -> None:
    specs = {"tiny": ModelSpec("tiny", str(tiny_sd1))}
    engine = EngineWorker(EngineConfig(specs, device="cpu", warm_models=("missing", "tiny")))
    async with engine:
        # The first request is served after the warm-up: the model is there already, and a
        # model that failed to warm up ("missing") stopped nothing.
        name = await engine.call(lambda: engine._cache.loaded.spec.name)
    assert name == "tiny"


def test_offload_hooks_follow_the_pipeline_about_to_run() -> None:
    """img2img and ControlNet pipelines share the model's modules; diffusers' offload hooks
    belong to one pipeline at a time (no CUDA here: the calls are what is checked)."""
    from types import SimpleNamespace

    from engine.pipelines.memory import hooked_for

    class Pipe:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def enable_model_cpu_offload(self, device: Any) -> None:
            self.calls.append(f"model {device}")

        def enable_sequential_cpu_offload(self, device: Any) -> None:
            self.calls.append(f"sequential {device}")

    from engine.pipelines.memory import forget_hooks

    base, img2img = Pipe(), Pipe()
    loaded = SimpleNamespace(
        pipe=base, plan=plan_for("medium"), device=torch.device("cuda"), derived={}
    )
    for pipe in (base, base, img2img, img2img, base):  # loading hooked the model's own
        hooked_for(loaded, pipe)
    assert base.calls == ["model cuda"]  # hooked again after img2img ran
    assert img2img.calls == ["model cuda"]
    hooked_for(loaded, img2img)
    loaded.plan = plan_for("low")
    forget_hooks(loaded)  # lowering the mode placed (and hooked) the model's own again
    hooked_for(loaded, base)
    hooked_for(loaded, img2img)
    assert base.calls == ["model cuda"]
    assert img2img.calls[-1] == "sequential cuda"
    resident = SimpleNamespace(
        pipe=base, plan=plan_for("high"), device=torch.device("cuda"), derived={}
    )
    hooked_for(resident, img2img)
    on_cpu = SimpleNamespace(
        pipe=base, plan=plan_for("medium"), device=torch.device("cpu"), derived={}
    )
    hooked_for(on_cpu, img2img)
    assert len(img2img.calls) == 3  # nothing to hook: everything resident, or no CUDA


async def test_a_training_out_of_memory_is_the_members_sentence(tiny_sd1: Path, monkeypatch):
    import engine.training.samples
    from engine.api.jobs import TrainingJob

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    # Where the engine thread's training looks it up (train_and_sample).
    monkeypatch.setattr(engine.training.samples, "train", out_of_memory)
    engine = EngineWorker(EngineConfig({"tiny": ModelSpec("tiny", str(tiny_sd1))}, device="cpu"))
    job = TrainingJob(1, replace(training_params(), model="tiny"), workdir="unused")
    async with engine:
        with pytest.raises(OutOfMemory):
            await engine.train(job)
        assert engine.running  # the engine goes on serving
