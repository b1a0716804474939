"""Members' pictures as image prompts (issue 18): /blend's image1..image5 and /dream's
`image_prompt` and `style_image`, checked, stored by content and named in the job's
parameters (engine/api/image_prompts.py says what the engine does with them).

Every picture is decoded and checked (engine/imaging/attachments.py: type from the bytes, a
pixel limit before decoding) and the whole job checked before anything is stored, so a bad
second picture leaves the first one off the disk too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bot.generation.options import Checked, DreamOptions
from bot.generation.service import DreamService
from bot.jobs.inputs import InputStore, input_key
from engine.api.image_prompts import not_set_up
from engine.api.params import InvalidParams
from engine.imaging import attachments

# CLIP's image encoders see 224x224 pixels (ViT-H and ViT-bigG, as IP-Adapter's use them):
# a larger stored copy would only take disk.
IMAGE_PROMPT_PIXELS = 512 * 512

Pictures = Sequence[tuple[str, bytes]]  # (what the member called it, its bytes)


class ImagePromptRequests:
    def __init__(self, dreams: DreamService, inputs: InputStore) -> None:
        self.dreams = dreams
        self.inputs = inputs
        self.settings = dreams.settings

    def check_available(self, model: str | None, command: str = "Image prompts") -> None:
        """Before anything is downloaded: the model has an IP-Adapter configured. The one
        sentence names the model only when another model has one."""
        name = model or self.settings.default_model
        spec = self.dreams.models.get(name)
        if spec is None:
            known = ", ".join(sorted(self.dreams.models))
            raise InvalidParams(f"Unknown model {name!r}. Models: {known}.")
        if spec.ip_adapter is not None:
            return
        others = any(other.ip_adapter for other in self.dreams.models.values())
        raise InvalidParams(not_set_up(command, name if others else None))

    async def prepare(
        self,
        options: DreamOptions,
        image_prompts: Pictures = (),
        style_images: Pictures = (),
        weight: float | None = None,
    ) -> Checked:
        """The job's checked parameters with its pictures stored and named by key;
        InvalidParams names the picture that is not usable, or what else is wrong."""
        prompts = [await self._decode(what, data) for what, data in image_prompts]
        styles = [await self._decode(what, data) for what, data in style_images]
        fields: dict[str, object] = {
            "image_prompts": tuple(input_key(png) for png in prompts),
            "style_images": tuple(input_key(png) for png in styles),
        }
        if weight is not None:
            fields["image_weight"] = weight
        params = self.dreams.build_params(options, **fields)
        for png in (*prompts, *styles):
            await self.inputs.put_async(png)
        return params

    async def _decode(self, what: str, data: bytes) -> bytes:
        try:
            prepared = await asyncio.to_thread(
                attachments.prepare_init,
                data,
                max_pixels=self.settings.max_attachment_pixels,
                pixel_cap=IMAGE_PROMPT_PIXELS,
            )
        except InvalidParams as bad:  # UnreadableImage and a strip too thin are both
            raise InvalidParams(f"{what}: {bad}") from None
        return prepared.png
