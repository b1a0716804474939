"""Turning a member's attachments and options into image-conditioned jobs (issue 5).

Attachments are untrusted: they are decoded by engine/imaging/attachments.py (type from the bytes,
a pixel limit before decoding) in a worker thread, resized to what the model works with,
and stored by content; a job names its inputs by key, never by URL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from bot.generation.image_prompts import ImagePromptRequests
from bot.generation.options import Checked, DreamOptions
from bot.generation.service import DreamService
from bot.jobs.inputs import InputStore
from engine.api.checks import check_upscale_size
from engine.api.edits import (
    EDIT_DENOISE,
    NO_INSTRUCTION,
    NOT_SET_UP,
    edit_model,
    image_cfg_problem,
)
from engine.api.infotext import parse_infotext
from engine.api.params import CONTROL_TYPES, GenerationParams, InvalidParams
from engine.api.specs import ModelSpec
from engine.imaging import attachments
from engine.imaging.attachments import PreparedImage
from engine.imaging.images import UnreadableImage, read_infotext

DEFAULT_CONTROL = "canny"
DEFAULT_IMG2IMG_DENOISE = 0.75
DEFAULT_INPAINT_DENOISE = 0.75
# New canvas is painted from edge colours and noise: it needs most of the steps.
DEFAULT_OUTPAINT_DENOISE = 0.9
# Below this the outpainted picture would be too small to be worth making.
MIN_OUTPAINT_SCALE = 0.25
# Vary (Region) repaints what the member named as Midjourney does, nearly from scratch; a
# little of the old picture keeps the colours in step with what surrounds it.
DEFAULT_REGION_DENOISE = 0.9


# The input key an edit is checked with before its picture is stored.
_UNSTORED = "unstored"


@dataclass(frozen=True, slots=True)
class Prepared:
    """Checked parameters and what was done to the attachments, for the member."""

    params: Checked
    note: str = ""


@dataclass(frozen=True, slots=True)
class ControlRequest:
    image: bytes
    control_type: str | None = None
    weight: float | None = None


def _notes(*parts: str) -> str:
    return " ".join(part for part in parts if part)


class ImageRequests:
    def __init__(self, dreams: DreamService, inputs: InputStore) -> None:
        self.dreams = dreams
        self.inputs = inputs
        self.settings = dreams.settings
        self.prompts = ImagePromptRequests(dreams, inputs)  # /blend and image prompts

    @property
    def max_attachment_bytes(self) -> int:
        return self.settings.max_attachment_bytes

    def check_size(self, size: int, what: str = "image") -> None:
        """Refuse a file by the size Discord reports, before a byte is downloaded."""
        limit = self.settings.max_attachment_bytes
        if size > limit:
            raise UnreadableImage(
                f"That {what} is {size_text(size)}; the limit is {size_text(limit)}."
            )
        if size == 0:
            raise UnreadableImage(f"That {what} is an empty file.")

    def _spec(self, options: DreamOptions) -> ModelSpec:
        name = options.model or self.settings.default_model
        spec = self.dreams.models.get(name)
        if spec is None:
            known = ", ".join(sorted(self.dreams.models))
            raise InvalidParams(f"Unknown model {name!r}. Models: {known}.")
        return spec

    async def _init(self, data: bytes, spec: ModelSpec, pixel_cap: int) -> PreparedImage:
        return await asyncio.to_thread(
            attachments.prepare_init,
            data,
            max_pixels=self.settings.max_attachment_pixels,
            pixel_cap=pixel_cap,
            multiple=spec.family_row().size_multiple,
        )

    async def _store(self, prepared: PreparedImage) -> str:
        return await self.inputs.put_async(prepared.png)

    def _params(self, options: DreamOptions, **fields: object) -> Checked:
        """The member's options with defaults, plus the mode's fields, checked together."""
        return self.dreams.build_params(options, **fields)

    # -- the modes ----------------------------------------------------------------------

    async def img2img(
        self,
        options: DreamOptions,
        image: bytes,
        denoise: float | None = None,
        control: ControlRequest | None = None,
    ) -> Prepared:
        spec = self._spec(options)
        init = await self._init(image, spec, spec.pixel_cap())
        key = await self._store(init)
        fields: dict[str, object] = {
            "mode": "img2img",
            "init_image": key,
            "denoise": DEFAULT_IMG2IMG_DENOISE if denoise is None else denoise,
        }
        control_note = ""
        if control is not None:
            control_fields, control_note = await self._control(
                spec, control, (init.width, init.height)
            )
            fields.update(control_fields)
        params = self._params(replace(options, size=(init.width, init.height)), **fields)
        return Prepared(params, _notes(init.note, control_note))

    def check_edit(self, instruction: str, image_cfg: float | None) -> None:
        """/edit's options that need no picture, refused (InvalidParams) before it is
        downloaded: a bot with no model that can edit (engine/api/edits.py) first."""
        if edit_model(self.dreams.models) is None:
            raise InvalidParams(NOT_SET_UP)
        if not instruction.strip():
            raise InvalidParams(NO_INSTRUCTION)
        problem = image_cfg_problem(image_cfg) if image_cfg is not None else None
        if problem is not None:
            raise InvalidParams(problem)

    async def edit(
        self, options: DreamOptions, image: bytes, image_cfg: float | None = None
    ) -> Prepared:
        """/edit: the picture changed as `options.prompt`, the instruction, says. It runs on
        the member's model when that one can edit, else on the bot's first that can."""
        model = edit_model(self.dreams.models, options.model, self.settings.default_model)
        if model is None:
            raise InvalidParams(NOT_SET_UP)
        spec = self.dreams.models[model]
        init = await self._init(image, spec, spec.pixel_cap())
        fields: dict[str, object] = {
            "mode": "edit",
            "init_image": _UNSTORED,
            "denoise": EDIT_DENOISE,
        }
        if image_cfg is not None:
            fields["image_cfg"] = image_cfg
        sized = replace(options, model=model, size=(init.width, init.height))
        checked = self._params(sized, **fields)
        # Stored once it passed: a refused edit leaves nothing on disk. The checks ask only
        # that there is an input, not which.
        key = await self._store(init)
        return Prepared(Checked(replace(checked, init_image=key)), init.note)

    async def inpaint(
        self,
        options: DreamOptions,
        image: bytes,
        mask: bytes | None,
        *,
        denoise: float | None = None,
        mask_blur: int | None = None,
        only_masked: bool = False,
        padding: int | None = None,
    ) -> Prepared:
        spec = self._spec(options)
        init = await self._init(image, spec, spec.pixel_cap())
        prepared_mask = await asyncio.to_thread(
            attachments.prepare_mask,
            mask,
            init,
            max_pixels=self.settings.max_attachment_pixels,
        )
        fields: dict[str, object] = {
            "mode": "inpaint",
            "init_image": await self._store(init),
            "mask_image": await self._store(prepared_mask),
            "denoise": DEFAULT_INPAINT_DENOISE if denoise is None else denoise,
            "inpaint_full_res": only_masked,
        }
        if mask_blur is not None:
            fields["mask_blur"] = mask_blur
        if padding is not None:
            fields["inpaint_padding"] = padding
        params = self._params(replace(options, size=(init.width, init.height)), **fields)
        return Prepared(params, _notes(init.note, prepared_mask.note))

    async def outpaint(
        self,
        options: DreamOptions,
        image: bytes,
        pads: tuple[int, int, int, int],
        denoise: float | None = None,
    ) -> Prepared:
        if not any(pads):
            raise InvalidParams(
                "Say how far to grow the picture: left, right, up or down, in pixels."
            )
        spec = self._spec(options)
        cap = spec.pixel_cap()
        init = await self._init(image, spec, cap)
        multiple = spec.family_row().size_multiple
        # The grown canvas must fit the model too: shrink the picture until it does.
        scale = 1.0
        width, height = attachments.outpaint_size(init.width, init.height, pads, multiple)
        while width * height > cap:
            scale *= 0.9
            if scale < MIN_OUTPAINT_SCALE:
                raise InvalidParams(
                    f"Growing the picture by {sum(pads)} pixels leaves too little room for it "
                    f"within the model's {cap:,} pixels; grow it less."
                )
            init = await self._init(image, spec, int(cap * scale * scale))
            width, height = attachments.outpaint_size(init.width, init.height, pads, multiple)
        fields: dict[str, object] = {
            "mode": "outpaint",
            "init_image": await self._store(init),
            "outpaint": attachments.outpaint_pads(init.width, init.height, pads, multiple),
            "denoise": DEFAULT_OUTPAINT_DENOISE if denoise is None else denoise,
        }
        params = self._params(replace(options, size=(width, height)), **fields)
        return Prepared(params, init.note)

    async def upscale(
        self,
        options: DreamOptions,
        image: bytes,
        factor: float | None = None,
        denoise: float | None = None,
    ) -> Prepared:
        """Resize, then a low-denoise detail pass. Without a prompt, the one the image
        carries (ours and A1111's PNGs do) is used."""
        factor = self.settings.upscale_factor if factor is None else factor
        init = await asyncio.to_thread(
            attachments.prepare_init,
            image,
            max_pixels=self.settings.max_attachment_pixels,
            # As sent, only snapped to multiples of 8: the upscale limit is checked below.
            pixel_cap=self.settings.max_attachment_pixels,
        )
        carried = await asyncio.to_thread(_carried_prompt, image)
        if not options.prompt and carried is not None:
            options = replace(
                options, prompt=carried[0], negative=options.negative or carried[1] or None
            )
        multiple = self._spec(options).family_row().size_multiple
        width, height = attachments.upscale_size(init.width, init.height, factor, multiple)
        # Refused before anything is stored: a refused request leaves nothing on disk.
        check_upscale_size(width, height, self.settings.max_upscale_pixels)
        fields: dict[str, object] = {
            "mode": "upscale",
            "init_image": await self._store(init),
            "upscale": factor,
            "denoise": self.settings.upscale_denoise if denoise is None else denoise,
        }
        params = self._params(replace(options, size=(width, height), count=1), **fields)
        return Prepared(params, init.note)

    async def control_for_dream(self, options: DreamOptions, control: ControlRequest) -> Prepared:
        """/dream with a control image: the composition follows the map."""
        spec = self._spec(options)
        size = options.size or spec.size_default()
        fields, note = await self._control(spec, control, size)
        return Prepared(self._params(options, **fields), note)

    async def _control(
        self, spec: ModelSpec, control: ControlRequest, size: tuple[int, int]
    ) -> tuple[dict[str, object], str]:
        control_type = control.control_type or DEFAULT_CONTROL
        if control_type not in CONTROL_TYPES:
            raise InvalidParams(f"Unknown control type {control_type!r}.")
        if control_type not in spec.controlnets:
            have = ", ".join(sorted(spec.controlnets)) or "none"
            raise InvalidParams(
                f"Model {spec.name} has no ControlNet for {control_type} (it has: {have})."
            )
        prepared = await asyncio.to_thread(
            attachments.prepare_control,
            control.image,
            max_pixels=self.settings.max_attachment_pixels,
            size=size,
        )
        fields: dict[str, object] = {
            "control_type": control_type,
            "control_image": await self._store(prepared),
        }
        if control.weight is not None:
            fields["control_scale"] = control.weight
        return fields, prepared.note


async def store_init(
    inputs: InputStore, png: bytes, *, max_pixels: int, spec: ModelSpec
) -> tuple[PreparedImage, str]:
    """A result's picture sized for the model `spec` (off the event loop) and stored by
    content: the input of a job a button starts from it."""
    prepared = await asyncio.to_thread(
        attachments.prepare_init,
        png,
        max_pixels=max_pixels,
        pixel_cap=spec.pixel_cap(),
        multiple=spec.family_row().size_multiple,
    )
    return prepared, await inputs.put_async(prepared.png)


def from_image(params: GenerationParams, init_key: str) -> GenerationParams:
    """A job that starts from one image (a result's, for its buttons): what masked, grew or
    controlled the source is gone."""
    return replace(
        params,
        init_image=init_key,
        mask_image=None,
        outpaint=(0, 0, 0, 0),
        upscale=1.0,
        control_type=None,
        control_image=None,
        variation_seed=None,
        variation_strength=0.0,
        mask_prompt=None,
        mask_cell=None,
        mask_preview=False,
        # The picture carries what its image prompts gave it.
        image_prompts=(),
        style_images=(),
    )


def size_text(size: int) -> str:
    """1536 -> '1.5 KB', 20971520 -> '20 MB'."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def _carried_prompt(data: bytes) -> tuple[str, str] | None:
    """The prompt and negative prompt inside an image's parameters, if it has any."""
    try:
        text = read_infotext(data)
    except UnreadableImage:
        return None
    if not text:
        return None
    info = parse_infotext(text)
    return (info.prompt, info.negative) if info.prompt else None
