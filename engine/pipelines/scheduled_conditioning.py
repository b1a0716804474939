"""What the UNet reads at each model call: A1111's prompt schedules and AND, encoded.

A1111 encodes every text of a prompt's schedule (engine/api/prompt_schedule.py) and, at each
call of its CFG denoiser, picks for every image the entry whose end step is at least the
0-based call count (`reconstruct_cond_batch`); for AND it also keeps each sub-prompt with its
weight. This module holds those encodings per job and gives, call by call, the rows the
pipeline's `prompt_embeds` (and SDXL's pooled `add_text_embeds`) must hold. The step-end
callback (txt2img.StepReporter) swaps them in when they change; engine/pipelines/composable.py
runs the extra sub-prompts of AND. Engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.api.params import GenerationParams
from engine.api.prompt_schedule import entry_at, prompt_schedule, schedule_steps
from engine.api.prompt_schedule import split_and as split_and_weights
from engine.api.prompt_syntax import resolve_syntax
from engine.api.specs import ModelFamily
from engine.pipelines.prompts import CHUNK_LENGTH, Conditioning, PromptEncoder

# Samplers whose loop iterations are not A1111's model calls one for one (none now: DPM++
# SDE runs A1111's two-call step, as Heun does), by how many A1111 calls one iteration is.
_A1111_CALLS_PER_ITERATION: dict[str, int] = {}
_SEQUENCE = CHUNK_LENGTH + 2


@dataclass(frozen=True, slots=True)
class CondSchedule:
    """One text's schedule: end steps and the conditioning used up to each."""

    ends: tuple[int, ...]
    conds: tuple[Conditioning, ...]

    def entry(self, call: int) -> int:
        return entry_at(self.ends, call)


@dataclass(frozen=True, slots=True)
class CallConditioning:
    """One image's conditioning at one model call, all of one length: the negative and the
    positive sub-prompts with their AND weights."""

    negative: Conditioning
    positives: tuple[tuple[Conditioning, float], ...]

    @property
    def plain(self) -> bool:
        return len(self.positives) == 1 and self.positives[0][1] == 1.0


@dataclass(frozen=True, slots=True)
class JobPrompts:
    """A job's prompts as A1111 conditions on them, for a schedule of `steps` model calls."""

    positive: tuple[tuple[CondSchedule, float], ...]
    negative: CondSchedule
    zero_negative: bool  # SDXL's negative whose every text is empty is all zeros, as in A1111
    steps: int
    calls_per_iteration: int
    encoder: PromptEncoder

    @property
    def plain(self) -> bool:
        """One sub-prompt of weight 1: ordinary classifier-free guidance."""
        return len(self.positive) == 1 and self.positive[0][1] == 1.0

    def entries(self, call: int) -> tuple[int, ...]:
        """Which entry of each schedule is in use at A1111's model call `call`."""
        return (
            self.negative.entry(call),
            *(schedule.entry(call) for schedule, _ in self.positive),
        )

    def at(self, call: int) -> CallConditioning:
        positives = [(schedule.conds[schedule.entry(call)], w) for schedule, w in self.positive]
        if len(positives) > 1:
            # A1111's stack_conds: sub-prompts of one step padded with their last vector.
            longest = max(cond.chunks for cond, _ in positives)
            positives = [(_repeat_last(cond, longest), w) for cond, w in positives]
        first = positives[0][0]
        if self.zero_negative:
            negative = first.zeros()
        else:
            negative = self.negative.conds[self.negative.entry(call)]
        # Prompt and negative padded with empty chunks to one length (A1111's "pad prompt/
        # negative prompt" option), as encode_pair pads an unscheduled pair.
        chunks = max(first.chunks, negative.chunks)
        return CallConditioning(
            self.encoder.pad(negative, chunks),
            tuple((self.encoder.pad(cond, chunks), w) for cond, w in positives),
        )

    def lengths(self) -> tuple[int, ...]:
        """The chunk count at every call a pipeline can make: jobs share a pipeline call only
        when these agree, since padding one to another's length would change its image."""
        return tuple(self._chunks(call) for call in range(self.steps + 1))

    def _chunks(self, call: int) -> int:
        positive = max(s.conds[s.entry(call)].chunks for s, _ in self.positive)
        if self.zero_negative:
            return positive
        return max(positive, self.negative.conds[self.negative.entry(call)].chunks)

    def iteration_call(self, iteration: int) -> int:
        """A1111's model call for our pipeline loop iteration (0-based)."""
        return iteration * self.calls_per_iteration


def _repeat_last(cond: Conditioning, chunks: int) -> Conditioning:
    missing = (chunks - cond.chunks) * _SEQUENCE
    if missing <= 0:
        return cond
    last = cond.embeds[:, -1:].expand(-1, missing, -1)
    return Conditioning(torch.cat([cond.embeds, last], dim=1), cond.pooled)


