"""A1111's infotext, written and read exactly as A1111 does."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from packaging import version as packaging_version

from engine.api.infotext import (
    build_infotext,
    checkpoint_name,
    configured_model,
    params_from_infotext,
    parse_infotext,
    quote,
    version,
)
from engine.api.params import GenerationParams, InvalidParams
from engine.api.specs import ModelSpec
from tests.factories import standard_params

OURS = f", Version: {version()}"  # what every infotext of ours ends with


def params(**overrides) -> GenerationParams:
    return standard_params(**overrides)


def test_written_like_a1111():
    text = build_infotext(
        params(prompt="a (red:1.2) fox", negative="blurry", seed=42, cfg=7.5),
        seed=42,
        model_hash="6ce0161689",
    )
    assert text == (
        "a (red:1.2) fox\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, "
        "Size: 512x512, Model hash: 6ce0161689, Model: sd15" + OURS
    )


def test_variation_and_clip_skip_written_where_a1111_writes_them():
    p = params(variation_seed=99, variation_strength=0.3, clip_skip=2, count=2)
    assert build_infotext(p, seed=42, model_hash="6ce0161689", variation_seed=100) == (
        "a cat\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, "
        "Size: 512x512, Model hash: 6ce0161689, Model: sd15, Variation seed: 100, "
        "Variation seed strength: 0.3, Clip skip: 2" + OURS
    )
    # The job's own variation seed when the image's is not given.
    assert "Variation seed: 99," in build_infotext(p, seed=42, model_hash=None)


def test_unused_options_are_not_written():
    text = build_infotext(
        params(variation_seed=99, variation_strength=0.0, clip_skip=1), seed=1, model_hash=None
    )
    assert text == build_infotext(params(), seed=1, model_hash=None)
    for key in ("Variation", "Clip skip", "Prompt syntax"):
        assert key not in text
    subprompts = build_infotext(params(prompt_syntax="subprompt"), seed=1, model_hash=None)
    assert subprompts.endswith(", Model: sd15, Prompt syntax: subprompt" + OURS)


def test_no_negative_line_and_no_hash_when_unknown():
    assert build_infotext(params(), seed=1, model_hash=None) == (
        "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, "
        "Size: 512x512, Model: sd15" + OURS
    )


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("k: v", '"k: v"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
    ],
)
def test_values_with_separators_are_json_quoted(value, quoted):
    assert quote(value) == quoted


@pytest.mark.parametrize(
    "p",
    [
        params(),
        params(prompt="line one\nline two, with: colons", negative="neg\nmore neg"),
        params(prompt="emoji 🐱 and ünïcödé", sampler="DPM++ 2M SDE Karras", cfg=0.0, steps=150),
        params(cfg=12.345, width=768, height=1024, seed=4294967295, model="my model, v2: final"),
        params(prompt="(masterpiece:1.2), [ugly], \\(escaped\\) BREAK next chunk"),
        params(clip_skip=2),
        params(variation_seed=99, variation_strength=0.25, clip_skip=12),
        params(variation_seed=0, variation_strength=1.0),
        params(prompt="cute dog:0.95 cyborg:0.85", prompt_syntax="subprompt"),
        params(prompt="cute dog:0.95 cyborg:0.85", prompt_syntax="auto"),
    ],
)
def test_round_trip(p):
    for model_hash in (None, "abcdef0123"):
        text = build_infotext(p, seed=p.seed, model_hash=model_hash)
        assert params_from_infotext(text) == p
        assert parse_infotext(text).values.get("Model hash") == model_hash


A1111_OLD = """masterpiece, best quality, 1girl, (blue hair:1.2), looking at viewer
Negative prompt: lowres, bad anatomy, (worst quality:1.4)
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3938270617, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, \
Hires upscale: 2, Hires upscaler: Latent, Version: v1.6.0"""

A1111_NEW = """a photo of an astronaut riding a horse on mars
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 1234, \
Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, \
Lora hashes: "detail: 7f6d4a7a1c2b, style: 1a2b3c4d5e6f", Version: v1.10.1"""

A1111_MULTILINE = """portrait of a knight,
dramatic lighting
Negative prompt: cartoon,
3d render
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 7, Size: 512x512, Model hash: 45dee52b"""


def test_parses_infotext_written_by_a1111():
    old = params_from_infotext(A1111_OLD)
    assert old.prompt.startswith("masterpiece")
    assert old.negative.endswith("(worst quality:1.4)")
    # A1111 before 1.9 wrote one combined name; it reads as today's sampler and schedule type.
    assert (old.steps, old.sampler, old.cfg, old.seed) == (28, "DPM++ 2M", 7.0, 3938270617)
    assert old.schedule == "Karras"
    assert (old.width, old.height, old.model) == (512, 768, "v1-5-pruned-emaonly")
    assert parse_infotext(A1111_OLD).values["Clip skip"] == "2"
    assert old.clip_skip == 2
    assert (old.variation_seed, old.variation_strength, old.prompt_syntax) == (None, 0.0, "a1111")

    new = params_from_infotext(A1111_NEW)
    assert (new.sampler, new.schedule) == ("DPM++ 2M", "Karras")
    assert (new.cfg, new.width, new.negative) == (5.5, 1024, "")
    assert (
        parse_infotext(A1111_NEW).values["Lora hashes"]
        == "detail: 7f6d4a7a1c2b, style: 1a2b3c4d5e6f"
    )

    multi = params_from_infotext(A1111_MULTILINE)
    assert multi.prompt == "portrait of a knight,\ndramatic lighting"
    assert multi.negative == "cartoon,\n3d render"
    assert multi.model == ""


A1111_VARIATION = """a castle on a hill
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Variation seed: 987654321, Variation seed strength: 0.35, \
Seed resize from: 768x768, Denoising strength: 0.5, Clip skip: 2, Version: v1.10.1"""


def test_parses_variation_seeds_written_by_a1111():
    p = params_from_infotext(A1111_VARIATION)
    assert (p.seed, p.variation_seed, p.variation_strength) == (1234, 987654321, 0.35)
    assert (p.clip_skip, p.prompt_syntax) == (2, "a1111")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just a prompt", "no 'Size'"),
        ("p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: x, Size: 1x1", "unreadable value"),
        ("p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: big", "Unreadable size"),
        (
            "p\nSteps: 2, Sampler: Euler, Seed: 1, Size: 8x8, CFG scale: 7, Clip skip: x",
            "unreadable",
        ),
        (
            "p\nSteps: 2, Sampler: Euler, Seed: 1, Size: 8x8, CFG scale: 7, Variation seed: 1.5",
            "unreadable value",
        ),
    ],
)
def test_bad_infotext_raises_invalid_params(text, message):
    with pytest.raises(InvalidParams, match=message):
        params_from_infotext(text)


@pytest.mark.parametrize(
    ("syntax", "prompt", "negative", "written"),
    [
        ("a1111", "cute dog:0.95 cyborg:0.85", "", None),
        # The bot's default: sub-prompts only where the text can mean nothing else.
        ("auto", "a (red:1.2) fox", "blurry", None),
        ("auto", "a cat", "", None),
        ("auto", "cute dog:0.95 cyborg:0.85", "", "auto"),
        ("auto", "a cat", "blurry:1 text:0.5", "auto"),
        ("subprompt", "a cat", "", "subprompt"),
    ],
)
def test_prompt_syntax_is_written_only_for_sub_prompt_jobs(syntax, prompt, negative, written):
    p = params(prompt=prompt, negative=negative, prompt_syntax=syntax)
    values = parse_infotext(build_infotext(p, seed=1, model_hash=None)).values
    assert values.get("Prompt syntax") == written
    # Read back, the prompts are read as they were: by A1111's rules when nothing is written.
    assert params_from_infotext(build_infotext(p, seed=1, model_hash=None)).prompt_syntax == (
        written or "a1111"
    )


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("/models/dreamshaper_8.safetensors", "dreamshaper_8"),
        ("C:\\sd\\models\\v1-5-pruned-emaonly.CKPT", "v1-5-pruned-emaonly"),
        ("/home/owner/models/my-model/", "my-model"),
        ("stabilityai/stable-diffusion-xl-base-1.0", "stable-diffusion-xl-base-1.0"),
        ("sd15", "sd15"),
        ("my model, v2: final", "my model, v2: final"),
    ],
)
def test_the_model_is_the_checkpoints_name_never_a_path(source, name):
    assert checkpoint_name(source) == name
    text = build_infotext(params(model="sd15"), seed=1, model_hash=None, checkpoint=source)
    assert parse_infotext(text).values["Model"] == name


def test_a_path_given_as_the_model_is_written_as_its_name():
    console = params(model="/home/owner/models/dreamshaper_8.safetensors")
    text = build_infotext(console, seed=1, model_hash=None)
    assert "/home" not in text
    assert parse_infotext(text).values["Model"] == "dreamshaper_8"


def test_the_model_named_in_infotext_reads_back_to_the_configured_one():
    models = {
        "sd15": ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "dreamshaper": ModelSpec("dreamshaper", "/models/dreamshaper_8.safetensors"),
    }
    assert configured_model("sd15", models) == "sd15"
    assert configured_model("dreamshaper_8", models) == "dreamshaper"
    assert configured_model("stable-diffusion-v1-5", models) == "sd15"
    assert configured_model("sd_xl_base_1.0", models) is None


def a1111_parse_version(text: str | None) -> packaging_version.Version | None:
    """A1111's modules/infotext_versions.py `parse_version`: what it makes of `Version:`."""
    if text is None:
        return None
    match = re.match(r"([^-]+-[^-]+)-.*", text)
    if match:
        text = match.group(1)
    try:
        return packaging_version.parse(text)
    except packaging_version.InvalidVersion:
        return None


