"""Model families as plain data: what each kind of model is made of, its defaults and what
it cannot do. No torch here, so settings, cogs, prices and the submit checks read it.

A family plugs in here and nowhere else by name: the engine picks pipeline classes, the
generation path and the prompt encoder from a family's row, the checks
(engine/api/family_checks.py) refuse what its row says it lacks, and `/models` shows it.

Defaults come from each model's own card: SD 1.x/SDXL as A1111 starts (20 steps, CFG 7,
Euler a); SD 3.5 Large's (28 steps, CFG 3.5); FLUX.1 dev's (28 steps, guidance 3.5, T5
prompts up to 512 tokens); FLUX.1 schnell's (4 steps, no guidance, 256 tokens).

`cost` is an estimate, not a measurement here: one step's time per pixel relative to SD 1.5,
from commonly published RTX 4090 step times at each family's native size (SD 1.5 ~0.03 s at
512x512 with CFG; SDXL ~0.11 s at 1024x1024, 0.9x per pixel; SD 3.5 Large ~0.4 s with CFG,
3.3x; FLUX.1 dev ~0.7 s in bf16 without CFG, 5.8x), rounded. FLOP counts would put FLUX far
higher (a 12B transformer over 4608 tokens is ~125 TFLOP a step against SD 1.5's ~1.6), but
SD 1.5 leaves a GPU mostly idle, and members pay for the time the GPU is theirs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

ModelFamily = Literal["sd1", "sd2", "sdxl", "sd3", "flux", "flux-schnell"]
# How a family is steered: classifier-free guidance (a negative prompt, two model calls per
# step), guidance distilled into the model (FLUX.1 dev's guidance embedding, one call), or
# none at all (FLUX.1 schnell, step-distilled).
Guidance = Literal["cfg", "distilled", "none"]
# Which generation path runs it: the UNet path (engine/pipelines/txt2img.py, A1111's
# samplers and prompt chunks) or the flow-matching one (engine/pipelines/flow.py).
Architecture = Literal["unet", "flow"]

# Every A1111 sampler in engine/api/samplers.py; flow-matching models have one scheduler.
ALL_SAMPLERS: tuple[str, ...] = ()
# Every family runs these through its diffusers img2img and inpaint pipelines.
IMAGE_MODES = frozenset({"img2img", "inpaint", "outpaint", "upscale"})
# Interpolation (/interpolate) runs on the UNet families' pipelines only, so far.
_SD_MODES = IMAGE_MODES | {"interpolate"}
# InstructPix2Pix (/edit) UNets exist for SD 1.5 (timbrooks/instruct-pix2pix) and run on
# SD 1.x/2.x's pipeline; SDXL's take another pipeline, not run here yet.
_EDIT_MODES = _SD_MODES | {"edit"}


@dataclass(frozen=True, slots=True)
class Family:
    """One kind of model. A field that a family lacks is refused at submit, in one sentence."""

    name: ModelFamily
    label: str  # as members read it: "FLUX.1 dev"
    architecture: Architecture
    pipeline: str  # diffusers' text-to-image pipeline class
    native_size: tuple[int, int]
    steps: int
    cfg: float
    sampler: str
    guidance: Guidance = "cfg"
    samplers: tuple[str, ...] = ALL_SAMPLERS  # empty: all of A1111's
    negative_prompt: bool = True
    clip_skip: bool = True
    # A1111's prompt language beyond emphasis: 75-token chunks and BREAK, prompt editing and
    # alternation, AND and weighted sub-prompts. Emphasis `(word:1.2)` works everywhere.
    prompt_chunks: bool = True
    prompt_tokens: int = 0  # T5's sequence length (flow families); 0: CLIP chunks
    image_modes: frozenset[str] = _SD_MODES
    controlnet: bool = True
    embeddings: bool = True  # textual inversion
    training: bool = True  # /train
    size_multiple: int = 8  # the VAE's 8, times the transformer's 2x2 patches
    cost: float = 1.0
    # The half precision its weights run in on a GPU: T5 and FLUX overflow in float16.
    half_dtype: Literal["float16", "bfloat16"] = "float16"
    # The denoiser's class when it is a transformer a single file (or GGUF) replaces.
    transformer: str | None = None
    # Where diffusers reads a single file's configuration when no `config` is set.
    reference_repo: str = ""
    # A folder is this family when its model_index.json names `pipeline` and, if set, this
    # (file, key, value) holds; a family without a probe is its pipeline's fallback.
    probe: tuple[str, str, Any] | None = None

    @property
    def flow(self) -> bool:
        return self.architecture == "flow"

    def allows_sampler(self, sampler: str) -> bool:
        return not self.samplers or sampler in self.samplers


_FLOW: dict[str, Any] = {
    "architecture": "flow",
    # FlowMatchEulerDiscreteScheduler is the only scheduler these models ship with.
    "samplers": ("Euler",),
    "sampler": "Euler",
    "clip_skip": False,
    "prompt_chunks": False,
    "image_modes": IMAGE_MODES,
    "controlnet": False,
    "embeddings": False,
    "size_multiple": 16,
    "half_dtype": "bfloat16",
    "native_size": (1024, 1024),
}

# What A1111 starts an SD 1.x/2.x/XL job with.
_SD: dict[str, Any] = {"architecture": "unet", "steps": 20, "cfg": 7.0, "sampler": "Euler a"}

FAMILIES: dict[ModelFamily, Family] = {
    row.name: row
    for row in (
        Family(
            "sd1",
            "SD 1.x",
            pipeline="StableDiffusionPipeline",
            native_size=(512, 512),
            reference_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            image_modes=_EDIT_MODES,
            **_SD,
        ),
        Family(
            "sd2",
            "SD 2.x",
            pipeline="StableDiffusionPipeline",
            native_size=(768, 768),
            reference_repo="stabilityai/stable-diffusion-2-1",
            image_modes=_EDIT_MODES,
            # SD2 replaced CLIP ViT-L (768 wide) with OpenCLIP ViT-H (1024 wide).
            probe=("text_encoder/config.json", "hidden_size", 1024),
            **_SD,
        ),
        Family(
            "sdxl",
            "SDXL",
            pipeline="StableDiffusionXLPipeline",
            native_size=(1024, 1024),
            reference_repo="stabilityai/stable-diffusion-xl-base-1.0",
            **_SD,
        ),
        Family(
            "sd3",
            "SD 3.x",
            pipeline="StableDiffusion3Pipeline",
            steps=28,
            cfg=3.5,
            prompt_tokens=256,
            cost=3.0,
            transformer="SD3Transformer2DModel",
            reference_repo="stabilityai/stable-diffusion-3.5-large",
            **_FLOW,
        ),
        Family(
            "flux",
            "FLUX.1 dev",
            pipeline="FluxPipeline",
            steps=28,
            cfg=3.5,
            guidance="distilled",
            negative_prompt=False,
            prompt_tokens=512,
            cost=6.0,
            transformer="FluxTransformer2DModel",
            reference_repo="black-forest-labs/FLUX.1-dev",
            probe=("transformer/config.json", "guidance_embeds", True),
            **_FLOW,
        ),
        Family(
            "flux-schnell",
            "FLUX.1 schnell",
            pipeline="FluxPipeline",
            steps=4,
            cfg=0.0,
            guidance="none",
            negative_prompt=False,
            prompt_tokens=256,
            cost=6.0,
            transformer="FluxTransformer2DModel",
            reference_repo="black-forest-labs/FLUX.1-schnell",
            probe=("transformer/config.json", "guidance_embeds", False),
            **_FLOW,
        ),
    )
}


def family(name: str) -> Family:
    """A family's row; an unknown name (a stored job of a newer bot) reads as SD 1.x."""
    return FAMILIES.get(name, FAMILIES["sd1"])  # type: ignore[call-overload]


