"""A1111's infotext: the PNG `parameters` chunk that its PNG Info tab reads.

Written exactly as A1111 writes it (modules/processing.py `create_infotext`):

    <prompt>
    Negative prompt: <negative>          (only when there is one)
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

with, when they are used and in A1111's order, `Variation seed`, `Variation seed strength`
and `Clip skip` after `Model`, and read back as A1111's `parse_generation_parameters` reads
it. An edit (/edit, A1111's instruct-pix2pix) writes `Image CFG scale` after `CFG scale`,
and `Denoising strength: 1`, as A1111 does for such a job run from noise. Hires fix
writes A1111's `Hires upscale`, `Hires steps` and `Hires upscaler` after `RNG`, with
`Size` the first pass's. `Model` is the checkpoint's name as A1111 writes it (a file's
stem, a folder's or Hub repository's name), never a path. Ours after A1111's
inpainting keys: `Mask prompt` and `Mask cell` (Vary (Region)'s words and grid cell),
/interpolate's `Frames`, `Interpolate to`, `Interpolate seed`, `Frame rate` and `Animation`,
`Prompt syntax` (only when the optimized fork's sub-prompts were read), and image prompts'
`IP-Adapter ...` keys (engine/api/image_prompts.py); A1111 shows a key it does not know and
otherwise ignores it.
Last, as A1111 ends with its own, `Version: sdbot-0.1.0`: a name A1111's version parser
cannot read, so it turns on none of the compatibility settings it keeps for its old
versions (modules/infotext_versions.py), which a bare `0.1.0` would (as "before 1.6").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

from engine.api.hires import NO_RESIZE, has_hires_keys, hires_options, second_pass_params
from engine.api.image_prompts import image_prompt_fields, image_prompt_options
from engine.api.interpolation import DEFAULT_FPS, INTERPOLATE
from engine.api.params import GenerationParams, InvalidParams
from engine.api.prompt_syntax import resolve_syntax
from engine.api.samplers import AUTOMATIC, SAMPLERS, resolved_schedule, split_sampler
from engine.api.specs import SINGLE_FILE_SUFFIXES, ModelSpec

NEGATIVE_PREFIX = "Negative prompt:"
# Forge's key for FLUX's guidance; its `CFG scale` is then 1.
DISTILLED_CFG = "Distilled CFG Scale"
# Forge's default schedule for FLUX: evenly spaced (shifted) sigmas, what diffusers' flow
# matching runs as our Automatic.
_FORGE_FLUX_SCHEDULE = "Simple"
# /interpolate's keys (issue 18).
FRAMES = "Frames"
INTERPOLATE_TO = "Interpolate to"
INTERPOLATE_SEED = "Interpolate seed"
FRAME_RATE = "Frame rate"
ANIMATION = "Animation"
INTERPOLATION_KEYS = (FRAMES, INTERPOLATE_TO, INTERPOLATE_SEED, FRAME_RATE, ANIMATION)

# A1111's own pattern for `key: value` pairs on the last line, quoted values included.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_PATH_SEPARATORS = re.compile(r"[/\\]")
# A GGUF transformer is named by its stem too, as Forge names it.
_CHECKPOINT_SUFFIXES = (*SINGLE_FILE_SUFFIXES, ".gguf")
PACKAGE = "sdbot"


def quote(value: object) -> str:
    """A1111 JSON-quotes a value that holds a comma, colon or newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return str(json.loads(text))
        except json.JSONDecodeError:
            return text
    return text


def format_number(value: float) -> str:
    """7.0 -> 7, 7.5 -> 7.5: the shortest form that reads back to the same float."""
    return f"{value:g}" if float(value) == float(f"{value:g}") else repr(float(value))


