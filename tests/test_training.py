"""/train in the engine: LoRA and textual inversion on the tiny real models."""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.api.errors import EngineError, JobCancelled
from engine.api.hashes import FileHashCache
from engine.api.lora_files import a1111_copy, lora_family, read_header
from engine.api.specs import ModelSpec
from engine.api.training_params import TrainingParams, TrainingProgress, make_training_params
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.lora import AdapterCache, read_metadata
from engine.training.methods import LORA_TARGETS
from engine.training.trainer import CHECKPOINT_FILE, train
from tests.kohya_files import addnet_hash
from tests.test_lora import render

CPU = torch.device("cpu")


@pytest.fixture
def loaded(tiny_sd1: Path) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sd1)), CPU, torch.float32)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    rng = np.random.default_rng(0)
    result = []
    for _ in range(3):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        result.append(buffer.getvalue())
    return result


def params(**overrides: Any) -> TrainingParams:
    values: dict[str, Any] = dict(
        name="rex",
        model="tiny",
        resolution=64,
        seed=1,
        class_word="dog",
        steps=3,
        # far above the real default: a visible change in 3 steps of a random model
        learning_rate=1e-2,
        checkpoint_every=2,
    )
    values.update(overrides)
    return make_training_params(**values)


def snapshot(loaded: LoadedModel) -> dict[str, Any]:
    """Everything training must leave as it found it."""
    pipe: Any = loaded.pipe
    state: dict[str, Any] = {}
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name)
        for key, value in module.state_dict().items():
            state[f"{name}.{key}"] = value.clone()
        state[f"{name}.grad"] = [p.requires_grad for p in module.parameters()]
        state[f"{name}.peft"] = getattr(module, "peft_config", None)
    state["scheduler"] = pipe.scheduler
    state["tokens"] = len(pipe.tokenizer)
    state["hooks"] = len(pipe.text_encoder.get_input_embeddings()._forward_hooks)
    return state


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key
        else:
            assert value == after[key], key


def run(loaded: LoadedModel, p: TrainingParams, photos: list[bytes], workdir: Path, **kw: Any):
    kw.setdefault("report", lambda progress: None)
    kw.setdefault("cancel", threading.Event())
    return train(loaded, p, photos, workdir=workdir, **kw)


def with_checkpoint_weights(loaded: LoadedModel, p: TrainingParams, workdir: Path):
    """The trained adapter in memory, as training left it (from its final checkpoint)."""
    from peft import LoraConfig

    unet: Any = loaded.pipe.unet
    config = LoraConfig(
        r=p.rank, lora_alpha=p.rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS
    )
    unet.add_adapter(config, adapter_name="memory")
    trained = torch.load(workdir / CHECKPOINT_FILE, weights_only=True)["trainable"]
    lora = [param for name, param in unet.named_parameters() if ".lora_" in name]
    with torch.no_grad():
        for param, value in zip(lora, trained, strict=True):
            param.copy_(value)
    return unet


def test_lora_changes_the_token_and_its_file_reproduces_the_adapter(loaded, photos, tmp_path):
    p = params()
    base = render(loaded, p.instance_prompt)
    before = snapshot(loaded)
    progress: list[TrainingProgress] = []
    result = run(loaded, p, photos, tmp_path, report=progress.append)

    assert [update.step for update in progress] == [1, 2, 3]
    assert progress[-1].seconds_left == 0
    assert progress[-1].loss == result.final_loss
    assert_same(before, snapshot(loaded))
    assert np.array_equal(render(loaded, p.instance_prompt), base)

    metadata = read_metadata(result.path)
    assert result.path == tmp_path / "rex.safetensors"
    assert metadata["sdbot.token"] == "zwxrex"
    assert metadata["sdbot.class_word"] == "dog"
    assert metadata["sdbot.rank"] == "8"
    assert metadata["sdbot.images"] == "3"
    assert metadata["sdbot.base_model"] == "tiny"
    assert metadata["sdbot.method"] == "lora"
    assert all(key.startswith("unet.") for key in load_file(str(result.path)))

    unet = with_checkpoint_weights(loaded, p, tmp_path)
    in_memory = render(loaded, p.instance_prompt)
    unet.unload_lora()
    assert np.abs(in_memory - base).max() > 1e-3  # a few steps changed the image

    cache = AdapterCache(loaded.pipe)
    with cache.applied([(result.path, 1.0)]):
        from_file = render(loaded, p.instance_prompt)
    with cache.applied([(result.path, 0.0)]):
        at_zero = render(loaded, p.instance_prompt)
    np.testing.assert_allclose(from_file, in_memory, atol=1e-6)
    assert np.array_equal(at_zero, base)
    assert np.array_equal(render(loaded, p.instance_prompt), base)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(loaded, photos, tmp_path):
    p = params(steps=4)
    whole = run(loaded, p, photos, tmp_path / "whole")
    before = snapshot(loaded)
    cancel = threading.Event()

    def crash_after_step_two(progress: TrainingProgress) -> None:
        if progress.step == 2:
            cancel.set()

    with pytest.raises(JobCancelled):
        run(loaded, p, photos, tmp_path / "parts", report=crash_after_step_two, cancel=cancel)
    assert_same(before, snapshot(loaded))  # cancelled: the pipeline is as it was
    assert not (tmp_path / "parts" / "rex.safetensors").exists()

    resumed = run(loaded, p, photos, tmp_path / "parts")
    assert (whole.resumed_from, resumed.resumed_from) == (0, 2)
    expected, actual = load_file(str(whole.path)), load_file(str(resumed.path))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert resumed.final_loss == whole.final_loss


