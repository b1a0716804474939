"""LoRAs and embeddings at generation time: prompt tags, applying files, infotext."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.api.errors import EngineError
from engine.api.hashes import FileHashCache, embedding_infotext, lora_hashes, lora_infotext
from engine.api.infotext import unquote
from engine.api.lora_files import (
    LoraFileError,
    check_family,
    check_loadable,
    lora_family,
    read_header,
)
from engine.api.lora_tags import merged_weights, parse_lora_tags
from engine.api.params import InvalidParams
from engine.api.specs import ModelSpec
from engine.pipelines.loading import LoadedModel, load_model
from engine.pipelines.lora import AdapterCache
from engine.pipelines.prompts import PromptEncoder
from engine.training.methods import LORA_TARGETS, write_safetensors
from tests.kohya_files import addnet_hash, kohya_state, write_kohya

CPU = torch.device("cpu")


@pytest.fixture
def loaded(tiny_sd1: Path) -> LoadedModel:
    return load_model(ModelSpec("tiny", str(tiny_sd1)), CPU, torch.float32)


def make_lora(loaded: LoadedModel, path: Path, seed: int) -> Path:
    """A random LoRA written by diffusers' own writer, without training one."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe: Any = loaded.pipe
    config = LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pipe.unet.add_adapter(config, adapter_name="maker")
        with torch.no_grad():
            for name, param in pipe.unet.named_parameters():
                if ".lora_B" in name:
                    param.normal_(std=0.5)
    state = convert_state_dict_to_diffusers(
        get_peft_model_state_dict(pipe.unet, adapter_name="maker")
    )
    pipe.unet.unload_lora()
    pipe.unet._hf_peft_config_loaded = False
    type(pipe).save_lora_weights(path.parent, unet_lora_layers=state, weight_name=path.name)
    return path


def render(loaded: LoadedModel, prompt: str = "a cat") -> np.ndarray:
    pipe: Any = loaded.pipe
    return pipe(
        prompt=prompt,
        width=64,
        height=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


# -- Tags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "stripped", "loras"),
    [
        ("a cat <lora:rex:0.8>", "a cat", [("rex", 0.8)]),
        ("<lora:rex> a cat", "a cat", [("rex", 1.0)]),
        ("a cat, <lora:rex:0.5>, in a hat", "a cat, in a hat", [("rex", 0.5)]),
        ("a cat,<lora:a:1>,<lora:b:-0.3>, hat", "a cat, hat", [("a", 1.0), ("b", -0.3)]),
        ("a (cat:1.2) <LORA:Rex:.5>", "a (cat:1.2)", [("Rex", 0.5)]),
        ("a cat <lyco:rex:0.7>", "a cat", [("rex", 0.7)]),
        ("a cat <lora:rex:0.8:0.2>", "a cat", [("rex", 0.8)]),  # UNet multiplier ignored
        ("a cat <hypernet:x:1>", "a cat <hypernet:x:1>", []),
        ("line one\n<lora:rex:1>\nline two", "line one\n\nline two", [("rex", 1.0)]),
        ("no tags, here", "no tags, here", []),
    ],
)
def test_parse_lora_tags(prompt, stripped, loras):
    assert parse_lora_tags(prompt) == (stripped, loras)


@pytest.mark.parametrize("prompt", ["<lora:rex:abc>", "<lora::1>", "<lora:rex:9>", "<lora:x:nan>"])
def test_bad_lora_tags_get_a_clear_answer(prompt):
    with pytest.raises(InvalidParams):
        parse_lora_tags(prompt)


def test_a_lora_named_twice_adds_its_weights():
    assert merged_weights([("a", 0.5), ("b", 1.0), ("a", 0.25)]) == [("a", 0.75), ("b", 1.0)]


# -- Infotext -------------------------------------------------------------------------------


def test_lora_hashes_are_a1111s(tmp_path):
    tensors = {"unet.x.lora_A.weight": torch.ones(2, 2)}
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain), metadata={"format": "pt"})
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, tensors, {"format": "pt", "sdbot.name": "ours"})
    # A1111/kohya's "addnet" hash: the sha256 of the tensor data after the JSON header
    data = plain.read_bytes()
    header = int.from_bytes(data[:8], "little")
    expected = hashlib.sha256(data[8 + header :]).hexdigest()[:12]
    hashes = FileHashCache()
    assert hashes.lora_short_hash(plain) == expected
    assert hashes.lora_short_hash(ours) == expected  # its header does not change it
    line = lora_infotext([("rex", plain), ("my:dog,2", ours)])
    assert line == f'Lora hashes: "rex: {expected}, mydog2: {expected}"'
    assert unquote(line.removeprefix("Lora hashes: ")) == f"rex: {expected}, mydog2: {expected}"
    assert lora_infotext([]) == ""
    assert lora_hashes([("rex", plain)]) == f"rex: {expected}"  # for build_infotext's extra
    whole = hashlib.sha256(plain.read_bytes()).hexdigest()[:12]
    assert embedding_infotext([("zwxrex", plain)]) == f'TI hashes: "zwxrex: {whole}"'


