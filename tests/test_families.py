"""Model families as data (engine/api/families.py): how a model's family is told from what
is on disk, the defaults each family gives a job, what each refuses at submit in one
sentence, and what a job of each costs. No torch: all of this runs on the event loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.generation.options import DreamOptions, price_units, resolve_options
from engine.api.checks import check_params
from engine.api.families import (
    FAMILIES,
    family_from_folder,
    family_from_keys,
    family_from_name,
    is_checkpoint,
    lacks,
    summary,
)
from engine.api.params import GenerationParams, InvalidParams
from engine.api.specs import NATIVE_SIZE, ModelSpec
from tests.factories import standard_params

MODELS = {
    "sd15": ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "dev": ModelSpec("dev", "black-forest-labs/FLUX.1-dev"),
    "schnell": ModelSpec("schnell", "black-forest-labs/FLUX.1-schnell"),
    "sd35": ModelSpec("sd35", "stabilityai/stable-diffusion-3.5-large"),
}


def flux(**overrides) -> GenerationParams:
    values = {"model": "dev", "steps": 28, "cfg": 3.5, "sampler": "Euler", "width": 1024}
    return standard_params(**{"height": 1024, **values, **overrides})


# -- which family -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        # Black Forest Labs' originals, bare and as ComfyUI's all-in-one files prefix them
        (["double_blocks.0.img_attn.norm.key_norm.scale", "guidance_in.in_layer.weight"], "flux"),
        (["double_blocks.0.img_attn.norm.key_norm.scale"], "flux-schnell"),
        (
            [
                "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
                "model.diffusion_model.guidance_in.in_layer.weight",
                "vae.decoder.conv_in.weight",
            ],
            "flux",
        ),
        # diffusers' own layout in one file
        (
            [
                "single_transformer_blocks.0.proj_mlp.weight",
                "time_text_embed.guidance_embedder.linear_1.weight",
            ],
            "flux",
        ),
        (["single_transformer_blocks.0.proj_mlp.weight"], "flux-schnell"),
        (["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"], "sd3"),
        (["pos_embed.pos_embed", "transformer_blocks.0.norm1_context.linear.weight"], "sd3"),
        (["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"], "sdxl"),
        (["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"], "sd2"),
        (["model.diffusion_model.input_blocks.0.0.weight"], "sd1"),
    ],
)
def test_a_checkpoints_family_is_read_from_its_keys(keys, family):
    assert family_from_keys(set(keys)) == family
    assert is_checkpoint(set(keys))


def test_a_lora_or_an_embedding_is_no_checkpoint():
    assert not is_checkpoint({"lora_unet_down_blocks_0_attn1.lora_down.weight"})
    assert not is_checkpoint({"emb_params"})


def write_folder(folder: Path, pipeline: str, **configs: dict) -> Path:
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    for name, config in configs.items():
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("pipeline", "configs", "family"),
    [
        ("FluxPipeline", {"transformer": {"guidance_embeds": True}}, "flux"),
        ("FluxPipeline", {"transformer": {"guidance_embeds": False}}, "flux-schnell"),
        ("StableDiffusion3Pipeline", {}, "sd3"),
        ("StableDiffusionXLPipeline", {}, "sdxl"),
        ("StableDiffusionPipeline", {"text_encoder": {"hidden_size": 1024}}, "sd2"),
        ("StableDiffusionPipeline", {"text_encoder": {"hidden_size": 768}}, "sd1"),
        ("KandinskyPipeline", {}, None),
    ],
)
def test_a_folders_family_is_read_from_its_configs(tmp_path, pipeline, configs, family):
    folder = write_folder(tmp_path / "m", pipeline, **configs)
    assert family_from_folder(lambda name: json.loads((folder / name).read_text())) == family


def test_a_specs_family_is_its_folders_whatever_its_name(tmp_path):
    """A local folder named anything is read; a Hub id is guessed from its name."""
    folder = write_folder(
        tmp_path / "my-model", "FluxPipeline", transformer={"guidance_embeds": False}
    )
    assert ModelSpec("m", str(folder)).guessed_family() == "flux-schnell"
    assert ModelSpec("m", str(folder), family="flux").guessed_family() == "flux"  # configured
    guessed = {name: spec.guessed_family() for name, spec in MODELS.items()}
    assert guessed == {"sd15": "sd1", "dev": "flux", "schnell": "flux-schnell", "sd35": "sd3"}
    assert family_from_name("/models/sd3.5_large.safetensors") == "sd3"
    assert family_from_name("/models/sdxl-turbo") == "sdxl"


# -- defaults -----------------------------------------------------------------------------


def test_each_family_gives_a_job_its_own_defaults():
    def defaults(model: str) -> tuple:
        p = resolve_options(DreamOptions("a cat", model=model), MODELS, "sd15", 100)
        return (p.width, p.height, p.steps, p.cfg, p.sampler)

    assert defaults("sd15") == (512, 512, 20, 7.0, "Euler a")
    assert defaults("dev") == (1024, 1024, 28, 3.5, "Euler")
    assert defaults("schnell") == (1024, 1024, 4, 0.0, "Euler")
    assert defaults("sd35") == (1024, 1024, 28, 3.5, "Euler")
    assert NATIVE_SIZE["flux"] == (1024, 1024)


def test_the_bots_default_sampler_means_the_familys_own():
    """A server's or a preference's "Euler a" fills in where a member named none."""
    p = resolve_options(DreamOptions("a cat", model="dev", sampler="Euler a"), MODELS, "sd15", 100)
    assert p.sampler == "Euler"
    with pytest.raises(InvalidParams) as refused:
        resolve_options(DreamOptions("a cat", model="dev", sampler="DPM++ 2M"), MODELS, "sd15", 100)
    assert str(refused.value) == (
        "FLUX.1 dev models sample with Euler only (flow matching has no scheduler for DPM++ 2M)."
    )


def test_a_model_can_set_its_own_defaults():
    turbo = ModelSpec(
        "turbo", "stabilityai/stable-diffusion-3.5-large-turbo", default_steps=4, default_cfg=0.0
    )
    p = resolve_options(DreamOptions("a cat", model="turbo"), {"turbo": turbo}, "turbo", 100)
    assert (p.steps, p.cfg) == (4, 0.0)


# -- refused in one sentence --------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"negative": "blurry"},
            "FLUX.1 dev has no negative prompt (its guidance is distilled into the model, so "
            "nothing runs against one): leave it empty and say in the prompt what you want.",
        ),
        (
            {"sampler": "DPM++ 2M", "schedule": "Karras"},
            "FLUX.1 dev models sample with Euler only (flow matching has no scheduler for "
            "DPM++ 2M).",
        ),
        (
            {"schedule": "Karras"},
            "FLUX.1 dev models step on their own flow-matching schedule: leave the schedule type "
            "on Automatic, not Karras.",
        ),
        (
            {"clip_skip": 2},
            "Clip skip is not available for FLUX.1 dev models: their text encoders are read as "
            "the model was trained.",
        ),
        (
            {"width": 1000},
            "Size 1000x1024: width and height must be multiples of 16 for FLUX.1 dev models.",
        ),
        (
            {"model": "schnell", "cfg": 3.5},
            "FLUX.1 schnell takes no guidance (it is step-distilled): leave CFG empty or at 0, "
            "not 3.5.",
        ),
        (
            {"prompt": "a castle BREAK a moat"},
            "BREAK in the prompt has no meaning for FLUX.1 dev models: their T5 encoder reads "
            "the prompt whole (up to 512 tokens), not in 75-token chunks.",
        ),
        (
            {"prompt": "a [cat:dog:10] on a sofa"},
            "Prompt editing [from:to:when] and alternation [a|b] in the prompt are not available "
            "for FLUX.1 dev models.",
        ),
        (
            {"prompt": "a cat AND a dog"},
            "AND and sub-prompt weights (composable prompts) are not available for FLUX.1 dev.",
        ),
        (
            {"prompt": "cute dog:0.9 cyborg:0.3", "prompt_syntax": "subprompt"},
            "Weighted sub-prompts (`dog:0.9 cyborg:0.3`) in the prompt are not available for "
            "FLUX.1 dev models; weigh words with A1111's (word:1.2) instead.",
        ),
        (
            {"mode": "img2img", "init_image": "abc", "denoise": 1.2},
            "Denoising strength must be 0-1, not 1.2.",
        ),
        (
            {"mode": "inpaint", "init_image": "abc", "negative": "blurry"},
            "FLUX.1 dev has no negative prompt (its guidance is distilled into the model, so "
            "nothing runs against one): leave it empty and say in the prompt what you want.",
        ),
        (
            {"control_type": "canny", "control_image": "abc"},
            "ControlNet is not available for FLUX.1 dev models here.",
        ),
        (
            {"embeddings": (("easyneg", "/l/easyneg.safetensors"),)},
            "Embeddings (easyneg) are made for SD 1.x/SDXL text encoders; FLUX.1 dev models "
            "cannot use them.",
        ),
    ],
)
def test_what_a_family_cannot_do_is_refused_in_one_sentence(overrides, expected):
    with pytest.raises(InvalidParams) as refused:
        check_params(flux(**overrides), MODELS, 1000)
    assert str(refused.value) == expected


def test_what_a_family_can_do_passes():
    check_params(flux(prompt="a (red:1.3) cat, [blurry], \\(text\\)"), MODELS, 1000)
    check_params(flux(variation_seed=5, variation_strength=0.3), MODELS, 1000)
    check_params(flux(loras=(("style", "/l/style.safetensors", 0.8),)), MODELS, 1000)
    check_params(flux(model="sd35", negative="blurry", cfg=4.5), MODELS, 1000)
    check_params(flux(model="schnell", cfg=0.0, steps=4), MODELS, 1000)
    for mode, extra in (
        ("img2img", {}),
        ("inpaint", {}),
        ("outpaint", {"outpaint": (16, 0, 0, 0)}),
    ):
        check_params(flux(mode=mode, init_image="abc", denoise=0.6, **extra), MODELS, 1000)
    check_params(flux(mode="upscale", init_image="abc", upscale=2.0), MODELS, 1000)
    # SD 1.x keeps every option
    check_params(
        standard_params(negative="x", clip_skip=2, prompt="a [cat:dog:5] BREAK x AND y"),
        MODELS,
        1000,
    )


def test_models_says_what_each_family_lacks():
    assert lacks(FAMILIES["sd1"]) == []
    assert summary(FAMILIES["flux"], 28, 3.5) == (
        "FLUX.1 dev: 28 steps, distilled CFG 3.5, Euler only; no negative prompt, clip skip, "
        "BREAK, prompt editing and AND, ControlNet, embeddings"
    )
    assert summary(FAMILIES["sd3"], 28, 3.5).startswith(
        "SD 3.x: 28 steps, CFG 3.5, Euler only; no clip"
    )
    assert summary(FAMILIES["flux-schnell"], 4, 0.0).startswith("FLUX.1 schnell: 4 steps, no CFG")


# -- prices ---------------------------------------------------------------------------------


def test_a_step_costs_what_its_family_costs():
    sd1 = standard_params()
    assert price_units(sd1, MODELS["sd15"]) == price_units(sd1) == 1
    dev = flux()  # 1024x1024, 28 steps: 4 standard images of pixels x 1.4 of steps x 6
    assert price_units(dev, MODELS["dev"]) == pytest.approx(4 * 1.4 * 6)
    assert price_units(dev) == pytest.approx(4 * 1.4)  # without its model: as SD 1.5
    schnell = flux(model="schnell", steps=4, cfg=0.0)
    assert price_units(schnell, MODELS["schnell"]) == pytest.approx(4 * 0.2 * 6)
    assert price_units(flux(model="sd35"), MODELS["sd35"]) == pytest.approx(4 * 1.4 * 3)


# -- memory -------------------------------------------------------------------------------


def test_auto_memory_modes_fit_the_big_families_to_their_cards():
    from engine.api.memory import GIB, auto_mode, batch_images

    cards = {24: "4090", 32: "5090", 48: "A6000", 80: "H100"}
    modes = {family: [auto_mode(family, gib * GIB) for gib in cards] for family in ("flux", "sd3")}
    # FLUX.1's transformer alone is ~24 GB in bf16: a 24 GB card runs it layer by layer
    assert modes["flux"] == ["low", "medium", "high", "high"]
    assert modes["sd3"] == ["medium", "high", "high", "high"]
    assert auto_mode("sdxl", 24 * GIB) == "high"
    assert batch_images("flux", "high", 80 * GIB, 1024, 1024) > 1
    assert batch_images("flux", "high", 40 * GIB, 1024, 1024) == 1
    # offloaded, only the transformer stays: a 40 GB card batches a few 1024x1024 images
    assert 1 < batch_images("flux", "medium", 40 * GIB, 1024, 1024) < 16


# -- settings -----------------------------------------------------------------------------


def test_a_models_transformer_quantization_and_defaults_are_settings():
    from pydantic import ValidationError

    from bot.settings import Settings, explain_settings_error

    model = {
        "source": "black-forest-labs/FLUX.1-dev",
        "transformer": "/models/flux1-dev-Q4_K_S.gguf",
        "default_steps": 20,
        "family": "flux",
    }
    # model_validate: the values alone, no environment and no .env read
    settings = Settings.model_validate({"models": {"flux": model}, "default_model": "flux"})
    spec = settings.model_specs()["flux"]
    assert (spec.transformer, spec.default_steps, spec.steps_default()) == (
        "/models/flux1-dev-Q4_K_S.gguf",
        20,
        20,
    )
    with pytest.raises(ValidationError) as bad:
        Settings.model_validate(
            {"models": {"flux": {**model, "quantize": "nf8"}}, "default_model": "flux"}
        )
    [line] = explain_settings_error(bad.value)
    assert line.startswith("Setting SDBOT_MODELS (flux.quantize): Input should be 'nf4'")


def test_train_takes_a_lora_on_every_family_and_an_embedding_on_sd_only() -> None:
    from engine.api.params import InvalidParams
    from engine.api.training_params import TrainingLimits, check_training, make_training_params

    params = make_training_params(
        name="rex", model="flux", resolution=512, seed=1, class_word="dog", steps=10
    )
    embedding = make_training_params(
        name="rex", model="flux", resolution=512, seed=1, class_word="dog", method="embedding"
    )
    for family in ("flux", "flux-schnell", "sd3", "sdxl"):  # LoRAs train on all of them
        check_training(params, TrainingLimits(), family)
    for family in ("flux", "flux-schnell", "sd3"):
        with pytest.raises(InvalidParams, match=r"^Textual inversion is not available for"):
            check_training(embedding, TrainingLimits(), family)
    check_training(embedding, TrainingLimits(), "sd1")