def test_a_checkpoint_of_another_job_is_not_resumed(loaded, photos, tmp_path):
    run(loaded, params(steps=2), photos, tmp_path)
    other = run(loaded, params(steps=2, learning_rate=5e-3), photos, tmp_path)
    assert other.resumed_from == 0
    finished = run(loaded, params(steps=2, learning_rate=5e-3), photos, tmp_path)
    assert finished.resumed_from == 2  # done already: written again, nothing retrained


def test_an_embedding_trains_one_vector_and_is_used_by_its_token(loaded, photos, tmp_path):
    p = params(method="embedding", token="zwxrex", steps=3)
    pipe: Any = loaded.pipe
    before = snapshot(loaded)
    prompt = "a photo of zwxrex"
    base = render(loaded, prompt)
    result = run(loaded, p, photos, tmp_path)
    assert_same(before, snapshot(loaded))  # the table, the tokenizer: all untouched

    vectors = load_file(str(result.path))
    assert list(vectors) == ["zwxrex"]
    assert vectors["zwxrex"].shape == (1, 32)
    table = pipe.text_encoder.get_input_embeddings().weight
    ids = pipe.tokenizer("dog", add_special_tokens=False)["input_ids"]
    start = table[ids].mean(dim=0)
    assert not torch.allclose(vectors["zwxrex"][0], start)  # it learned something
    assert read_metadata(result.path)["sdbot.method"] == "embedding"

    cache = AdapterCache(pipe)
    with cache.applied(embeddings=[(result.path, "zwxrex")]):
        used = render(loaded, prompt)
    assert np.abs(used - base).max() > 1e-4
    assert np.array_equal(render(loaded, prompt), base)
    assert_same(before, snapshot(loaded))


def test_prior_preservation_makes_class_images_once(loaded, photos, tmp_path):
    p = params(prior_preservation=True, class_images=2, class_image_steps=2, steps=2)
    classes = tmp_path / "classes"
    progress: list[TrainingProgress] = []
    before = snapshot(loaded)
    run(loaded, p, photos, tmp_path / "a", class_images_dir=classes, report=progress.append)
    assert_same(before, snapshot(loaded))  # its own scheduler for class images, put back
    files = sorted(classes.glob("*.png"))
    assert [f.name for f in files] == ["r64-s2-0000.png", "r64-s2-0001.png"]
    assert {u.phase for u in progress} == {"class images", "training"}
    stamps = [f.stat().st_mtime_ns for f in files]

    progress.clear()
    run(loaded, replace(p, name="max"), photos, tmp_path / "b", class_images_dir=classes,
        report=progress.append)  # fmt: skip
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused from the cache
    assert {u.phase for u in progress} == {"training"}


def test_sdxl_lora_trains_and_loads(tiny_sdxl, photos, tmp_path):
    loaded = load_model(ModelSpec("xl", str(tiny_sdxl)), CPU, torch.float32)
    p = params(model="xl", steps=2)
    base = render(loaded, p.instance_prompt)
    before = snapshot(loaded)
    result = run(loaded, p, photos, tmp_path)
    assert_same(before, snapshot(loaded))
    with AdapterCache(loaded.pipe).applied([(result.path, 1.0)]):
        assert np.abs(render(loaded, p.instance_prompt) - base).max() > 1e-4


def test_the_engine_refuses_what_it_cannot_train(loaded, photos, tmp_path):
    with pytest.raises(EngineError, match="safe file name"):
        run(loaded, replace(params(), name="../../x"), photos, tmp_path)
    with pytest.raises(EngineError, match="folder for class images"):
        run(loaded, params(prior_preservation=True), photos, tmp_path)
    assert not any(tmp_path.iterdir())


