"""A1111's AND (composable diffusion) around the UNet, for one pipeline call.

A1111 runs the UNet once per sub-prompt and once for the negative prompt, and combines
`uncond + sum((cond_i - uncond) * weight_i * cfg)` (CFGDenoiser.combine_denoised). diffusers
runs one conditional row per image and combines `uncond + cfg * (cond - uncond)`. So, while a
pipeline call runs, a forward pre-hook widens each UNet batch to the negative rows plus one
row per sub-prompt (latents repeated, each row its own embeddings), and a forward hook folds
the outputs back into the row diffusers expects, `uncond + sum((cond_i - uncond) * weight_i)`,
which diffusers' own formula turns into A1111's. A ControlNet gets the same widened batch (its
residuals then match the UNet's rows), as A1111's ControlNet extension sees every sub-prompt.
Engine thread only: the hooks live on the shared modules for the call and are removed after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from engine.pipelines.scheduled_conditioning import RunConditioning

# The model inputs with one row per row of diffusers' batch. The ControlNet's residuals are
# not among them: its own hook has already widened them to the UNet's rows.
_PER_ROW = frozenset({"sample", "timestep", "controlnet_cond", "timestep_cond"})


@dataclass(frozen=True, slots=True)
class _Layout:
    """The widened batch of one model call."""

    images: int
    guided: bool  # diffusers' batch is [negative rows; positive rows], else positive rows only
    source: torch.Tensor  # for each widened row, the row of diffusers' batch it copies
    hidden: torch.Tensor
    pooled: torch.Tensor | None
    weights: tuple[tuple[float, ...], ...]  # per image, its sub-prompts' weights
    plain: tuple[bool, ...]  # per image: one sub-prompt of weight 1 (its row passes as is)


class ComposableGuidance:
    """The hooks that give every image its sub-prompts, at the call `run` has reached."""

    def __init__(self, run: RunConditioning, cfg: float) -> None:
        self.run = run
        self.cfg = cfg
        self._layout: _Layout | None = None

    @contextmanager
    def installed(self, pipe: Any) -> Iterator[None]:
        """The hooks on the pipeline's UNet (and ControlNet) for the duration of one call; none
        when no job of the call uses AND."""
        if not self.run.composable:
            yield
            return
        handles = [
            pipe.unet.register_forward_pre_hook(self._widen, with_kwargs=True),
            pipe.unet.register_forward_hook(self._combine),
        ]
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is not None:
            handles.append(controlnet.register_forward_pre_hook(self._widen, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _widen(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        sample = args[0] if args else kwargs["sample"]
        layout = self._layout = self._make_layout(sample.shape[0])
        rows = sample.shape[0]
        # Positional: the latents and the timestep, as the pipelines pass them.
        args = tuple(_select(value, layout.source, rows) for value in args)
        kwargs = {
            key: _select(value, layout.source, rows) if key in _PER_ROW else value
            for key, value in kwargs.items()
        }
        kwargs["encoder_hidden_states"] = layout.hidden
        added = kwargs.get("added_cond_kwargs")
        if added is not None:
            # A new dict: SDXL's ControlNet pipeline hands the UNet the very same one. Its
            # rows (SDXL's time ids, image prompts' embeddings) widen with the batch.
            added = {key: _select(value, layout.source, rows) for key, value in added.items()}
            if layout.pooled is not None:
                added["text_embeds"] = layout.pooled
            kwargs["added_cond_kwargs"] = added
        return args, kwargs

    def _combine(self, module: Any, args: tuple[Any, ...], output: Any) -> Any:
        layout = self._layout
        if layout is None or not isinstance(output, tuple):
            raise TypeError("composable guidance expects the UNet called with return_dict=False")
        out = output[0]
        uncond = out[: layout.images]
        rows = []
        start = layout.images
        for image, weights in enumerate(layout.weights):
            conds = out[start : start + len(weights)]
            start += len(weights)
            if layout.plain[image]:
                rows.append(conds[0])
                continue
            combined = uncond[image]
            for cond, weight in zip(conds, weights, strict=True):
                combined = combined + (cond - uncond[image]) * weight
            if not layout.guided:
                # Without an unconditional pass diffusers uses this row as it is, so A1111's
                # whole formula goes here (at a CFG scale of 1 or less).
                combined = uncond[image] + (combined - uncond[image]) * self.cfg
            rows.append(combined)
        positive = torch.stack(rows)
        folded = torch.cat([uncond, positive]) if layout.guided else positive
        return (folded, *output[1:])

    def _make_layout(self, rows: int) -> _Layout:
        run = self.run
        images = sum(run.counts)
        if rows not in (images, 2 * images):
            raise ValueError(f"a UNet batch of {rows} rows for {images} images")
        guided = rows == 2 * images
        negatives: list[torch.Tensor] = []
        positives: list[torch.Tensor] = []
        negative_pooled: list[torch.Tensor] = []
        positive_pooled: list[torch.Tensor] = []
        source = list(range(images))
        weights: list[tuple[float, ...]] = []
        plain: list[bool] = []
        image = 0
        for cond, count in zip(run.current(), run.counts, strict=True):
            for _ in range(count):
                negatives.append(cond.negative.embeds)
                negative_pooled.extend(_pooled(cond.negative))
                for positive, _ in cond.positives:
                    positives.append(positive.embeds)
                    positive_pooled.extend(_pooled(positive))
                    source.append(images + image if guided else image)
                weights.append(tuple(weight for _, weight in cond.positives))
                plain.append(cond.plain)
                image += 1
        hidden = torch.cat(negatives + positives).to(device=run.device, dtype=run.dtype)
        pooled = None
        if run.family == "sdxl":
            pooled = torch.cat(negative_pooled + positive_pooled).to(run.device, run.dtype)
        index = torch.tensor(source, device=run.device)
        return _Layout(images, guided, index, hidden, pooled, tuple(weights), tuple(plain))


def _pooled(cond: Any) -> list[torch.Tensor]:
    return [] if cond.pooled is None else [cond.pooled]


def _select(value: Any, source: torch.Tensor, rows: int) -> Any:
    """A per-row tensor of diffusers' batch, widened; anything else (a scalar timestep) as it is."""
    if isinstance(value, list):  # image prompts' embeddings: one tensor per IP-Adapter
        return [_select(item, source, rows) for item in value]
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value.index_select(0, source.to(value.device))
    return value