def checkpoint_name(source: str) -> str:
    """A model as A1111's `Model:` names it: a checkpoint file's stem, a folder's or Hub
    repository's last part; a plain name stays as it is. Never a path: the owner's folders
    would be in every PNG."""
    name = _PATH_SEPARATORS.split(source.rstrip("/\\"))[-1]
    for suffix in _CHECKPOINT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def configured_model(name: str, models: Mapping[str, ModelSpec]) -> str | None:
    """The configured model an infotext's `Model:` names: by its configured name, else by
    the checkpoint's name of its source; None when this bot has no such model."""
    if name in models:
        return name
    found = [key for key, spec in models.items() if name in _checkpoint_names(spec)]
    return found[0] if found else None


def _checkpoint_names(spec: ModelSpec) -> set[str]:
    """What `Model:` may call a configured model: its source's name, and its transformer
    file's, which A1111 and Forge name when a GGUF or a fine-tune is what they loaded."""
    names = {checkpoint_name(spec.source)}
    if spec.transformer is not None:
        names.add(checkpoint_name(spec.transformer))
    return names


@cache
def version() -> str:
    """`sdbot-<the installed package's version>`, written as A1111 writes `Version:`."""
    try:
        return f"{PACKAGE}-{metadata.version(PACKAGE)}"
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return PACKAGE


def build_infotext(
    params: GenerationParams,
    *,
    seed: int,
    model_hash: str | None,
    variation_seed: int | None = None,
    rng: str | None = None,
    extra: dict[str, str] | None = None,
    checkpoint: str | None = None,
    distilled: bool = False,
) -> str:
    """The infotext of one image of a job (each image carries its own seed and variation
    seed; `variation_seed` defaults to the job's).

    `distilled`: a FLUX model, whose guidance is distilled into it. Forge writes what it runs
    as `CFG scale: 1` (no classifier-free guidance) and `Distilled CFG Scale: <guidance>`,
    and so do we: the job's `cfg` is that guidance.

    `extra` holds what only the engine knows, in A1111's place for scripts and extensions
    (after the inpainting keys): `SD upscale overlap`/`SD upscale upscaler`, `ControlNet 0`.
    `checkpoint` is the loaded model's source, named as A1111 names it; without it, the
    job's model name (a path given there is cut to its name too).
    """
    variation = params.has_variation
    if variation and variation_seed is None:
        variation_seed = params.variation_seed
    fields: dict[str, str | None] = {
        "Steps": str(params.steps),
        "Sampler": params.sampler,
        "Schedule type": _schedule_type(params),
        "CFG scale": "1" if distilled else format_number(params.cfg),
        # A1111 writes it, after CFG scale, for a job of an instruct-pix2pix model (/edit).
        "Image CFG scale": format_number(params.image_cfg) if params.mode == "edit" else None,
        DISTILLED_CFG: format_number(params.cfg) if distilled else None,
        "Seed": str(seed),
        "Size": params.size,
        "Model hash": model_hash,
        "Model": checkpoint_name(checkpoint or params.model),
        # A1111 writes these only at a strength above 0, and clip skip only past 1.
        "Variation seed": str(variation_seed) if variation else None,
        "Variation seed strength": format_number(params.variation_strength) if variation else None,
        "Denoising strength": _denoising_strength(params),
        "Clip skip": str(params.clip_skip) if params.clip_skip != 1 else None,
        "RNG": rng,
        **_inpaint_fields(params),
        **_hires_fields(params),
        **_interpolation_fields(params),
        **(extra or {}),
        **image_prompt_fields(params),
        "Prompt syntax": _prompt_syntax(params),
        "Version": version(),
    }
    last_line = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value)
    negative = f"\n{NEGATIVE_PREFIX} {params.negative}" if params.negative else ""
    return f"{params.prompt}{negative}\n{last_line}".strip()


def _schedule_type(params: GenerationParams) -> str | None:
    """As A1111 1.9+ writes it: the schedule that ran, so `Automatic` is written only for
    samplers without one of their own (Euler a: `Automatic`; DPM++ 2M: `Karras`). Our
    training previews and queue rows have no real sampler and get none."""
    if params.sampler not in SAMPLERS:
        return None
    return resolved_schedule(params.sampler, params.schedule)