def test_our_version_is_written_last_and_read_as_no_a1111_version():
    text = build_infotext(
        params(mode="inpaint", init_image="k", mask_prompt="the sky", prompt_syntax="subprompt"),
        seed=1,
        model_hash=None,
    )
    values = parse_infotext(text).values
    assert list(values)[-1] == "Version"
    assert values["Version"] == version()
    assert re.fullmatch(r"sdbot-\d+\.\d+\.\d+\S*", version())
    # A1111 turns on compatibility settings for infotext of its versions before 1.6 (and
    # 1.7, 1.8): a bare package version would read as one of them; ours reads as none.
    assert a1111_parse_version(version()) is None
    bare = a1111_parse_version(version().removeprefix("sdbot-"))
    assert bare is not None
    assert bare < packaging_version.parse("1.6")
    assert a1111_parse_version("v1.10.1") == packaging_version.parse("1.10.1")
    # Our reader ignores it: the parameters are the same without it.
    without = text.replace(OURS, "")
    assert params_from_infotext(text) == params_from_infotext(without)


def test_a_region_edit_records_its_words_and_cell_beside_the_inpaint_keys():
    region = params(
        mode="inpaint",
        init_image="k",
        denoise=0.9,
        mask_prompt="her hat, the red one",
        mask_cell="top-left",
    )
    text = build_infotext(region, seed=1, model_hash=None)
    assert text.endswith(
        'Denoising strength: 0.9, Mask blur: 4, Mask prompt: "her hat, the red one", '
        "Mask cell: top-left" + OURS
    )
    back = params_from_infotext(text)
    assert (back.mask_prompt, back.mask_cell, back.denoise) == (
        "her hat, the red one",
        "top-left",
        0.9,
    )
    assert back.mode == "txt2img", "the picture is not in the infotext"
    plain = build_infotext(params(mode="inpaint", init_image="k"), seed=1, model_hash=None)
    assert "Mask prompt" not in plain
    assert "Mask cell" not in plain


