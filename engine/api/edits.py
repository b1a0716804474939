"""/edit's rules as plain data (issue 18): which model edits, and what an edit may ask.
No torch here.

An edit is InstructPix2Pix (Brooks et al., 2023): a UNet with 8 input channels, the noisy
latents beside the picture's, guided both by the instruction ("make it winter") and by the
picture. A configured model edits when its spec names such a UNet (`edit_source`), which
the engine loads beside the model on first use (engine/pipelines/edit.py), as it loads a
dedicated inpainting UNet; it is freed with the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine.api.params import MAX_IMAGE_CFG, MIN_IMAGE_CFG
from engine.api.prompt_schedule import is_plain_and, parse_prompt, split_and
from engine.api.prompt_syntax import resolve_syntax
from engine.api.specs import ModelSpec

if TYPE_CHECKING:
    from engine.api.params import GenerationParams

EDIT = "edit"
NOT_SET_UP = "/edit is not set up on this bot."
NO_INSTRUCTION = "Say what to change, for example: make it winter."
# InstructPix2Pix starts from pure noise, the picture only conditioning the model: A1111
# runs such a model at a denoising strength of 1 to do the same, and writes it so.
EDIT_DENOISE = 1.0
# Modes whose images start from pure noise, as txt2img's: they run every step (and are
# priced so), and a variation seed blends a second seed's noise into theirs.
FROM_NOISE_MODES = frozenset({"txt2img", EDIT})
# Each edit step runs the UNet on three rows (instruction and picture, picture alone,
# neither) where CFG runs two, so a step costs half as much again as a /dream step.
EDIT_STEP_COST = 1.5


def can_edit(spec: ModelSpec) -> bool:
    return bool(spec.edit_source)


def edit_model(models: Mapping[str, ModelSpec], *preferred: str | None) -> str | None:
    """The model an /edit runs on: the first of `preferred` (the member's own default, then
    the bot's) that can edit, else the first configured one that can; None when none can."""
    for name in preferred:
        spec = models.get(name or "")
        if spec is not None and can_edit(spec):
            return name
    return next((name for name, spec in models.items() if can_edit(spec)), None)


def image_cfg_problem(image_cfg: float) -> str | None:
    if MIN_IMAGE_CFG <= image_cfg <= MAX_IMAGE_CFG:
        return None
    return f"Image CFG scale must be {MIN_IMAGE_CFG:g}-{MAX_IMAGE_CFG:g}, not {image_cfg:g}."


def edit_problem(params: GenerationParams, spec: ModelSpec) -> str | None:
    """The first thing an edit job asks that cannot run, as a sentence; None when it can.

    The image CFG scale is checked in every mode, as denoise is: infotext brings it back into
    any job (engine/api/infotext.py), and only an edit reads it."""
    problem = image_cfg_problem(params.image_cfg)
    if problem is not None or params.mode != EDIT:
        return problem
    if not can_edit(spec):
        return f"Model {spec.name} cannot edit pictures from instructions here."
    if params.denoise != EDIT_DENOISE:
        return (
            "An edit paints the whole picture again from noise, guided by the picture: its "
            f"denoising strength is {EDIT_DENOISE:g}, not {params.denoise:g}."
        )
    if params.loras:
        # adapters_for applies them to the model's own UNet, not to the edit UNet.
        return "LoRAs do not apply to /edit: take the <lora:...> tags out of the instruction."
    if params.control_type is not None:
        return "ControlNet does not work with /edit."
    return _language_problem(params)


def _language_problem(params: GenerationParams) -> str | None:
    """InstructPix2Pix's three rows per image (instruction, picture only, neither) hold one
    text each for the whole run: what changes the text between steps, or adds rows, cannot."""
    for text, what in ((params.prompt, "instruction"), (params.negative, "negative prompt")):
        if resolve_syntax(text, params.prompt_syntax) != "a1111":
            continue
        nodes = parse_prompt(text)
        scheduled = nodes is not None and any(not isinstance(node, str) for node in nodes)
        if scheduled or (what == "instruction" and not is_plain_and(split_and(text))):
            return (
                f"Prompt editing [from:to:when], alternation [a|b] and AND in the {what} "
                "are not available in /edit."
            )
    return None