def _prompt_syntax(params: GenerationParams) -> str | None:
    """Only for a job whose prompt or negative prompt was read as sub-prompts: the job's
    own setting then, which reads both texts back as they were read (with `auto`, one of
    them may have been A1111's). Nothing for A1111's syntax, which A1111 reads without it."""
    texts = (params.prompt, params.negative)
    if all(resolve_syntax(text, params.prompt_syntax) == "a1111" for text in texts):
        return None
    return params.prompt_syntax


def _denoising_strength(params: GenerationParams) -> str | None:
    # A1111 writes it for every image-to-image job (0 included), and for txt2img only with
    # hires fix: the second pass's.
    if params.mode in ("txt2img", INTERPOLATE):
        return format_number(params.hires_denoise) if params.has_hires else None
    return format_number(params.denoise)


def _hires_fields(params: GenerationParams) -> dict[str, str | None]:
    """A1111's hires keys, in its order (Forge's `Hires CFG Scale` among them); `Size` stays the
    first pass's, as A1111 writes it. The second pass's prompts, sampler, schedule type and
    CFG scale only where they differ from the first pass's."""
    if not params.has_hires:
        return {}
    second = second_pass_params(params)
    resized = params.hires_resize != NO_RESIZE
    first_schedule, second_schedule = _schedule_type(params), _schedule_type(second)
    return {
        "Hires sampler": second.sampler if second.sampler != params.sampler else None,
        "Hires prompt": second.prompt if second.prompt != params.prompt else None,
        "Hires negative prompt": second.negative if second.negative != params.negative else None,
        "Hires CFG Scale": format_number(second.cfg) if second.cfg != params.cfg else None,
        "Hires schedule type": second_schedule if second_schedule != first_schedule else None,
        "Hires upscale": None if resized else format_number(params.hires_scale),
        "Hires resize": "{}x{}".format(*params.hires_resize) if resized else None,
        "Hires steps": str(params.hires_steps) if params.hires_steps else None,
        "Hires upscaler": params.hires_upscaler,
    }


def _interpolation_fields(params: GenerationParams) -> dict[str, str | None]:
    """/interpolate's keys (ours; A1111 shows and ignores them): the frames, the other end
    and how the animation plays. `Seed` and the prompt are the first frame's."""
    if params.mode != INTERPOLATE:
        return {}
    return {
        FRAMES: str(params.frames),
        INTERPOLATE_TO: params.prompt_to,
        INTERPOLATE_SEED: str(params.seed_to) if params.seed_to is not None else None,
        FRAME_RATE: str(params.fps),
        ANIMATION: params.animation,
    }


def _inpaint_fields(params: GenerationParams) -> dict[str, str | None]:
    """A1111's img2img keys: `Mask blur` when the mask was blurred, the area and its padding
    when only the masked area was inpainted."""
    if params.mode not in ("inpaint", "outpaint"):
        return {}
    only_masked = params.mode == "inpaint" and params.inpaint_full_res
    return {
        "Mask blur": str(params.mask_blur) if params.mask_blur > 0 else None,
        "Inpaint area": "Only masked" if only_masked else None,
        "Masked area padding": str(params.inpaint_padding) if only_masked else None,
        # Vary (Region): what the mask was made from, so the same mask can be made again.
        "Mask prompt": params.mask_prompt if params.mode == "inpaint" else None,
        "Mask cell": params.mask_cell if params.mode == "inpaint" else None,
    }


@dataclass(frozen=True, slots=True)
class Infotext:
    prompt: str
    negative: str
    values: dict[str, str] = field(default_factory=dict)


def parse_infotext(text: str) -> Infotext:
    """Split infotext into prompt, negative prompt and the `key: value` pairs."""
    *lines, last_line = text.strip().split("\n")
    # A prompt's own last line could hold a colon; A1111 needs 3 pairs to call it parameters.
    if len(_PARAM_RE.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative if in_negative else prompt).append(line)
    values = {key.strip(): unquote(value.strip()) for key, value in _PARAM_RE.findall(last_line)}
    return Infotext(prompt="\n".join(prompt), negative="\n".join(negative), values=values)