# -- FLUX's guidance, as Forge writes it --------------------------------------------------


def test_flux_guidance_is_written_as_forge_writes_it_and_read_back():
    flux = params(model="flux1-dev", sampler="Euler", cfg=3.5, steps=28, width=1024, height=1024)
    text = build_infotext(flux, seed=7, model_hash="0123456789", rng="CPU", distilled=True)
    assert text.splitlines()[-1] == (
        "Steps: 28, Sampler: Euler, Schedule type: Automatic, CFG scale: 1, "
        "Distilled CFG Scale: 3.5, Seed: 7, Size: 1024x1024, Model hash: 0123456789, "
        "Model: flux1-dev, RNG: CPU" + OURS
    )
    assert params_from_infotext(text) == replace_seed(flux, 7)


def replace_seed(p: GenerationParams, seed: int) -> GenerationParams:
    return GenerationParams.from_dict({**p.to_dict(), "seed": seed})


def test_a_forge_flux_infotext_reads_as_the_job_that_made_it():
    """Forge's FLUX default schedule, Simple, is the flow-matching schedule our Automatic
    runs; its `CFG scale: 1` is no CFG, and the guidance is the distilled one."""
    forge = (
        "a cat in a hat\n"
        "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: "
        "3.5, Seed: 1234, Size: 896x1152, Model hash: 4a0e7ac3e4, Model: flux1-dev-bnb-nf4-v2, "
        "Version: f2.0.1v1.10.1-previous-313-g5a0a2b4"
    )
    read = params_from_infotext(forge)
    assert (read.sampler, read.schedule, read.cfg, read.steps) == ("Euler", "Automatic", 3.5, 20)
    assert (read.width, read.height, read.model) == (896, 1152, "flux1-dev-bnb-nf4-v2")