# -- Telling a model's family from what is on disk, without torch -----------------------------

# Keys only one family's checkpoint has, in the layouts users keep them: A1111/SGM for SD,
# Stability's and Black Forest Labs' originals (bare or under `model.diffusion_model.`, as
# ComfyUI's all-in-one files are) and diffusers' own transformer layout. Checked in this
# order; a group matches when all its keys are there.
_ORIGINAL = ("", "model.diffusion_model.")
_FLUX_DEV = (
    *(
        (p + "double_blocks.0.img_attn.norm.key_norm.scale", p + "guidance_in.in_layer.weight")
        for p in _ORIGINAL
    ),
    (
        "single_transformer_blocks.0.proj_mlp.weight",
        "time_text_embed.guidance_embedder.linear_1.weight",
    ),
)
_FLUX_ANY = (
    *((p + "double_blocks.0.img_attn.norm.key_norm.scale",) for p in _ORIGINAL),
    ("single_transformer_blocks.0.proj_mlp.weight",),
)
_SD3 = (
    *((p + "joint_blocks.0.context_block.adaLN_modulation.1.bias",) for p in _ORIGINAL),
    ("pos_embed.pos_embed", "transformer_blocks.0.norm1_context.linear.weight"),
)
KEY_RULES: tuple[tuple[ModelFamily, tuple[tuple[str, ...], ...]], ...] = (
    ("flux", _FLUX_DEV),
    ("flux-schnell", _FLUX_ANY),
    ("sd3", _SD3),
    # SDXL's second text encoder; SD2's OpenCLIP in place of CLIP ViT-L.
    ("sdxl", (("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",),)),
    ("sd2", (("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",),)),
)
# A VAE inside a single file: SD's first stage, or ComfyUI's all-in-one `vae.` prefix.
VAE_KEY_PREFIXES = ("first_stage_model.", "vae.")