# -- Applying LoRAs -------------------------------------------------------------------------


def test_weight_zero_is_the_base_image_and_adapters_are_off_afterwards(loaded, tmp_path):
    lora = make_lora(loaded, tmp_path / "a.safetensors", seed=1)
    base = render(loaded)
    cache = AdapterCache(loaded.pipe)
    with cache.applied([(lora, 0.0)]):
        assert np.array_equal(render(loaded), base)
    with cache.applied([(lora, 1.0)]):
        full = render(loaded)
    with cache.applied([(lora, 0.5)]):
        half = render(loaded)
    assert np.abs(full - base).max() > 1e-3
    assert np.abs(half - full).max() > 1e-4
    assert np.array_equal(render(loaded), base)
    assert cache.loads == 1  # loaded once, reused by file version


def test_two_loras_at_once_and_the_cache_keeps_a_few(loaded, tmp_path):
    first = make_lora(loaded, tmp_path / "a.safetensors", seed=1)
    second = make_lora(loaded, tmp_path / "b.safetensors", seed=2)
    cache = AdapterCache(loaded.pipe, capacity=1)
    with cache.applied([(first, 1.0)]):
        only_first = render(loaded)
    with cache.applied([(first, 1.0), (second, 1.0)]):  # both needed now: none evicted
        both = render(loaded)
    assert np.abs(both - only_first).max() > 1e-4
    with cache.applied([(second, 1.0)]):
        pass
    adapters = loaded.pipe.get_list_adapters()["unet"]
    assert len(adapters) == 1  # the least recently used one was unloaded
    with cache.applied([(first, 1.0)]):
        assert np.allclose(render(loaded), only_first, atol=1e-6)
    assert cache.loads == 3


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_a_changed_file_is_reloaded_and_missing_adapters_too(loaded, tmp_path):
    lora = make_lora(loaded, tmp_path / "a.safetensors", seed=1)
    cache = AdapterCache(loaded.pipe)
    with cache.applied([(lora, 1.0)]):
        old = render(loaded)
    make_lora(loaded, lora, seed=5)
    stat = lora.stat()
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with cache.applied([(lora, 1.0)]):
        new = render(loaded)
    assert np.abs(new - old).max() > 1e-4
    assert cache.loads == 2
    loaded.pipe.unload_lora_weights()  # as training does
    with cache.applied([(lora, 1.0)]):
        assert np.allclose(render(loaded), new, atol=1e-6)
    assert cache.loads == 3


def test_clear_leaves_the_unet_as_loaded(loaded, tmp_path):
    lora = make_lora(loaded, tmp_path / "a.safetensors", seed=1)
    before = {key: value.clone() for key, value in loaded.pipe.unet.state_dict().items()}
    cache = AdapterCache(loaded.pipe)
    with cache.applied([(lora, 1.0)]):
        pass
    cache.clear()
    after = loaded.pipe.unet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert not getattr(loaded.pipe.unet, "peft_config", None)


def test_a_broken_lora_file_is_an_engine_error(loaded, tmp_path):
    broken = tmp_path / "broken.safetensors"
    save_file({"nonsense": torch.ones(1)}, str(broken))
    base = render(loaded)
    applying = AdapterCache(loaded.pipe).applied([(broken, 1.0)])
    with pytest.raises(EngineError, match="LoRA broken could not be loaded"), applying:
        pass
    assert np.array_equal(render(loaded), base)


# -- Embeddings -----------------------------------------------------------------------------


