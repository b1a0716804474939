"""Fitting a loaded pipeline into the card it runs on: the memory mode's placement
(engine/api/memory.py), VAE tiling for large pictures, a VAE that overflows in fp16, and the
speed options of CUDA. Runs on the engine thread only.

diffusers' memory guide (https://huggingface.co/docs/diffusers/optimization/memory) is the
source for what each switch does; the offloads need an accelerator (diffusers refuses them
on the CPU), so on the CPU and MPS the modes only slice and tile.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from engine.api.errors import EngineError, OutOfMemory
from engine.api.memory import MemoryMode, MemoryPlan, lower_mode, plan_for
from engine.api.specs import NATIVE_SIZE, ModelFamily

log = logging.getLogger(__name__)

T = TypeVar("T")

# PyTorch's allocator grows segments instead of fragmenting into fixed blocks: the setting
# PyTorch's own docs suggest when "reserved but unallocated" memory is large, which is what a
# bot that alternates sizes, batches and models sees.
ALLOCATOR_DEFAULT = "expandable_segments:True"
_ALLOCATOR_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
# Tiles for the VAE: pictures whose side passes this multiple of the model's native side are
# decoded in tiles (upscales, large outpaints); what members generate directly never is, so
# it stays the image A1111 makes.
TILE_FROM_NATIVE = 1.5


class NonFiniteImage(EngineError):
    """The VAE decoded NaN or infinite pixels even in float32: nothing usable to post."""

    def __init__(self) -> None:
        super().__init__(
            "The model produced an empty (NaN) image; nothing was charged. "
            "Try another seed or sampler."
        )


def configure_allocator() -> None:
    """Set PyTorch's allocator to expandable segments unless the owner set it. Read when
    CUDA first allocates, so this runs before a model loads."""
    if not any(os.environ.get(name) for name in _ALLOCATOR_VARIABLES):
        os.environ["PYTORCH_ALLOC_CONF"] = ALLOCATOR_DEFAULT


def card_memory(device: torch.device) -> int | None:
    """Total memory of the CUDA card `device` names; None elsewhere (CPU, MPS)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def place(pipe: Any, plan: MemoryPlan, device: torch.device, family: ModelFamily) -> None:
    """Put a freshly loaded pipeline where its mode wants it and turn on what the mode
    turns on. Offloading hooks move each model to `device` when it runs."""
    offloads = device.type == "cuda"
    if plan.sequential_offload and offloads:
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan.model_offload and offloads:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    fit_vae(pipe.vae, plan, family)
    if plan.attention_slicing:
        pipe.enable_attention_slicing()
    unet = getattr(pipe, "unet", None)  # SD 3 and FLUX denoise with transformers: no convs
    if unet is not None and device.type == "cuda" and not plan.sequential_offload:
        # Convolutions in NHWC run on tensor cores without layout conversions.
        unet.to(memory_format=torch.channels_last)


def fit_vae(vae: Any, plan: MemoryPlan, family: ModelFamily) -> None:
    """Slicing per the mode; tiling always, past 1.5x the native side (or at the native
    side when memory is short), so a 2048x2048 upscale decodes on an 8 GB card."""
    if plan.vae_slicing:
        vae.enable_slicing()
    native = NATIVE_SIZE[family][0]
    side = native if plan.mode != "high" else int(native * TILE_FROM_NATIVE)
    vae.enable_tiling()
    vae.tile_sample_min_size = side
    # diffusers' own formula: the VAE halves the side once per block but the last.
    vae.tile_latent_min_size = int(side / 2 ** (len(vae.config.block_out_channels) - 1))
    guard_decoder(vae)


