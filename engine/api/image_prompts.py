"""Image prompts (issue 18): Midjourney's image prompts, `--sref` and /blend, as diffusers'
IP-Adapter runs them. No torch here: the bot checks and records them, the engine thread
applies them (engine/pipelines/ip_adapter.py).

A model's IP-Adapter is configured beside its VAE (`"ip_adapter"` in SDBOT_MODELS): SD 1.5's
and SDXL's differ, so each model names the one made for it. A source is the adapter's weights
file, on this disk or on the Hub as `owner/repo/path/in/repo/file.safetensors` (h94/IP-Adapter
keeps `models/ip-adapter_sd15.safetensors` and `sdxl_models/ip-adapter_sdxl.safetensors`), or a
folder holding one weights file. Its CLIP image encoder is the `image_encoder` folder beside
the file, as diffusers' `load_ip_adapter` looks for it, unless `"ip_adapter_encoder"` names
another folder of the same repository or folder (diffusers' `image_encoder_folder`).

Infotext records what was applied in keys of our own, after A1111's (A1111 shows keys it does
not know and otherwise ignores them): `IP-Adapter` (the adapter's file name, as `Model:` names
a checkpoint), `IP-Adapter images` (how many pictures), `IP-Adapter weight`, and `IP-Adapter
mode: style` for style images. Not the ControlNet extension's `ControlNet 0: "Module:
ip-adapter..."` unit: that numbering is our ControlNet's (a control image writes `ControlNet
0`), and a unit pasted into A1111 would come back with no picture in it, silently. The
pictures themselves are never in infotext: /reproduce says so and runs the text alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api.families import Family

if TYPE_CHECKING:
    from engine.api.params import GenerationParams
    from engine.api.specs import ModelSpec

MAX_IMAGE_PROMPTS = 5  # /blend's image1..image5; Midjourney blends up to five
MIN_IMAGE_WEIGHT, MAX_IMAGE_WEIGHT = 0.0, 2.0
# With a text prompt the picture guides beside the words: the IP-Adapter authors suggest
# about 0.5 when both are used, A1111's ControlNet unit starts at 1. /blend has (nearly) no
# words, so its pictures are the whole prompt, at A1111's 1.
DEFAULT_IMAGE_WEIGHT = 0.6
BLEND_WEIGHT = 1.0
WEIGHT_FILES = (".safetensors", ".bin")
ENCODER_FOLDER = "image_encoder"  # diffusers' default `image_encoder_folder`

KEY_ADAPTER = "IP-Adapter"
KEY_IMAGES = "IP-Adapter images"
KEY_WEIGHT = "IP-Adapter weight"
KEY_MODE = "IP-Adapter mode"
STYLE_MODE = "style"
BOTH_MODE = "image and style"
INFOTEXT_KEYS = frozenset({KEY_ADAPTER, KEY_IMAGES, KEY_WEIGHT, KEY_MODE})


@dataclass(frozen=True, slots=True)
class AdapterLocation:
    """What diffusers' `load_ip_adapter` takes: a Hub id or folder, the subfolder and file
    name of the weights in it, and the image encoder's folder."""

    source: str
    subfolder: str
    weight_name: str
    image_encoder_folder: str

    @property
    def weights_path(self) -> str:
        """The weights file within `source`."""
        return "/".join(part for part in (self.subfolder, self.weight_name) if part)

    @property
    def encoder_path(self) -> str:
        """The image encoder's folder within `source`, by diffusers' rule: a bare name is
        beside the weights, a path is from the top of the repo or folder."""
        if "/" in self.image_encoder_folder or not self.subfolder:
            return self.image_encoder_folder
        return f"{self.subfolder}/{self.image_encoder_folder}"

    @property
    def name(self) -> str:
        """The adapter as infotext names it: its file's stem, never a path."""
        return Path(self.weight_name).stem