def test_multi_vector_embeddings_reach_our_prompt_encoder(loaded, tmp_path):
    pipe: Any = loaded.pipe
    path = tmp_path / "zwxrex.safetensors"
    save_file({"zwxrex": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))}, str(path))
    encoder = PromptEncoder(pipe, loaded.family)
    plain_ids = pipe.tokenizer("a zwxrex dog", add_special_tokens=False)["input_ids"]
    table = pipe.text_encoder.get_input_embeddings()
    weights = table.weight.data.clone()
    base = encoder.encode("a zwxrex dog").embeds

    with AdapterCache(pipe).applied(embeddings=[(path, "zwxrex")]) as applied:
        prompt = applied.expand("a (zwxrex:1.2) dog")
        assert prompt == "a (zwxrex zwxrex_1:1.2) dog"
        ids = pipe.tokenizer(applied.expand("a zwxrex dog"), add_special_tokens=False)
        new_ids = [i for i in ids["input_ids"] if i >= 520]  # the tiny vocabulary has 520
        assert len(new_ids) == 2  # both vectors, as two added tokens
        used = PromptEncoder(pipe, loaded.family).encode(applied.expand("a zwxrex dog")).embeds
        assert not torch.allclose(used, base)

    assert pipe.tokenizer("a zwxrex dog", add_special_tokens=False)["input_ids"] == plain_ids
    assert pipe.text_encoder.get_input_embeddings() is table
    assert torch.equal(table.weight.data, weights)
    assert table.num_embeddings == 1000
    assert pipe.text_encoder.config.vocab_size == 1000
    assert torch.equal(PromptEncoder(pipe, loaded.family).encode("a zwxrex dog").embeds, base)


def test_a_broken_embedding_is_an_engine_error(loaded, tmp_path):
    broken = tmp_path / "bad.safetensors"
    save_file({"a": torch.ones(1, 7), "b": torch.ones(1, 7)}, str(broken))
    applying = AdapterCache(loaded.pipe).applied(embeddings=[(broken, "zwxbad")])
    with pytest.raises(EngineError, match="Embedding zwxbad"), applying:
        pass
    assert len(loaded.pipe.tokenizer) == 520


def test_sdxl_embeddings_load_into_both_encoders(tiny_sdxl, tmp_path):
    loaded = load_model(ModelSpec("xl", str(tiny_sdxl)), CPU, torch.float32)
    pipe: Any = loaded.pipe
    path = tmp_path / "zwxrex.safetensors"
    generator = torch.Generator().manual_seed(0)
    save_file(
        {
            "clip_l": torch.randn(2, 32, generator=generator),
            "clip_g": torch.randn(2, 64, generator=generator),
        },
        str(path),
    )
    base = render(loaded, "a zwxrex dog")
    with AdapterCache(pipe).applied(embeddings=[(path, "zwxrex")]) as applied:
        prompt = applied.expand("a zwxrex dog")
        assert prompt == "a zwxrex zwxrex_1 dog"
        for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
            assert tokenizer.convert_tokens_to_ids(["zwxrex", "zwxrex_1"]) == [520, 521]
        assert np.abs(render(loaded, prompt) - base).max() > 1e-4
    assert len(pipe.tokenizer) == len(pipe.tokenizer_2) == 520
    assert np.array_equal(render(loaded, "a zwxrex dog"), base)


# -- Files as members download them (kohya / A1111, LyCORIS) -------------------------------


def test_a_kohya_lora_with_locon_and_text_encoder_layers_applies(loaded, tmp_path):
    path = write_kohya(tmp_path / "detail.safetensors", kohya_state(loaded.pipe, locon=True))
    header = read_header(path)
    check_loadable(header)
    assert header.metadata["ss_output_name"] == "detail"
    base = render(loaded)
    cache = AdapterCache(loaded.pipe)
    with cache.applied([(path, 0.8)], names={path: "detail"}):
        used = render(loaded)
        assert set(loaded.pipe.get_list_adapters()) == {"unet", "text_encoder"}
    with cache.applied([(path, 0.0)]):
        assert np.array_equal(render(loaded), base)
    assert np.abs(used - base).max() > 1e-3
    assert np.array_equal(render(loaded), base)
    assert FileHashCache().lora_short_hash(path) == addnet_hash(path)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
