"""The few images posted when training ends: the new token at work, on the engine thread."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from engine.api.families import Family, family
from engine.api.jobs import EngineJob, TrainingJob, TrainingOutcome
from engine.api.params import GeneratedImage, GenerationParams
from engine.api.training_params import TrainingParams, sample_prompts
from engine.pipelines.flow import generate_flow_batch
from engine.pipelines.ip_adapter import detach
from engine.pipelines.loading import LoadedModel
from engine.pipelines.lora import adapters_for
from engine.pipelines.memory import freed_on_oom
from engine.pipelines.txt2img import generate_batch
from engine.training.trainer import train

SAMPLE_COUNT = 2
SAMPLE_STEPS = 20
SAMPLE_SAMPLER = "DPM++ 2M Karras"  # converges in 20 steps, as most A1111 users run it


def sample_params(
    training: TrainingParams, path: Path, width: int, height: int, row: Family | None = None
) -> list[GenerationParams]:
    """One job per sample prompt, with the LoRA's tag (or the embedding's token) in it, so
    the posted PNGs carry exactly what a member would type."""
    jobs = []
    for prompt in sample_prompts(training)[:SAMPLE_COUNT]:
        if training.method == "lora":
            prompt = f"{prompt} <lora:{training.name}:1>"
            adapters: dict[str, object] = {"loras": ((training.name, str(path), 1.0),)}
        else:
            adapters = {"embeddings": ((training.token, str(path)),)}
        jobs.append(
            GenerationParams(
                prompt=prompt,
                negative="",
                seed=training.seed,
                # SD 3 and FLUX: their own scheduler, steps and guidance.
                steps=row.steps if row is not None and row.flow else SAMPLE_STEPS,
                cfg=row.cfg if row is not None and row.flow else 7.0,
                width=width,
                height=height,
                sampler=row.sampler if row is not None and row.flow else SAMPLE_SAMPLER,
                count=1,
                model=training.model,
                **adapters,  # type: ignore[arg-type]
            )
        )
    return jobs


def make_samples(
    loaded: LoadedModel, training: TrainingParams, path: Path, noise: str
) -> list[GeneratedImage]:
    width, height = loaded.spec.size_default()
    row = family(loaded.family)
    made = sample_params(training, path, width, height, row)
    jobs = [EngineJob(0, params) for params in made]
    generate = generate_flow_batch if row.flow else generate_batch
    with adapters_for(loaded, jobs[0].params):
        results = generate(loaded, jobs, preview_interval=math.inf, noise=noise)
    return [image for result in results for image in result.images]


def train_and_sample(loaded: LoadedModel, job: TrainingJob, noise: str) -> TrainingOutcome:
    """EngineWorker.train on the engine thread: train, then the sample images."""
    detach(loaded)  # a UNet carrying image prompts' adapter wants their embeddings
    images = [job.inputs[key] for key in job.params.image_keys]
    with freed_on_oom(f"training job {job.job_id}"):
        result = train(
            loaded,
            job.params,
            images,
            workdir=Path(job.workdir),
            report=job.report,
            cancel=job.cancel,
            class_images_dir=Path(job.class_dir) if job.class_dir else None,
        )
        with torch.inference_mode():
            samples = make_samples(loaded, job.params, result.path, noise)
    return TrainingOutcome(result, samples)
