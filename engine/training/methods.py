"""The two things /train can train, and the files they become.

- A LoRA on the UNet's attention projections through peft, as diffusers'
  train_dreambooth_lora.py configures it (SD 3's and FLUX's transformer's, as its _sd3.py
  and _flux.py do), saved in diffusers' format (what `pipe.load_lora_weights` reads).
- A textual-inversion embedding for SD 1.x/2.x that never touches the tokenizer or the
  embedding table while it trains: the new token is a reserved id that a pair of hooks on
  the token embedding maps to the trained vector, an fp32 master copy (the right thing on
  an fp16 GPU pipeline, too). Saved as `{token: (1, width)}`, what diffusers'
  `load_textual_inversion` and A1111 read.

Both files carry metadata in their safetensors header and A1111's hash of their tensors,
and each has a copy in A1111's format beside it (engine/training/export.py), whose hash
the file names for infotext.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import safetensors
import safetensors.torch
import torch

from engine.api.families import family
from engine.api.files import write_atomically
from engine.api.hashes import A1111_HASH_KEY
from engine.api.training_params import TrainingParams
from engine.pipelines.flow_prompts import FlowPromptEncoder
from engine.pipelines.loading import LoadedModel
from engine.pipelines.prompts import Chunk, PromptEncoder, frame_chunk
from engine.training.objectives import denoiser

ADAPTER_NAME = "sdbot_training"
# diffusers' train_dreambooth_lora.py targets the attention projections of the UNet; its
# _sd3.py and _flux.py the same of the transformer's (joint) attention.
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
METADATA_PREFIX = "sdbot."

# A few of diffusers' textual-inversion templates: varied prompts keep the vector from
# learning the words around it.
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of a {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "a picture in the style of {}",
)


# -- Methods ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conditioning:
    embeds: torch.Tensor
    # SDXL's pooled text and time ids; SD 3's and FLUX's pooled text (`pooled_projections`).
    added: dict[str, torch.Tensor] | None = None


class Method(Protocol):
    def attached(self) -> contextlib.AbstractContextManager[None]: ...

    def trainable(self) -> list[torch.Tensor]: ...

    def conditioning(self, draws: torch.Generator, with_prior: bool) -> Conditioning: ...

    def save(self, path: Path, metadata: dict[str, str]) -> Path: ...


class LoraMethod:
    """A DreamBooth LoRA on the UNet's (or transformer's) attention projections, through peft."""

    def __init__(self, loaded: LoadedModel, params: TrainingParams) -> None:
        from peft import LoraConfig

        self.loaded = loaded
        self.params = params
        self.config = LoraConfig(
            r=params.rank,
            lora_alpha=params.rank,
            init_lora_weights="gaussian",
            target_modules=LORA_TARGETS,
        )
        self._params: list[torch.Tensor] = []
        self._instance: Conditioning | None = None
        self._prior: Conditioning | None = None

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        unet: Any = denoiser(self.loaded.pipe)
        loaded_flag = unet.__dict__.get("_hf_peft_config_loaded", False)
        try:
            # The gaussian init draws from the global RNG: seed it without disturbing it.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.params.seed)
                unet.add_adapter(self.config, adapter_name=ADAPTER_NAME)
            self._params = [p for name, p in unet.named_parameters() if ".lora_" in name]
            for parameter in self._params:
                # fp32 master weights on an fp16 pipeline, as diffusers' cast_training_params
                parameter.data = parameter.data.float()
                parameter.requires_grad_(True)
            self._encode_prompts()
            yield
        finally:
            if getattr(unet, "peft_config", None):
                unet.unload_lora()
            unet._hf_peft_config_loaded = loaded_flag

    def _encode_prompts(self) -> None:
        self._instance = self._condition(self.params.instance_prompt)
        if self.params.prior_preservation:
            self._prior = self._condition(self.params.class_prompt)

    def _condition(self, prompt: str) -> Conditioning:
        row = family(self.loaded.family)
        if row.flow:  # T5 (and CLIP) as the flow path encodes a prompt
            flow = FlowPromptEncoder(self.loaded.pipe, row).encode(prompt)
            return Conditioning(flow.embeds.clone(), {"pooled_projections": flow.pooled.clone()})
        cond = PromptEncoder(self.loaded.pipe, self.loaded.family).encode(prompt)
        # Encoded under inference_mode: clone into ordinary tensors autograd may save.
        embeds = cond.embeds.clone()
        if self.loaded.family != "sdxl":
            return Conditioning(embeds)
        assert cond.pooled is not None
        side = self.params.resolution
        # SDXL's micro-conditioning: original size, crop corner, target size.
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=embeds.device)
        added = {"text_embeds": cond.pooled.clone(), "time_ids": time_ids.to(embeds.dtype)}
        return Conditioning(embeds, added)

    def trainable(self) -> list[torch.Tensor]:
        return self._params

    def conditioning(self, draws: torch.Generator, with_prior: bool) -> Conditioning:
        assert self._instance is not None
        if not with_prior:
            return self._instance
        assert self._prior is not None
        return stack_conditioning(self._instance, self._prior)

    def save(self, path: Path, metadata: dict[str, str]) -> Path:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        from engine.training.export import write_lora_copy  # it imports this module

        pipe: Any = self.loaded.pipe
        flow = family(self.loaded.family).flow
        state = get_peft_model_state_dict(denoiser(pipe), adapter_name=ADAPTER_NAME)
        if not flow:  # the SD 3/FLUX scripts keep peft's lora_A/lora_B names; the UNet's not
            state = convert_state_dict_to_diffusers(state)
        state = {key: value.detach().float().cpu().contiguous() for key, value in state.items()}
        part = "transformer" if flow else "unet"
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            # diffusers' own writer: the key layout and adapter metadata load_lora_weights reads.
            type(pipe).save_lora_weights(
                scratch,
                weight_name="lora.safetensors",
                **{
                    f"{part}_lora_layers": state,
                    f"{part}_lora_adapter_metadata": self.config.to_dict(),
                },
            )
            written = Path(scratch) / "lora.safetensors"
            tensors = safetensors.torch.load_file(str(written))
            with safetensors.safe_open(str(written), framework="pt") as handle:
                header = dict(handle.metadata() or {})
        # The A1111 copy first: a file of ours on disk means its copy is there too.
        alpha = float(self.config.lora_alpha)
        copy_hash = write_lora_copy(path, tensors, metadata, self.params.rank, alpha)
        write_safetensors(path, tensors, {**header, **metadata, A1111_HASH_KEY: copy_hash})
        return path


class EmbeddingMethod:
    """One new token's input embedding (textual inversion) for SD 1.x/2.x."""

    def __init__(self, loaded: LoadedModel, params: TrainingParams) -> None:
        pipe: Any = loaded.pipe
        self.loaded = loaded
        self.params = params
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder
        table = self.text_encoder.get_input_embeddings()
        # An id the tokenizer never produces and the table does not have: the hooks give it
        # the trained vector, so the vocabulary and the weights stay untouched.
        self.placeholder = table.num_embeddings
        self.vector = self._initial_vector(table).requires_grad_(True)
        self._mask: torch.Tensor | None = None
        style = params.class_word == "style"
        self._templates = [
            self._template_ids(template)
            for template in (STYLE_TEMPLATES if style else OBJECT_TEMPLATES)
        ]

    def _initial_vector(self, table: torch.nn.Embedding) -> torch.Tensor:
        """The mean embedding of the class word, as diffusers starts from an initializer token."""
        word = self.params.class_word or "object"
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            rows = table.weight[torch.tensor(ids, device=table.weight.device)]
            return rows.float().mean(dim=0, keepdim=True).clone()

    def _template_ids(self, template: str) -> list[int]:
        before, after = template.split("{}")
        pieces = [
            self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in (before, after)
        ]
        tokens = (*pieces[0], self.placeholder, *pieces[1])
        tokenizer = self.tokenizer
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        framed, _ = frame_chunk(
            Chunk(tokens, (1.0,) * len(tokens)), tokenizer.bos_token_id, eos, pad
        )
        return framed

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        table = self.text_encoder.get_input_embeddings()
        before = table.register_forward_pre_hook(self._swap_ids)
        after = table.register_forward_hook(self._insert_vector)
        try:
            yield
        finally:
            before.remove()
            after.remove()
            self._mask = None

    def _swap_ids(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        ids = args[0]
        self._mask = ids == self.placeholder
        return (torch.where(self._mask, torch.zeros_like(ids), ids), *args[1:])

    def _insert_vector(
        self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        mask = self._mask
        if mask is None or not bool(mask.any()):
            return output
        vector = self.vector[0].to(device=output.device, dtype=output.dtype)
        return torch.where(mask.unsqueeze(-1), vector, output)

    def trainable(self) -> list[torch.Tensor]:
        return [self.vector]

    def conditioning(self, draws: torch.Generator, with_prior: bool) -> Conditioning:
        index = int(torch.randint(len(self._templates), (1,), generator=draws))
        ids = torch.tensor([self._templates[index]], device=self.text_encoder.device)
        return Conditioning(self.text_encoder(ids).last_hidden_state)

    def save(self, path: Path, metadata: dict[str, str]) -> Path:
        from engine.training.export import write_embedding_copy  # it imports this module

        # `{token: (vectors, width)}`: what diffusers' load_textual_inversion and A1111 read.
        vectors = self.vector.detach().float().cpu().contiguous()
        copy_hash = write_embedding_copy(path, vectors, metadata)
        write_safetensors(
            path, {self.params.token: vectors}, {**metadata, A1111_HASH_KEY: copy_hash}
        )
        return path


def stack_conditioning(first: Conditioning, second: Conditioning) -> Conditioning:
    embeds = torch.cat([first.embeds, second.embeds])
    if first.added is None or second.added is None:
        return Conditioning(embeds)
    added = {key: torch.cat([first.added[key], second.added[key]]) for key in first.added}
    return Conditioning(embeds, added)


# -- Files ------------------------------------------------------------------------------------


def training_metadata(loaded: LoadedModel, params: TrainingParams, images: int) -> dict[str, str]:
    """What the file says about itself: ours under `sdbot.`, and kohya's `ss_` keys that
    A1111's LoRA browser shows (name, base model, dim, steps, images, activation text)."""
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    trigger = f"{params.token} {params.class_word}".strip()
    ours = {
        "format_version": "1",
        "name": params.name,
        "method": params.method,
        "token": params.token,
        "class_word": params.class_word,
        "base_model": params.model,
        "base_model_hash": loaded.model_hash or "",
        "family": loaded.family,
        "steps": str(params.steps),
        "rank": str(params.rank),
        "learning_rate": repr(params.learning_rate),
        "resolution": str(params.resolution),
        "seed": str(params.seed),
        "images": str(images),
        "prior_preservation": str(params.prior_preservation).lower(),
        "created": created,
    }
    metadata = {METADATA_PREFIX + key: value for key, value in ours.items()}
    metadata.update(
        {
            "ss_output_name": params.name,
            "ss_sd_model_name": params.model,
            "ss_max_train_steps": str(params.steps),
            "ss_num_train_images": str(images),
            "ss_learning_rate": repr(params.learning_rate),
            "ss_tag_frequency": json.dumps({params.name: {trigger: images}}),
        }
    )
    if params.method == "lora":
        metadata["ss_network_dim"] = str(params.rank)
        metadata["ss_network_alpha"] = str(params.rank)
    return metadata


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write atomically, with the hash A1111 shows for the file in its header.

    A1111 names a LoRA in infotext by the sha256 of the tensor data after the header
    (kohya's "addnet" hash), and reads it from `sshs_model_hash` when the file has one.
    The data bytes do not depend on the header, so the hash is known before writing.
    """
    data = safetensors.torch.save(tensors, metadata=metadata)
    digest = tensor_data_sha256(data)
    data = safetensors.torch.save(tensors, metadata={**metadata, "sshs_model_hash": digest})
    write_atomically(path, data)


def tensor_data_sha256(data: bytes) -> str:
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length :]).hexdigest()