def locate_adapter(source: str, encoder: str | None = None) -> AdapterLocation:
    """Where the adapter configured as `source` is; ValueError says what is wrong with it."""
    path = Path(source).expanduser()
    folder = encoder or ENCODER_FOLDER
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in WEIGHT_FILES)
        if len(files) != 1:
            raise ValueError(
                f"{source} should hold one IP-Adapter weights file (.safetensors or .bin), "
                f"not {len(files)}"
            )
        return AdapterLocation(str(path), "", files[0], folder)
    if path.suffix.lower() not in WEIGHT_FILES:
        raise ValueError(
            f"{source} is not an IP-Adapter weights file (.safetensors or .bin) or a folder "
            "holding one"
        )
    if path.is_file():
        return AdapterLocation(str(path.parent), "", path.name, folder)
    parts = source.strip("/").split("/")
    if len(parts) < 3 or source.startswith(("/", ".", "~")):
        raise ValueError(
            f"{source} is neither a file here nor a Hub file: write owner/repo/path/file, "
            "e.g. h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
        )
    return AdapterLocation("/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1], folder)


def adapter_problem(source: str | None, encoder: str | None) -> str | None:
    """For the settings: why a model's `ip_adapter` cannot be used, or None."""
    if source is None:
        return "an ip_adapter_encoder needs an ip_adapter" if encoder else None
    try:
        locate_adapter(source, encoder)
    except ValueError as problem:
        return str(problem)
    return None


def not_set_up(command: str = "Image prompts", model: str | None = None) -> str:
    """The one sentence for a command whose IP-Adapter is not configured: for `model`, when
    another model has one."""
    where = f" for model {model}" if model else ""
    verb = "are" if command == "Image prompts" else "is"
    return f"{command} {verb} not set up{where} on this bot."


def image_prompt_problem(params: GenerationParams, spec: ModelSpec) -> str | None:
    """Why a job's image prompts cannot run on its model, as one sentence; None if they can
    (or there are none)."""
    count = len(params.image_prompts) + len(params.style_images)
    if not MIN_IMAGE_WEIGHT <= params.image_weight <= MAX_IMAGE_WEIGHT:
        return (
            f"Image weight must be {MIN_IMAGE_WEIGHT:g}-{MAX_IMAGE_WEIGHT:g}, "
            f"not {params.image_weight:g}."
        )
    if count == 0:
        return None
    if count > MAX_IMAGE_PROMPTS:
        return f"At most {MAX_IMAGE_PROMPTS} image prompts, not {count}."
    if spec.ip_adapter is None:
        return not_set_up(model=spec.name)
    if not family_takes_image_prompts(spec.family_row()):
        return f"Image prompts are not available for {spec.family_row().label} models here."
    if params.mode != "txt2img" or params.control_type is not None:
        return "Image prompts work with text to image (/dream and /blend) only, without ControlNet."
    return None


def family_takes_image_prompts(row: Family) -> bool:
    """diffusers' UNet IP-Adapter (IPAdapterMixin); SD 3 and FLUX have adapters of their own
    shape, which this bot does not load."""
    return not row.flow


def image_prompt_fields(params: GenerationParams) -> dict[str, str | None]:
    """The infotext keys of a job's image prompts (none without any); `IP-Adapter` itself,
    the file's name, is the engine's to add."""
    count = len(params.image_prompts) + len(params.style_images)
    if count == 0:
        return {}
    mode = None
    if params.style_images:
        mode = BOTH_MODE if params.image_prompts else STYLE_MODE
    return {
        KEY_IMAGES: str(count),
        KEY_WEIGHT: _number(params.image_weight),
        KEY_MODE: mode,
    }


def _number(value: float) -> str:
    # As infotext's format_number (which imports this module): 0.6, not 0.6000000000000001.
    return f"{value:g}" if float(value) == float(f"{value:g}") else repr(float(value))


def image_prompt_options(values: dict[str, str]) -> dict[str, Any]:
    """What a pasted infotext's image-prompt keys give back: the weight. The pictures are
    not in it, so there is nothing for the weight to apply to until the member adds them."""
    if KEY_WEIGHT not in values:
        return {}
    return {"image_weight": float(values[KEY_WEIGHT])}


def infotext_image_count(values: dict[str, str]) -> int:
    """How many pictures a pasted infotext's job was prompted with (0: none)."""
    try:
        return int(values.get(KEY_IMAGES, "0"))
    except ValueError:
        return 0
