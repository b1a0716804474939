"""What a job asks of its model's family, checked before it is charged: one sentence naming
the option the family cannot honour, never a job that quietly runs without it.

engine/api/params.py calls `family_problem` from its one check; this module cannot import
that one (it imports this), so parameters are only a type here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.api.families import Family
from engine.api.prompt_schedule import is_plain_and, parse_prompt, split_and
from engine.api.prompt_syntax import parse_attention, resolve_syntax
from engine.api.samplers import AUTOMATIC

if TYPE_CHECKING:
    from engine.api.params import GenerationParams

_MODE_NAMES = {
    "img2img": "img2img",
    "inpaint": "Inpainting",
    "outpaint": "Outpainting",
    "upscale": "Upscaling",
    "edit": "/edit",
    "interpolate": "Interpolation",
}


def family_problem(params: GenerationParams, row: Family) -> str | None:
    """The first option of `params` that a model of `row` cannot run, as a sentence."""
    for check in (_mode_problem, _guidance_problem, _sampler_problem, _prompt_problem):
        problem = check(params, row)
        if problem is not None:
            return problem
    return None


def _mode_problem(params: GenerationParams, row: Family) -> str | None:
    if params.mode != "txt2img" and params.mode not in row.image_modes:
        mode = _MODE_NAMES.get(params.mode, params.mode)
        return (
            f"{mode} is not available for {row.label} models here yet; "
            f"/dream makes images with them from text."
        )
    if params.control_type is not None and not row.controlnet:
        return f"ControlNet is not available for {row.label} models here."
    if params.embeddings and not row.embeddings:
        tokens = ", ".join(token for token, _ in params.embeddings)
        return (
            f"Embeddings ({tokens}) are made for SD 1.x/SDXL text encoders; {row.label} "
            "models cannot use them."
        )
    return None


def _guidance_problem(params: GenerationParams, row: Family) -> str | None:
    if params.negative.strip() and not row.negative_prompt:
        return (
            f"{row.label} has no negative prompt (its guidance is distilled into the model, so "
            "nothing runs against one): leave it empty and say in the prompt what you want."
        )
    if row.guidance == "none" and params.cfg != 0:
        return (
            f"{row.label} takes no guidance (it is step-distilled): leave CFG empty or at 0, "
            f"not {params.cfg:g}."
        )
    if params.clip_skip != 1 and not row.clip_skip:
        return (
            f"Clip skip is not available for {row.label} models: their text encoders are read "
            "as the model was trained."
        )
    return None


def _sampler_problem(params: GenerationParams, row: Family) -> str | None:
    if not row.allows_sampler(params.sampler):
        return (
            f"{row.label} models sample with {', '.join(row.samplers)} only (flow matching "
            f"has no scheduler for {params.sampler})."
        )
    if row.flow and params.schedule != AUTOMATIC:
        return (
            f"{row.label} models step on their own flow-matching schedule: leave the schedule "
            f"type on {AUTOMATIC}, not {params.schedule}."
        )
    return None


def _prompt_problem(params: GenerationParams, row: Family) -> str | None:
    """A1111's emphasis is read by every family; what else its prompt language does needs
    CLIP's 75-token chunks and the UNet path's conditioning schedules."""
    if row.prompt_chunks:
        return None
    for text, what in ((params.prompt, "prompt"), (params.negative, "negative prompt")):
        problem = _language_problem(text, what, params.prompt_syntax, row)
        if problem is not None:
            return problem
    return None


def _language_problem(text: str, what: str, syntax: str, row: Family) -> str | None:
    if not text.strip():
        return None
    if resolve_syntax(text, syntax) == "subprompt":
        return (
            f"Weighted sub-prompts (`dog:0.9 cyborg:0.3`) in the {what} are not available for "
            f"{row.label} models; weigh words with A1111's (word:1.2) instead."
        )
    if what == "prompt" and not is_plain_and(split_and(text)):
        return f"AND and sub-prompt weights (composable prompts) are not available for {row.label}."
    nodes = parse_prompt(text)
    if nodes is not None and any(not isinstance(node, str) for node in nodes):
        return (
            f"Prompt editing [from:to:when] and alternation [a|b] in the {what} are not "
            f"available for {row.label} models."
        )
    if any(fragment.is_break for fragment in parse_attention(text)):
        return (
            f"BREAK in the {what} has no meaning for {row.label} models: their T5 encoder reads "
            f"the prompt whole (up to {row.prompt_tokens} tokens), not in 75-token chunks."
        )
    return None