def sampler_name(sampler: str, schedule: str | None) -> tuple[str, str]:
    """(sampler, schedule) from A1111 1.9+'s pair (`Sampler: DPM++ 2M, Schedule type:
    Karras`) or an older combined name (`DPM++ 2M Karras`). Without a schedule type A1111
    reads "Automatic" (modules/infotext_utils.py), the sampler's own schedule."""
    return split_sampler(sampler, schedule or AUTOMATIC)


def params_from_infotext(text: str, *, count: int = 1) -> GenerationParams:
    """Our parameters from infotext; InvalidParams names a missing or unreadable value."""
    info = parse_infotext(text)
    values = info.values
    try:
        size = _SIZE_RE.match(values["Size"])
        if size is None:
            raise InvalidParams(f"Unreadable size {values['Size']!r} in the infotext.")
        sampler, schedule = sampler_name(values["Sampler"], values.get("Schedule type"))
        if DISTILLED_CFG in values and schedule == _FORGE_FLUX_SCHEDULE:
            schedule = AUTOMATIC
        return GenerationParams(
            prompt=info.prompt,
            negative=info.negative,
            seed=int(values["Seed"]),
            steps=int(values["Steps"]),
            cfg=float(values.get(DISTILLED_CFG) or values["CFG scale"]),
            sampler=sampler,
            schedule=schedule,
            count=count,
            model=values.get("Model", ""),
            clip_skip=int(values.get("Clip skip", "1")),
            prompt_syntax=values.get("Prompt syntax", "a1111"),
            variation_seed=_optional_int(values.get("Variation seed")),
            variation_strength=float(values.get("Variation seed strength", "0")),
            **_image_options(values),
            **_interpolation_options(values),
            **image_prompt_options(values),
            **hires_options(values, int(size.group(1)), int(size.group(2))),
        )
    except KeyError as missing:
        raise InvalidParams(f"The infotext has no {missing.args[0]!r}.") from None
    except ValueError as bad:
        if isinstance(bad, InvalidParams):
            raise
        raise InvalidParams(f"The infotext has an unreadable value: {bad}.") from None


def _image_options(values: dict[str, str]) -> dict[str, Any]:
    """The image-to-image options infotext carries. The mode stays txt2img: the input
    image is never in infotext, so a paste can only start from the prompt."""
    options: dict[str, Any] = {}
    if "Denoising strength" in values and not has_hires_keys(values):  # else the hires pass's
        options["denoise"] = float(values["Denoising strength"])
    if "Image CFG scale" in values:
        options["image_cfg"] = float(values["Image CFG scale"])
    if "Mask blur" in values:
        options["mask_blur"] = int(values["Mask blur"])
    if values.get("Inpaint area") == "Only masked":
        options["inpaint_full_res"] = True
    if "Masked area padding" in values:
        options["inpaint_padding"] = int(values["Masked area padding"])
    if "Mask prompt" in values:
        options["mask_prompt"] = values["Mask prompt"]
    if "Mask cell" in values:
        options["mask_cell"] = values["Mask cell"]
    return options


def _interpolation_options(values: dict[str, str]) -> dict[str, Any]:
    """An interpolation's keys back into its parameters: `Frames` makes the job one."""
    if FRAMES not in values:
        return {}
    seed_to = values.get(INTERPOLATE_SEED)
    return {
        "mode": INTERPOLATE,
        "frames": int(values[FRAMES]),
        "prompt_to": values.get(INTERPOLATE_TO),
        "seed_to": int(seed_to) if seed_to is not None else None,
        "fps": int(values.get(FRAME_RATE, str(DEFAULT_FPS))),
        "animation": values.get(ANIMATION, "webp"),
    }


def _optional_int(text: str | None) -> int | None:
    return None if text is None else int(text)