def test_training_unloads_cached_loras_and_the_cache_recovers(loaded, photos, tmp_path):
    first = run(loaded, params(steps=1), photos, tmp_path / "first")
    cache = AdapterCache(loaded.pipe)
    with cache.applied([(first.path, 1.0)]):
        before = render(loaded, "a cat")
    run(loaded, params(name="max", steps=1), photos, tmp_path / "second")
    assert not getattr(loaded.pipe.unet, "peft_config", None)
    with cache.applied([(first.path, 1.0)]):
        assert np.allclose(render(loaded, "a cat"), before, atol=1e-6)
    assert cache.loads == 2


def test_an_embedding_token_the_model_knows_is_refused(loaded, photos, tmp_path):
    loaded.pipe.tokenizer.add_tokens(["zwxknown"])  # a fresh fixture per test: no clean-up
    with pytest.raises(EngineError, match="already a word"):
        run(loaded, params(method="embedding", token="zwxknown"), photos, tmp_path)


# -- The copies for A1111, Forge and ComfyUI ------------------------------------------------


def test_a_loras_a1111_copy_loads_through_diffusers_kohya_conversion(loaded, photos, tmp_path):
    p = params()
    base = render(loaded, p.instance_prompt)
    result = run(loaded, p, photos, tmp_path)
    copy = a1111_copy(result.path)
    assert copy.name == "rex.a1111.safetensors"
    state = load_file(str(copy))
    assert all(key.startswith("lora_unet_") for key in state)
    assert {key.split(".", 1)[1] for key in state} == {
        "lora_down.weight",
        "lora_up.weight",
        "alpha",
    }
    assert {value.dtype for value in state.values()} == {torch.float16}
    assert {float(v) for k, v in state.items() if k.endswith(".alpha")} == {8.0}
    metadata = read_metadata(copy)
    assert metadata["ss_network_dim"] == metadata["ss_network_alpha"] == "8"
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_output_name"] == "rex"
    # Images made here name the copy's A1111 hash: the file that exists outside this bot.
    assert FileHashCache().lora_short_hash(result.path) == addnet_hash(copy)

    unet = with_checkpoint_weights(loaded, p, tmp_path)  # the peft original
    peft_original = render(loaded, p.instance_prompt)
    with torch.no_grad():  # as the copy stores it: fp16, kohya's usual precision
        for name, param in unet.named_parameters():
            if ".lora_" in name:
                param.copy_(param.half().float())
    peft_in_fp16 = render(loaded, p.instance_prompt)
    unet.unload_lora()

    loaded.pipe.load_lora_weights(str(copy), adapter_name="a1111")
    from_copy = render(loaded, p.instance_prompt)
    loaded.pipe.unload_lora_weights()
    np.testing.assert_allclose(from_copy, peft_in_fp16, atol=1e-5)
    np.testing.assert_allclose(from_copy, peft_original, atol=2e-3)
    assert np.abs(from_copy - base).max() > 1e-3


def test_an_embeddings_a1111_copy_is_kohyas_emb_params(loaded, photos, tmp_path):
    p = params(method="embedding", token="zwxrex", steps=3)
    prompt = "a photo of zwxrex"
    result = run(loaded, p, photos, tmp_path)
    copy = a1111_copy(result.path)
    [(key, vectors)] = load_file(str(copy)).items()
    assert (key, vectors.shape, vectors.dtype) == ("emb_params", (1, 32), torch.float16)
    original = load_file(str(result.path))["zwxrex"]
    torch.testing.assert_close(vectors.float(), original, atol=1e-3, rtol=1e-3)
    assert (
        FileHashCache().embedding_short_hash(result.path)
        == (hashlib.sha256(copy.read_bytes()).hexdigest()[:12])
    )
    cache = AdapterCache(loaded.pipe)
    with cache.applied(embeddings=[(result.path, "zwxrex")]):
        ours = render(loaded, prompt)
    with cache.applied(embeddings=[(copy, "zwxrex")]):  # diffusers reads it as A1111 does
        theirs = render(loaded, prompt)
    np.testing.assert_allclose(theirs, ours, atol=2e-3)


def test_an_sdxl_loras_copy_loads_and_says_it_is_sdxl(tiny_sdxl, photos, tmp_path):
    loaded = load_model(ModelSpec("xl", str(tiny_sdxl)), CPU, torch.float32)
    p = params(model="xl", steps=2)
    result = run(loaded, p, photos, tmp_path)
    copy = a1111_copy(result.path)
    assert read_metadata(copy)["ss_base_model_version"] == "sdxl_base_v1-0"
    assert lora_family(read_header(copy)) == "sdxl"
    cache = AdapterCache(loaded.pipe)
    with cache.applied([(result.path, 1.0)]):
        ours = render(loaded, p.instance_prompt)
    with cache.applied([(copy, 1.0)]):
        theirs = render(loaded, p.instance_prompt)
    np.testing.assert_allclose(theirs, ours, atol=2e-3)
