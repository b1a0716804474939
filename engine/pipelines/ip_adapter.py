"""Image prompts on the engine thread (issue 18): the model's IP-Adapter attached to the UNet
for a batch that has them, detached for one that has not, and the batch's CLIP image
embeddings handed to every pipeline call of it.

diffusers' `load_ip_adapter` puts the adapter into the UNet itself (its cross-attention
processors gain `to_k_ip`/`to_v_ip`, an image projection becomes `encoder_hid_proj`), and a
UNet that carries one requires image embeddings at every call. So the adapter is attached
only for batches with image prompts (batch_key keeps jobs with and without them, or with
other pictures or weights, apart) and `unload_ip_adapter` takes it out before any other
batch, or training, uses the UNet. Its image encoder is kept with the loaded model once read,
so attaching again reads only the adapter's weights. What the UNet carries is read from the
UNet each time, never from a flag of ours, so whatever changed it behind our back (a lower
memory mode's attention slicing replaces its processors) costs only an attach.

Several pictures of one kind go to one adapter together: diffusers projects each to its own
image tokens and concatenates them (MultiIPAdapterImageProjection), so attention mixes them,
which is what /blend asks. Image prompts and style images at once are two copies of the
adapter, each with its scale: the whole UNet at `image_weight` for the first, the style
layers only for the second (InstantStyle's, set through `set_ip_adapter_scale`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from engine.api.errors import EngineError
from engine.api.image_prompts import KEY_ADAPTER, AdapterLocation, locate_adapter, not_set_up
from engine.api.jobs import EngineJob
from engine.api.params import GenerationParams
from engine.pipelines.loading import LoadedModel
from engine.pipelines.memory import forget_hooks

log = logging.getLogger(__name__)

HELD_KEY = "ip_adapter"  # the kept image encoder, among the loaded model's derived objects
ACTIVE_KEY = "image_prompts"  # the batch's embeddings, while it runs
LOAD_FAILED = "The IP-Adapter could not be loaded; the bot's log has the details."


@dataclass(frozen=True, slots=True)
class _Held:
    location: AdapterLocation
    encoder: Any  # CLIPVisionModelWithProjection, kept across detaching


@dataclass(frozen=True, slots=True)
class ActiveImagePrompts:
    """One batch's image embeddings, per attached adapter: [negative; positive] rows."""

    embeds: list[torch.Tensor]
    infotext: dict[str, str]


def _ip_processor_types() -> tuple[type, ...]:
    from diffusers.models.attention_processor import (
        IPAdapterAttnProcessor,
        IPAdapterAttnProcessor2_0,
        IPAdapterXFormersAttnProcessor,
    )

    return (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor)


def attached_adapters(pipe: Any) -> int:
    """How many IP-Adapters the pipeline's UNet carries whole: 0 for none, -1 for a
    projection whose attention processors were replaced since (it must be detached)."""
    unet = getattr(pipe, "unet", None)
    projection = getattr(unet, "encoder_hid_proj", None)
    if unet is None or projection is None or unet.config.encoder_hid_dim_type != "ip_image_proj":
        return 0
    kinds = _ip_processor_types()
    if not any(isinstance(p, kinds) for p in unet.attn_processors.values()):
        return -1
    return len(projection.image_projection_layers)


def _units(params: GenerationParams) -> list[tuple[tuple[str, ...], bool]]:
    """The adapters a job needs: (its pictures, style layers only) for each kind it has."""
    units = []
    if params.image_prompts:
        units.append((params.image_prompts, False))
    if params.style_images:
        units.append((params.style_images, True))
    return units


@contextlib.contextmanager
def image_prompting(loaded: LoadedModel, jobs: Sequence[EngineJob]) -> Iterator[None]:
    """The batch's image prompts applied for its pipeline calls (image_prompt_inputs), or the
    UNet without any adapter when it has none."""
    first = jobs[0]
    units = _units(first.params)
    if not units:
        detach(loaded)
        yield
        return
    location = _location(loaded)
    attach(loaded, location, len(units))
    pipe: Any = loaded.pipe
    weight = first.params.image_weight
    scales = [
        style_scale(pipe.unet, loaded.family, weight) if style else weight for _, style in units
    ]
    pipe.set_ip_adapter_scale(scales)
    if weight > 0 and not _engaged(pipe.unet):  # a style block that names nothing is silent
        raise EngineError("The IP-Adapter's layers were not found in this model.")
    pictures = [[_picture(first, key) for key in keys] for keys, _ in units]
    device = loaded.device or pipe.device
    embeds = pipe.prepare_ip_adapter_image_embeds(
        ip_adapter_image=pictures,
        ip_adapter_image_embeds=None,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
    )
    loaded.derived[ACTIVE_KEY] = ActiveImagePrompts(list(embeds), {KEY_ADAPTER: location.name})
    try:
        yield
    finally:
        loaded.derived.pop(ACTIVE_KEY, None)


def image_prompt_inputs(loaded: LoadedModel, pipe: Any, guidance: float) -> dict[str, Any]:
    """What a pipeline call of the running batch adds: its image embeddings, with the
    negative rows only when the call runs classifier-free guidance (diffusers' own test)."""
    active = loaded.derived.get(ACTIVE_KEY)
    if not isinstance(active, ActiveImagePrompts):
        return {}
    guided = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
    embeds = active.embeds if guided else [rows.chunk(2)[1] for rows in active.embeds]
    return {"ip_adapter_image_embeds": embeds}