@pytest.mark.filterwarnings("ignore:Adapter .* was active which is now deleted")
def test_an_sdxl_lora_on_an_sd1_model_fails_in_one_sentence(loaded, tiny_sdxl, tmp_path):
    xl = load_model(ModelSpec("xl", str(tiny_sdxl)), CPU, torch.float32)
    # Without metadata and with unet layers only: nothing tells its family before loading.
    path = write_kohya(tmp_path / "xl.safetensors", kohya_state(xl.pipe, text=False))
    assert lora_family(read_header(path)) is None
    good = make_lora(loaded, tmp_path / "good.safetensors", seed=1)
    base = render(loaded)
    cache = AdapterCache(loaded.pipe)
    applying = cache.applied([(good, 1.0), (path, 1.0)], names={path: "xlstyle"})
    with pytest.raises(EngineError) as failed, applying:
        pass
    assert failed.value.user_message == (
        "The LoRA xlstyle could not be loaded: it was made for another kind of model "
        "(SD 1.x, SD 2.x and SDXL do not mix)."
    )
    assert np.array_equal(render(loaded), base), "the LoRA loaded before it is off too"
    # A file that says what it is for is refused before diffusers is asked.
    xl_state = kohya_state(xl.pipe, text=False)
    said = write_kohya(tmp_path / "said.safetensors", xl_state, ss_base_model_version="sdxl_v1")
    checked = AdapterCache(loaded.pipe, family="sd1", model="tiny")
    with pytest.raises(EngineError) as refused, checked.applied([(said, 1.0)]):
        pass
    assert (
        refused.value.user_message == "The LoRA said is for SDXL models; tiny is an SD 1.x model."
    )
    with cache.applied([(good, 1.0)]):  # and the next generation's LoRA still applies
        assert np.abs(render(loaded) - base).max() > 1e-3


def _saved(path: Path, tensors: dict[str, torch.Tensor], **metadata: str) -> Path:
    save_file(tensors, str(path), metadata=metadata or None)
    return path


def test_what_a_file_says_of_its_family(loaded, tiny_sdxl, tmp_path):
    xl = load_model(ModelSpec("xl", str(tiny_sdxl)), CPU, torch.float32)
    sd1 = kohya_state(loaded.pipe, text=False)
    cases = {
        "kohya-xl": (sd1, {"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
        "kohya-v2": (sd1, {"ss_v2": "True", "ss_base_model_version": "sd_v2"}, "sd2"),
        "kohya-v1": (sd1, {"ss_base_model_version": "sd_v1"}, "sd1"),
        "modelspec": (sd1, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "sdxl"),
        "te2": (kohya_state(xl.pipe), {}, "sdxl"),
        "plain": (sd1, {}, None),
    }
    for name, (state, metadata, family) in cases.items():
        path = write_kohya(tmp_path / f"{name}.safetensors", state, **metadata)
        assert lora_family(read_header(path)) == family, name
    width = {
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
            torch.zeros(4, 2048, dtype=torch.float16)
        )
    }
    real_xl = _saved(tmp_path / "wide.safetensors", width)
    assert lora_family(read_header(real_xl)) == "sdxl"  # SDXL's 2048-wide text context
    with pytest.raises(LoraFileError, match=r"is for SDXL models; tiny is an SD 1\.x model"):
        check_family(read_header(real_xl), "sd1", "tiny")


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        (["lora_unet_a.hada_w1_a", "lora_unet_a.hada_w1_b"], "is a LyCORIS LoHa file"),
        (["lora_unet_a.lokr_w1", "lora_unet_a.lokr_w2"], "is a LyCORIS LoKr file"),
        (["lora_unet_a.lora_down.weight", "lora_unet_a.dora_scale"], "is a DoRA file"),
        (["emb_params"], "is an embedding, not a LoRA"),
        (["model.diffusion_model.x.weight"], "is not a LoRA this bot can read"),
    ],
)
def test_kinds_diffusers_cannot_apply_are_named(tmp_path, keys, reason):
    path = _saved(tmp_path / "x.safetensors", {key: torch.ones(2, 2) for key in keys})
    with pytest.raises(LoraFileError, match=reason):
        check_loadable(read_header(path))


def test_damaged_files_are_told_apart_without_reading_their_tensors(tmp_path):
    good = _saved(tmp_path / "good.safetensors", {"lora_unet_a.lora_down.weight": torch.ones(4)})
    data = good.read_bytes()
    broken = {
        "short": b"\x01\x02",
        "random": os.urandom(4096),
        "huge-header": (2**62).to_bytes(8, "little") + b"{}",
        "truncated": data[:-3],
        "not-json": len(b"{nope").to_bytes(8, "little") + b"{nope" + b"\0" * 16,
    }
    for name, content in broken.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(LoraFileError) as refused:
            read_header(path)
        assert refused.value.sentence(name).startswith(f"The LoRA {name} is "), name
    assert read_header(good).data_start == 8 + int.from_bytes(data[:8], "little")