class PromptScheduler:
    """Builds JobPrompts for one loaded pipeline, encoding each distinct text once."""

    def __init__(self, pipe: Any, family: ModelFamily, clip_skip: int) -> None:
        self.encoder = PromptEncoder(pipe, family, clip_skip)
        self.family = family
        self._cache: dict[tuple[str, str], Conditioning] = {}

    def job(self, prompt: str, negative: str, syntax: str, sampler: str, steps: int) -> JobPrompts:
        total = schedule_steps(sampler, steps)
        if resolve_syntax(prompt, syntax) == "subprompt":
            positive = [(self._fixed(prompt, "subprompt", total), 1.0)]
        else:
            parts = split_and_weights(prompt)
            positive = [(self._scheduled(part.text, total), part.weight) for part in parts]
        negative_schedule = (
            self._fixed(negative, "subprompt", total)
            if resolve_syntax(negative, syntax) == "subprompt"
            else self._scheduled(negative, total)
        )
        texts = [text for _, text in prompt_schedule(negative, total)]
        zero = self.family == "sdxl" and all(text == "" for text in texts)
        return JobPrompts(
            tuple(positive),
            negative_schedule,
            zero,
            total,
            _A1111_CALLS_PER_ITERATION.get(sampler, 1),
            self.encoder,
        )

    def _scheduled(self, text: str, total: int) -> CondSchedule:
        schedule = prompt_schedule(text, total)
        ends = tuple(end for end, _ in schedule)
        return CondSchedule(ends, tuple(self._encoded(entry, "a1111") for _, entry in schedule))

    def _fixed(self, text: str, syntax: str, total: int) -> CondSchedule:
        return CondSchedule((total,), (self._encoded(text, syntax),))

    def _encoded(self, text: str, syntax: str) -> Conditioning:
        key = (text, syntax)
        cond = self._cache.get(key)
        if cond is None:
            cond = self._cache[key] = self.encoder.encode(text, syntax)
        return cond


def encode_jobs(
    pipe: Any,
    family: ModelFamily,
    all_params: Sequence[GenerationParams],
    text: Callable[[str], str],
) -> list[JobPrompts]:
    """Each job's prompts scheduled and encoded; `text` makes a prompt what the text encoder
    reads (LoRA tags out, embeddings' tokens written out)."""
    schedulers: dict[int, PromptScheduler] = {}
    out = []
    for params in all_params:
        scheduler = schedulers.get(params.clip_skip)
        if scheduler is None:
            scheduler = schedulers[params.clip_skip] = PromptScheduler(
                pipe, family, params.clip_skip
            )
        prompts = scheduler.job(
            text(params.prompt),
            text(params.negative),
            params.prompt_syntax,
            params.sampler,
            params.steps,
        )
        out.append(prompts)
    return out


class RunConditioning:
    """The conditioning rows of one pipeline call (one row per image, jobs in order), at the
    model call the pipeline has reached: what the step-end callback and the AND hooks read."""

    def __init__(
        self,
        jobs: Sequence[JobPrompts],
        counts: Sequence[int],
        family: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.jobs = list(jobs)
        self.counts = list(counts)
        self.family = family
        self.device, self.dtype = device, dtype
        self.call = 0
        self._entries = self._entries_at(0)
        self._current = [job.at(0) for job in self.jobs]

    @property
    def composable(self) -> bool:
        """Whether some job needs A1111's AND guidance (engine/pipelines/composable.py)."""
        return any(not job.plain for job in self.jobs)

    def current(self) -> list[CallConditioning]:
        """Each job's conditioning at the current call."""
        return self._current

    def rows(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """One row per image: each job's tensor repeated for its count."""
        counts = self.counts
        rows = [t.expand(count, *t.shape[1:]) for t, count in zip(tensors, counts, strict=True)]
        return torch.cat(rows).to(device=self.device, dtype=self.dtype)

    def pipeline_embeds(self) -> dict[str, torch.Tensor]:
        """The embeddings a pipeline call starts from, as its keyword arguments."""
        conds = self.current()
        embeds = {
            "prompt_embeds": self.rows([cond.positives[0][0].embeds for cond in conds]),
            "negative_prompt_embeds": self.rows([cond.negative.embeds for cond in conds]),
        }
        if self.family == "sdxl":
            embeds["pooled_prompt_embeds"] = self.rows([_pooled(c.positives[0][0]) for c in conds])
            embeds["negative_pooled_prompt_embeds"] = self.rows(
                [_pooled(c.negative) for c in conds]
            )
        return embeds

    def after_step(self, pipe: Any, iteration: int) -> dict[str, torch.Tensor]:
        """The tensors to hand back from the step-end callback of loop iteration `iteration`:
        the next call's embeddings where any schedule moves to another entry, else nothing
        (so a prompt without edits runs exactly as before)."""
        self.call = self.jobs[0].iteration_call(iteration + 1)
        entries = self._entries_at(self.call)
        if entries == self._entries:
            return {}
        self._entries = entries
        self._current = [job.at(self.call) for job in self.jobs]
        embeds = self.pipeline_embeds()
        guided = bool(pipe.do_classifier_free_guidance)

        def joined(negative: str, positive: str) -> torch.Tensor:
            if not guided:
                return embeds[positive]
            # After CFG the pipeline holds [negative rows; positive rows] (diffusers' layout).
            return torch.cat([embeds[negative], embeds[positive]])

        out = {"prompt_embeds": joined("negative_prompt_embeds", "prompt_embeds")}
        if self.family == "sdxl":
            out["add_text_embeds"] = joined("negative_pooled_prompt_embeds", "pooled_prompt_embeds")
        return out

    def _entries_at(self, call: int) -> tuple[tuple[int, ...], ...]:
        return tuple(job.entries(call) for job in self.jobs)


def _pooled(cond: Conditioning) -> torch.Tensor:
    if cond.pooled is None:
        raise ValueError("an SDXL prompt was encoded without its pooled embedding")
    return cond.pooled