def guard_decoder(vae: Any) -> None:
    """Decode again in float32 when a half-precision decode overflows (SD VAEs do, in fp16,
    at large sizes: black or NaN pictures), and refuse a picture that is still not finite."""
    if getattr(vae, "_sdbot_guarded", False):
        return
    decoder = vae.decoder
    rerun = {"active": False}

    def check(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if rerun["active"] or bool(torch.isfinite(output).all()):
            return None
        dtype = next(module.parameters()).dtype
        if dtype == torch.float32:
            raise NonFiniteImage()
        log.warning("the VAE overflowed in %s; decoding again in float32", dtype)
        rerun["active"] = True
        try:
            module.to(torch.float32)
            upcast_args = tuple(a.float() if torch.is_tensor(a) else a for a in args)
            again = module(*upcast_args, **kwargs)
        finally:
            module.to(dtype)
            rerun["active"] = False
        if not bool(torch.isfinite(again).all()):
            raise NonFiniteImage()
        return again.to(output.dtype)

    decoder.register_forward_hook(check, with_kwargs=True)
    vae._sdbot_guarded = True


def lower(pipe: Any, plan: MemoryPlan, device: torch.device, family: ModelFamily) -> MemoryPlan:
    """One mode down, for a batch that ran out of memory; the same plan at `low`."""
    mode = lower_mode(plan.mode)
    if mode is None:
        return plan
    lowered = plan_for(mode)
    log.warning("out of memory in memory mode %s: switching to %s", plan.mode, mode)
    if device.type == "cuda":
        pipe.remove_all_hooks()
        torch.cuda.empty_cache()
    place(pipe, lowered, device, family)
    return lowered


def compile_unet(pipe: Any) -> None:
    """diffusers' regional compilation: only the denoiser's repeated transformer blocks (the
    UNet's, or SD 3's and FLUX's transformer's), which compiles in a fraction of the whole
    model's time and keeps most of its speed-up."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    if getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks(fullgraph=True)
        return
    # SD 3's transformer names no repeated blocks; its joint blocks are the repeated ones.
    for block in denoiser.transformer_blocks:
        block.compile(fullgraph=True)


@contextlib.contextmanager
def freed_on_oom(what: str) -> Iterator[None]:
    """torch's out-of-memory error as the engine's, with the cache emptied for what follows."""
    try:
        yield
    except torch.OutOfMemoryError:
        log.warning("out of memory on %s", what)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory() from None


def with_oom_fallback(
    jobs: Sequence[T],
    run: Callable[[Sequence[T]], list[Any]],
    lower_once: Callable[[], MemoryMode | None],
) -> list[Any]:
    """Run a batch; out of memory, go one memory mode down and run it again, each job
    alone when the batch had several, before the member is told (OutOfMemory)."""
    try:
        return run(jobs)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mode = lower_once()
        log.warning("out of memory on a batch of %d; retrying in memory mode %s", len(jobs), mode)
    with freed_on_oom(f"a batch of {len(jobs)}, one mode down"):
        if len(jobs) == 1:
            return run(jobs)
        return [result for job in jobs for result in run([job])]


class TrainingPlacement:
    """Where a training run keeps the pipeline. An offloaded pipeline (medium, low) has its
    hooks taken off and every model on the card while images and prompts are encoded, then
    only the UNet stays there for the steps; afterwards it is placed as its mode says again."""

    def __init__(self, pipe: Any, plan: MemoryPlan, device: torch.device, family: ModelFamily):
        self.pipe = pipe
        self.plan = plan
        self.device = device
        self.family = family
        self.moves = plan.offloaded and device.type == "cuda"

    def __enter__(self) -> TrainingPlacement:
        if self.moves:
            self.pipe.remove_all_hooks()
            self.pipe.to(self.device)
        if self.plan.gradient_checkpointing:
            # Recompute activations in the backward pass: about a third slower per step,
            # a fraction of the activation memory (diffusers' training scripts' switch).
            self._denoiser().enable_gradient_checkpointing()
        return self

    def _denoiser(self) -> Any:
        return getattr(self.pipe, "unet", None) or self.pipe.transformer

    def unet_only(self) -> None:
        """Latents and prompt embeddings are cached: the encoders can leave the card."""
        if not self.moves:
            return
        for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.to("cpu")
        torch.cuda.empty_cache()

    def __exit__(self, *exc_info: object) -> None:
        if self.plan.gradient_checkpointing:
            self._denoiser().disable_gradient_checkpointing()
        if self.moves:
            self.pipe.to("cpu")
            torch.cuda.empty_cache()
            place(self.pipe, self.plan, self.device, self.family)


def training_optimizer(
    parameters: list[torch.Tensor], lr: float, weight_decay: float, plan: MemoryPlan
) -> torch.optim.Optimizer:
    """AdamW; 8-bit AdamW (bitsandbytes) when memory is short, which keeps the two moment
    buffers in a quarter of the memory with the same updates to within quantization (the
    kohya and diffusers scripts' `--use_8bit_adam`). Without bitsandbytes, plain AdamW."""
    if plan.mode != "high":
        try:
            import bitsandbytes
        except ImportError:
            log.info("bitsandbytes is not installed: training with 32-bit AdamW")
        else:
            optimizer: torch.optim.Optimizer = bitsandbytes.optim.AdamW8bit(
                parameters, lr=lr, weight_decay=weight_decay
            )
            return optimizer
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


_HOOKED = "offload-hooks"  # loaded.derived: the pipeline whose offload hooks are on


def hooked_for(loaded: Any, pipe: Any) -> None:
    """Before `pipe` runs in an offloading mode on CUDA: the img2img, inpaint and ControlNet
    pipelines share the loaded model's modules (from_pipe), and diffusers' offload hooks
    belong to one pipeline at a time, so the one about to run hooks them again (with any
    module only it has, a ControlNet or an inpainting UNet) unless it is the one hooked."""
    plan, device = loaded.plan, loaded.device
    if not plan.offloaded or device is None or device.type != "cuda":
        return
    # Placing the model hooked its own pipeline (load_model, and lowering the mode).
    if loaded.derived.get(_HOOKED, loaded.pipe) is pipe:
        return
    if plan.sequential_offload:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_model_cpu_offload(device=device)
    loaded.derived[_HOOKED] = pipe


def forget_hooks(loaded: Any) -> None:
    """After the model was placed again (a lower mode): whichever pipeline runs next hooks."""
    loaded.derived.pop(_HOOKED, None)