def test_sd_infotext_keeps_its_cfg_scale():
    text = build_infotext(params(cfg=6.5), seed=1, model_hash=None)
    assert "CFG scale: 6.5, Seed: 1" in text
    assert "Distilled" not in text
    assert params_from_infotext(text).cfg == 6.5


def test_a_gguf_transformer_is_the_model_infotext_names():
    assert checkpoint_name("/models/flux1-dev-Q4_K_S.gguf") == "flux1-dev-Q4_K_S"
    models = {
        "flux": ModelSpec(
            "flux", "black-forest-labs/FLUX.1-dev", transformer="/m/flux1-dev-Q4_K_S.gguf"
        )
    }
    assert configured_model("flux1-dev-Q4_K_S", models) == "flux"
    assert configured_model("FLUX.1-dev", models) == "flux"


# -- Hires fix (issue 16) ----------------------------------------------------------------


def test_hires_is_written_where_a1111_writes_it_and_read_back():
    p = params(hires_scale=2, hires_steps=10, hires_upscaler="Lanczos", hires_denoise=0.45)
    text = build_infotext(p, seed=p.seed, model_hash="abc")
    assert (
        "Size: 512x512, Model hash: abc, Model: sd15, Denoising strength: 0.45, "
        "Hires upscale: 2, Hires steps: 10, Hires upscaler: Lanczos" + OURS
    ) in text
    assert params_from_infotext(text) == p
    default_steps = build_infotext(params(hires_scale=1.5), seed=1, model_hash=None)
    assert "Denoising strength: 0.7, Hires upscale: 1.5, Hires upscaler: Latent" in default_steps
    assert "Hires steps" not in default_steps


@pytest.mark.parametrize(
    ("first_pass", "size", "scale"),
    [("512x512", "1024x1024", 2.0), ("0x0", "1024x768", 1.6)],
)
def test_an_old_first_pass_size_becomes_the_size_and_the_scale(first_pass, size, scale):
    text = (
        "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, "
        f"Size: 1024x{size.split('x')[1]}, Denoising strength: 0.6, First pass size: {first_pass}"
    )
    p = params_from_infotext(text)
    # 0x0: A1111's old first pass of about 512x512 pixels, sides up to multiples of 64.
    assert (p.width, p.height) == ((512, 512) if first_pass == "512x512" else (640, 448))
    assert p.hires_scale == pytest.approx(scale)
    assert (p.hires_denoise, p.denoise, p.hires_upscaler) == (0.6, 0.75, "Latent")