# What any SD 1.x/2.x/XL checkpoint has (its UNet's first convolution, A1111's layout).
_LDM_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def family_from_keys(keys: set[str]) -> ModelFamily:
    """A single-file checkpoint's family from its tensors' names (no tensor loaded)."""
    for name, groups in KEY_RULES:
        if any(all(key in keys for key in group) for group in groups):
            return name
    return "sd1"


def is_checkpoint(keys: set[str]) -> bool:
    """Whether the tensors are a model of some family at all (not a LoRA, a VAE alone, an
    embedding or another kind of model), so that a file is refused in words before diffusers
    fails on it with a KeyError."""
    if _LDM_UNET_KEY in keys:
        return True
    return any(all(key in keys for key in group) for _, groups in KEY_RULES for group in groups)


def has_vae(keys: set[str]) -> bool:
    return any(key.startswith(VAE_KEY_PREFIXES) for key in keys)


def family_from_folder(read: Callable[[str], dict[str, Any]]) -> ModelFamily | None:
    """A diffusers folder's family from its JSON files (`read("model_index.json")`), or None
    when its pipeline is none of ours."""
    pipeline = str(read("model_index.json").get("_class_name", ""))
    candidates = [row for row in FAMILIES.values() if row.pipeline == pipeline]
    for row in candidates:
        if row.probe is not None:
            path, key, value = row.probe
            if read(path).get(key) == value:
                return row.name
    fallback = [row for row in candidates if row.probe is None]
    return fallback[0].name if fallback else None


# A name's words, for Hub ids and files that cannot be read: (word, family), first match wins.
_NAME_HINTS: tuple[tuple[str, ModelFamily], ...] = (
    ("schnell", "flux-schnell"),
    ("flux", "flux"),
    ("stable-diffusion-3", "sd3"),
    ("sd3", "sd3"),
    ("xl", "sdxl"),
    ("stable-diffusion-2", "sd2"),
    ("sd2", "sd2"),
    ("v2-", "sd2"),
)


def family_from_name(source: str) -> ModelFamily:
    lowered = source.lower()
    for word, name in _NAME_HINTS:
        if word in lowered:
            return name
    return "sd1"


def family_on_disk(source: str) -> ModelFamily | None:
    """A local folder's or .safetensors file's family as its files say; None for a Hub id,
    a `.ckpt` (a pickle must be loaded to be read) or anything unreadable. Cached per file
    version: the event loop asks at every submit."""
    path = Path(source).expanduser()
    try:
        marker = path / "model_index.json" if path.is_dir() else path
        stat = marker.stat()
    except OSError:
        return None
    return _family_on_disk(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _family_on_disk(path: str, mtime_ns: int, size: int) -> ModelFamily | None:
    folder = Path(path)
    if folder.is_dir():
        return family_from_folder(lambda name: _read_json(folder / name))
    if folder.suffix.lower() != ".safetensors":
        return None
    keys = safetensors_keys(folder)
    return None if keys is None else family_from_keys(keys)


# safetensors refuses headers over 100 MB; a larger length means the file is something else.
_MAX_HEADER = 100_000_000


def safetensors_keys(path: Path) -> set[str] | None:
    """The tensor names of a .safetensors file from its header (8 bytes of length, then
    JSON); None when it is not one."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= _MAX_HEADER:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(header, dict):
        return None
    return {str(key) for key in header if key != "__metadata__"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# -- What /models says of a family --------------------------------------------------------


def lacks(row: Family) -> list[str]:
    """What a family's models cannot do here, in members' words (empty for SD 1.x)."""
    missing = []
    if not row.negative_prompt:
        missing.append("negative prompt")
    if not row.clip_skip:
        missing.append("clip skip")
    if not row.prompt_chunks:
        missing.append("BREAK, prompt editing and AND")
    if not row.image_modes:
        missing.append("img2img, inpaint and upscale")
    if not row.controlnet:
        missing.append("ControlNet")
    if not row.embeddings:
        missing.append("embeddings")
    if not row.training:
        missing.append("/train")
    return missing


def guidance_text(row: Family, cfg: float) -> str:
    if row.guidance == "distilled":
        return f"distilled CFG {cfg:g}"
    if row.guidance == "none":
        return "no CFG"
    return f"CFG {cfg:g}"


def summary(row: Family, steps: int, cfg: float) -> str:
    """`FLUX.1 dev: 28 steps, distilled CFG 3.5, Euler only; no negative prompt, ...`"""
    sampler = f"{row.sampler} only" if row.samplers else f"{row.sampler} (any sampler)"
    text = f"{row.label}: {steps} steps, {guidance_text(row, cfg)}, {sampler}"
    missing = lacks(row)
    return f"{text}; no {', '.join(missing)}" if missing else text