def image_prompt_infotext(loaded: LoadedModel) -> dict[str, str]:
    """`IP-Adapter: <file name>` while a batch with image prompts runs."""
    active = loaded.derived.get(ACTIVE_KEY)
    return dict(active.infotext) if isinstance(active, ActiveImagePrompts) else {}


def style_scale(unet: Any, family: str, weight: float) -> dict[str, Any]:
    """InstantStyle's style layers as a `set_ip_adapter_scale` dict: the first up block with
    attention (SDXL's up_blocks.0, SD 1.5's up_blocks.1), for SDXL only its middle attention
    (`{"up": {"block_0": [0.0, w, 0.0]}}`, diffusers' IP-Adapter guide), for SD 1.x/2.x the
    whole block (InstantStyle's infer_style_sd15). Found from the UNet, so a model whose
    blocks are laid out otherwise is not silently left without the adapter."""
    for index, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        if not attentions:
            continue
        if family == "sdxl" and len(attentions) > 1:
            values = [weight if layer == 1 else 0.0 for layer in range(len(attentions))]
            return {"up": {f"block_{index}": values}}
        return {"up": {f"block_{index}": weight}}
    raise EngineError("Style images need a UNet with attention in its up blocks.")


def _engaged(unet: Any) -> bool:
    kinds = _ip_processor_types()
    processors: list[Any] = [p for p in unet.attn_processors.values() if isinstance(p, kinds)]
    return any(_nonzero(scale) for processor in processors for scale in processor.scale)


def _nonzero(scale: Any) -> bool:
    return any(value != 0 for value in scale) if isinstance(scale, list) else scale != 0


def _picture(job: EngineJob, key: str) -> Image.Image:
    """A stored picture (checked and stored by the bot: engine/imaging/attachments.py)."""
    try:
        data = job.inputs[key]
    except KeyError:
        raise EngineError("An image prompt's picture is missing; send it again.") from None
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _location(loaded: LoadedModel) -> AdapterLocation:
    spec = loaded.spec
    if spec.ip_adapter is None:
        raise EngineError(not_set_up(model=spec.name))
    return locate_adapter(spec.ip_adapter, spec.ip_adapter_encoder)


def attach(loaded: LoadedModel, location: AdapterLocation, count: int) -> None:
    """`count` copies of the adapter in the UNet (nothing to do when they are there)."""
    pipe: Any = loaded.pipe
    if attached_adapters(pipe) == count:
        return
    detach(loaded)
    held = loaded.derived.get(HELD_KEY)
    with _unhooked(loaded), torch.inference_mode(False):  # ordinary weights, as a LoRA's
        _unslice(pipe)
        if isinstance(held, _Held) and held.location == location:
            pipe.register_modules(image_encoder=held.encoder)  # read once, kept
        try:
            pipe.load_ip_adapter(
                [location.source] * count,
                subfolder=[location.subfolder] * count,
                weight_name=[location.weight_name] * count,
                image_encoder_folder=location.image_encoder_folder,
            )
        # Whatever the library raises (no such file, not cached offline, another family's
        # adapter) names the owner's paths: the log gets it, the member a sentence.
        except Exception:
            log.exception("the IP-Adapter %s could not be loaded", location)
            with contextlib.suppress(Exception):
                pipe.unload_ip_adapter()
            raise EngineError(LOAD_FAILED) from None
    loaded.derived[HELD_KEY] = _Held(location, pipe.image_encoder)
    log.info("IP-Adapter %s attached to %s (%d)", location.name, loaded.spec.name, count)


def detach(loaded: LoadedModel) -> None:
    """The UNet as it is without any adapter (nothing to do when it carries none)."""
    pipe: Any = loaded.pipe
    if attached_adapters(pipe) == 0:
        return
    with _unhooked(loaded):
        _unslice(pipe)
        pipe.unload_ip_adapter()
        if loaded.plan.attention_slicing:
            pipe.enable_attention_slicing()


def _unslice(pipe: Any) -> None:
    """Sliced attention back to diffusers' default processor: `load_ip_adapter` and
    `unload_ip_adapter` rebuild every processor from its class with no arguments, which a
    sliced one cannot be. The adapter's own processors use PyTorch's memory-efficient SDPA."""
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    processors = pipe.unet.attn_processors
    if not any(isinstance(p, SlicedAttnProcessor) for p in processors.values()):
        return
    pipe.unet.set_attn_processor(
        {
            name: AttnProcessor2_0() if isinstance(p, SlicedAttnProcessor) else p
            for name, p in processors.items()
        }
    )


@contextlib.contextmanager
def _unhooked(loaded: LoadedModel) -> Iterator[None]:
    """An offloaded pipeline without its hooks while the UNet changes, hooked again after, so
    the adapter's new layers and its image encoder are offloaded with the rest."""
    plan, device, pipe = loaded.plan, loaded.device, loaded.pipe
    moves = plan.offloaded and device is not None and device.type == "cuda"
    if moves:
        pipe.remove_all_hooks()
    try:
        yield
    finally:
        if moves:
            if plan.sequential_offload:
                pipe.enable_sequential_cpu_offload(device=device)
            else:
                pipe.enable_model_cpu_offload(device=device)
            forget_hooks(loaded)  # the model's own pipeline is the hooked one again
