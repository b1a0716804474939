"""/train on SD 3 and FLUX.1 in the engine: a DreamBooth LoRA on the tiny random transformers,
flow-matching as diffusers' train_dreambooth_lora_sd3.py/_flux.py, through the same trainer,
loop and checkpoints as SD; the file loads back through the LoRA loader /dream uses, and its
copy for Forge and ComfyUI keeps diffusers' keys."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.api.errors import EngineError, JobCancelled
from engine.api.families import ModelFamily
from engine.api.jobs import EngineJob
from engine.api.lora_files import LoraFileError, a1111_copy, check_family, read_header
from engine.api.params import GenerationParams, InvalidParams
from engine.api.specs import ModelSpec
from engine.api.training_params import TrainingParams, TrainingProgress, check_training
from engine.pipelines.batches import run_batch
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.tiny_families import save_tiny_family
from engine.training.samples import make_samples
from engine.training.trainer import train
from engine.worker import EngineConfig
from tests.test_image_modes import pixels
from tests.test_training import params

CPU = torch.device("cpu")
CFG: dict[ModelFamily, float] = {"flux": 3.5, "sd3": 4.0}


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    rng = np.random.default_rng(0)
    result = []
    for _ in range(3):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        result.append(buffer.getvalue())
    return result


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow-models")
    return {family: save_tiny_family(root / f"tiny-{family}", family) for family in CFG}


def loaded_model(folders: dict[str, Path], family: ModelFamily) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(folders[family])), CPU, torch.float32)


def flow_training(family: ModelFamily, **overrides: Any) -> TrainingParams:
    # A learning rate far above the real default: a visible change in 3 steps.
    return params(resolution=64, learning_rate=5e-2, **overrides)


def run(loaded: LoadedModel, p: TrainingParams, images: list[bytes], workdir: Path, **kw: Any):
    kw.setdefault("report", lambda progress: None)
    kw.setdefault("cancel", threading.Event())
    return train(loaded, p, images, workdir=workdir, **kw)


def dream(loaded: LoadedModel, family: ModelFamily, lora: Path | None, weight: float) -> bytes:
    """/dream's engine path: `<lora:rex:weight>` resolved to the file, as the bot does."""
    loras = () if lora is None else (("rex", str(lora), weight),)
    prompt = "a photo of zwxrex dog" + ("" if lora is None else f" <lora:rex:{weight:g}>")
    job = GenerationParams(
        prompt=prompt,
        negative="",
        seed=3,
        steps=3,
        cfg=CFG[family],
        width=64,
        height=64,
        sampler="Euler",
        count=1,
        model="tiny",
        loras=loras,
    )
    [result] = run_batch(loaded, EngineConfig({}, device="cpu"), [EngineJob(1, job)])
    return result.images[0].png


def transformer_state(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.pipe.transformer.state_dict().items()}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_flow_lora_trains_changes_the_picture_and_loads_back_by_tag(
    folders, photos, tmp_path, family
):
    loaded = loaded_model(folders, family)
    base = dream(loaded, family, None, 0.0)
    before = transformer_state(loaded)
    flags = [p.requires_grad for p in loaded.pipe.transformer.parameters()]
    progress: list[TrainingProgress] = []
    result = run(loaded, flow_training(family), photos, tmp_path, report=progress.append)

    assert [update.step for update in progress] == [1, 2, 3]
    assert np.isfinite(result.final_loss)
    after = transformer_state(loaded)  # the model is as it was: no adapter, same weights
    assert after.keys() == before.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert not getattr(loaded.pipe.transformer, "peft_config", None)
    assert [p.requires_grad for p in loaded.pipe.transformer.parameters()] == flags

    tensors = load_file(str(result.path))
    assert tensors
    assert all(key.startswith("transformer.") for key in tensors)
    assert {key.split(".")[-3] for key in tensors} <= {"to_k", "to_q", "to_v", "0"}

    trained = dream(loaded, family, result.path, 1.0)
    assert np.abs(pixels(trained) - pixels(base)).max() > 2  # the LoRA changes the output
    assert np.abs(pixels(dream(loaded, family, result.path, 0.0)) - pixels(base)).max() <= 1
    assert np.array_equal(pixels(dream(loaded, family, None, 0.0)), pixels(base))


def test_a_flux_lora_resumed_from_its_checkpoint_is_the_uninterrupted_one(
    folders, photos, tmp_path
):
    loaded = loaded_model(folders, "flux")
    p = flow_training("flux", steps=4)
    whole = run(loaded, p, photos, tmp_path / "whole")
    cancel = threading.Event()

    def crash_after_step_two(progress: TrainingProgress) -> None:
        if progress.step == 2:
            cancel.set()

    with pytest.raises(JobCancelled):
        run(loaded, p, photos, tmp_path / "parts", report=crash_after_step_two, cancel=cancel)
    resumed = run(loaded, p, photos, tmp_path / "parts")
    assert (whole.resumed_from, resumed.resumed_from) == (0, 2)
    expected, actual = load_file(str(whole.path)), load_file(str(resumed.path))
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_the_copy_for_forge_and_comfyui_keeps_diffusers_keys(folders, photos, tmp_path):
    loaded = loaded_model(folders, "sd3")
    result = run(loaded, flow_training("sd3", steps=1), photos, tmp_path)
    copy = load_file(str(a1111_copy(result.path)))
    own = load_file(str(result.path))
    assert copy.keys() == own.keys()
    assert all(value.dtype == torch.float16 for value in copy.values())
    header = read_header(a1111_copy(result.path))
    assert header.metadata["ss_base_model_version"] == "sd3"
    # A FLUX or SD 3 LoRA is refused on an SD 1.x model by what its file says.
    with pytest.raises(LoraFileError, match=r"is for SD 3\.x models"):
        check_family(read_header(result.path), "sd1", "tiny")
    check_family(read_header(result.path), "sd3", "sd35")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"method": "embedding"},
            "Textual inversion is not available for FLUX.1 dev models (their T5 encoder reads "
            "no embeddings here); train a LoRA instead.",
        ),
        (
            {"prior_preservation": True},
            "Prior preservation is not available for FLUX.1 dev models here; train without "
            "class images.",
        ),
    ],
)
def test_what_flux_cannot_train_is_refused_in_one_sentence(
    folders, photos, tmp_path, overrides, message
):
    p = flow_training("flux", **overrides)
    with pytest.raises(InvalidParams) as refused:
        check_training(p, _limits(), "flux")
    assert str(refused.value) == message
    loaded = loaded_model(folders, "flux")  # the engine says the same for a family it found
    with pytest.raises(EngineError, match=message.split(" (")[0].split(";")[0]):
        run(loaded, p, photos, tmp_path, class_images_dir=tmp_path / "class")
    assert not list(tmp_path.glob("*.safetensors"))


def _limits() -> Any:
    from engine.api.training_params import TrainingLimits

    return TrainingLimits()


def test_the_samples_after_a_flux_training_use_its_tag_and_flux_defaults(folders, photos, tmp_path):
    spec = ModelSpec("tiny", str(folders["flux"]), default_size=(64, 64))
    loaded = load_model(spec, CPU, torch.float32)
    result = run(loaded, flow_training("flux", steps=1), photos, tmp_path)
    with torch.inference_mode():
        samples = make_samples(loaded, flow_training("flux", steps=1), result.path, "cpu")
    assert len(samples) == 2
    for sample in samples:
        assert "<lora:rex:1>" in sample.infotext
        assert "Sampler: Euler" in sample.infotext
        assert "Distilled CFG Scale: 3.5" in sample.infotext