def test_a_target_size_is_written_as_hires_resize_and_read_back():
    p = params(width=512, height=768, hires_resize=(1024, 0), hires_denoise=0.5)
    text = build_infotext(p, seed=p.seed, model_hash=None)
    assert "Size: 512x768, Model: sd15, Denoising strength: 0.5, " in text
    assert "Hires resize: 1024x0, Hires upscaler: Latent" + OURS in text
    assert "Hires upscale:" not in text
    assert params_from_infotext(text) == p
    both = params(hires_resize=(1024, 1536), hires_steps=12)
    written = build_infotext(both, seed=1, model_hash=None)
    assert "Hires resize: 1024x1536, Hires steps: 12" in written
    assert params_from_infotext(written) == both


def test_hires_prompts_sampler_schedule_and_cfg_are_written_only_when_they_differ():
    p = params(
        prompt="a cat",
        negative="blurry",
        sampler="DPM++ 2M",
        schedule="Karras",
        hires_scale=2,
        hires_prompt="a cat, fine fur: detailed",
        hires_negative="blurry, jpeg",
        hires_sampler="Euler a",
        hires_schedule="Exponential",
        hires_cfg=5.0,
    )
    text = build_infotext(p, seed=p.seed, model_hash=None)
    # A1111's order: sampler, prompts, (Forge's) CFG scale, schedule type, then the size keys.
    assert (
        'Hires sampler: Euler a, Hires prompt: "a cat, fine fur: detailed", '
        'Hires negative prompt: "blurry, jpeg", Hires CFG Scale: 5, '
        "Hires schedule type: Exponential, Hires upscale: 2, Hires upscaler: Latent"
    ) in text
    assert params_from_infotext(text) == p
    # Without its own schedule type the hires sampler runs the first pass's (A1111's rule).
    karras = build_infotext(replace(p, hires_schedule=None), seed=1, model_hash=None)
    assert "Hires CFG Scale: 5, Hires upscale: 2" in karras
    assert params_from_infotext(karras) == replace(p, hires_schedule=None)
    same = params(hires_scale=2, hires_prompt="a cat", hires_sampler="Euler a", hires_cfg=7.0)
    plain = build_infotext(same, seed=1, model_hash=None)
    for key in ("Hires prompt", "Hires sampler", "Hires CFG", "Hires schedule"):
        assert key not in plain


@pytest.mark.parametrize(
    ("keys", "sampler", "schedule", "cfg"),
    [
        (
            "Hires sampler: DPM++ 2M, Hires schedule type: Exponential, Hires CFG Scale: 4.5",
            "DPM++ 2M",
            "Exponential",
            4.5,
        ),
        ("Hires sampler: DPM++ 2M Karras", "DPM++ 2M", "Karras", None),  # before 1.9
        ("Hires schedule type: Karras, Hires CFG Scale: 7", None, "Karras", None),
    ],
)
def test_a1111s_hires_sampler_keys_are_read_as_it_reads_them(keys, sampler, schedule, cfg):
    text = (
        "a castle\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, "
        "CFG scale: 7, Seed: 3, Size: 512x768, Denoising strength: 0.45, Hires prompt: "
        f'"a castle, towers", {keys}, Hires resize: 1024x1024, Hires upscaler: Lanczos, '
        "Version: v1.10.1"
    )
    p = params_from_infotext(text)
    assert (p.hires_sampler, p.hires_schedule, p.hires_cfg) == (sampler, schedule, cfg)
    assert (p.hires_prompt, p.hires_negative) == ("a castle, towers", "")
    assert (p.width, p.height, p.hires_resize, p.hires_denoise) == (512, 768, (1024, 1024), 0.45)
    assert (p.hires_upscaler, p.denoise) == ("Lanczos", 0.75)


def test_an_unreadable_hires_resize_is_named():
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, "
    with pytest.raises(InvalidParams, match=r"Unreadable hires resize 'big'\."):
        params_from_infotext(text + "Hires resize: big")
