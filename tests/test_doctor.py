"""`python -m bot doctor`: a line per check, ✓ or ✗ with the fix, exit 0 only when all pass.

Run on a good set-up (the tiny model, a fresh data folder, a token of the right shape) and on
broken ones, each broken the way owners break them. CUDA machines are stood in for by
patching torch's answers; the Hugging Face cache by a cache folder laid out as the Hub's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from bot.__main__ import parse_args
from bot.cli.books import books
from bot.cli.doctor import (
    SINGLE_FILE_CONFIGS,
    device_finding,
    doctor,
    doctor_findings,
    folder_finding,
    token_finding,
    torch_findings,
)
from bot.settings import Settings
from engine.api.specs import ModelSpec

BOT_ID = "123456789012345678"
TOKEN = base64.urlsafe_b64encode(BOT_ID.encode()).decode().rstrip("=") + ".GaBcDe." + "x" * 38
GIB = 1024**3

Make = Callable[..., Settings]


def report(settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = doctor(settings)
    return code, capsys.readouterr().out.splitlines()


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("✗")]


@pytest.fixture
def good(make_settings: Make) -> Make:
    """The conftest's settings (the tiny model) with a token shaped like a real one."""

    def make(**overrides: Any) -> Settings:
        return make_settings(**{"discord_token": TOKEN, "device": "cpu", **overrides})

    return make


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """A Hugging Face cache of our own; `add(repo, files)` caches a repo's snapshot."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def add(repo: str, files: dict[str, Any]) -> None:
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("0" * 40)
        for name, content in files.items():
            path = folder / "snapshots" / ("0" * 40) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))

    return add


def test_a_good_set_up_passes_every_check(good, tiny_sd1, capsys):
    settings = good()
    code, lines = report(settings, capsys)
    assert code == 0, "\n".join(lines)
    assert failures(lines) == []
    assert f"✓ SDBOT_MODELS (tiny): sd1, folder {tiny_sd1}" in lines
    assert f"✓ SDBOT_DATA_DIR: {settings.data_dir} can be written (created at first start)" in lines
    assert f"✓ database: none yet at {settings.db_path}: the bot creates it at first start" in lines
    assert "✓ SDBOT_SAFETY_CHECKER: not set: images are not checked" in lines
    assert f"✓ SDBOT_DISCORD_TOKEN: set, shaped like the token of bot {BOT_ID} (not shown)" in lines
    assert TOKEN not in "\n".join(lines)
    assert lines[-1] == f"All {len(lines) - 1} checks passed."
    assert not settings.data_dir.exists()  # the doctor looks; it makes nothing


def test_the_books_and_the_database_file(good, capsys):
    settings = good()
    assert books(settings, parse_args(["credits", "grant", "5", "10"])) == 0
    capsys.readouterr()
    code, lines = report(settings, capsys)
    assert code == 0
    assert f"✓ database: {settings.db_path} passes SQLite's integrity check" in lines
    assert "✓ books: the ledger, the balances and the jobs agree (db check)" in lines
    with sqlite3.connect(settings.db_path) as db:
        db.execute("UPDATE accounts SET balance = 3")
    code, lines = report(settings, capsys)
    assert code == 1
    assert failures(lines) == [
        "✗ books: 1 problem(s), the first: user 5: balance 3 but the ledger sums to 60: "
        "python -m bot db check lists them all"
    ]
    settings.db_path.write_bytes(b"not a database, whatever its name says" * 200)
    code, lines = report(settings, capsys)
    assert failures(lines) == [
        f"✗ database: {settings.db_path} cannot be read (file is not a database): stop the bot "
        "and restore the latest backup (python -m bot db backup makes them)"
    ]


def test_broken_set_ups_each_say_what_to_fix(good, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")
    header_only = tmp_path / "dreamshaper.safetensors"
    save_file({"cond_stage_model.transformer.x": torch.zeros(1)}, str(header_only))
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    settings = good(
        data_dir=tmp_path / "notes.txt" / "var",
        models={
            "gone": {"source": str(tmp_path / "gone.safetensors")},
            "file": {"source": str(header_only)},
            "folder": {"source": str(not_a_model)},
        },
        default_model="gone",
        safety_checker="CompVis/stable-diffusion-safety-checker",
        discord_token="abcdefghijklmnopqrstuvwxyz012345",  # the client secret, pasted by mistake
    )
    code, lines = report(settings, capsys)
    assert code == 1
    assert failures(lines) == [
        f"✗ SDBOT_DATA_DIR: {tmp_path / 'notes.txt'} is a file, so {settings.data_dir} cannot "
        "be a folder: set SDBOT_DATA_DIR to a folder that can be written",
        f"✗ SDBOT_MODELS (gone): there is no file or folder {tmp_path / 'gone.safetensors'}: fix "
        'its "source" (a Hub id, a diffusers folder or a .safetensors/.ckpt file)',
        "✗ SDBOT_MODELS (file.config): not set, and a single sd1 file loads with "
        "stable-diffusion-v1-5/stable-diffusion-v1-5's configuration, which is not in the "
        'Hugging Face cache while HF_HUB_OFFLINE is set: set "config" of model file in '
        "SDBOT_MODELS to a local diffusers folder of the same family",
        f"✗ SDBOT_MODELS (folder): folder {not_a_model} holds no model_index.json: it is not a "
        'diffusers model: point its "source" at the folder that holds model_index.json',
        "✗ SDBOT_SAFETY_CHECKER: CompVis/stable-diffusion-safety-checker is not in the Hugging "
        "Face cache and HF_HUB_OFFLINE is set: download it once with the network (hf download "
        "CompVis/stable-diffusion-safety-checker), or point SDBOT_SAFETY_CHECKER at a local "
        "diffusers folder",
        "✗ SDBOT_DISCORD_TOKEN: is not shaped like a bot token (1 part(s); a token has 3, joined "
        "by dots: is it the client secret or the public key?): copy it again from the developer "
        "portal: your application, Bot, Reset Token",
    ]
    digest = hashlib.sha256(header_only.read_bytes()).hexdigest()[:10]
    assert f"✓ SDBOT_MODELS (file): sd1, file {header_only} (0.00 GiB), hash {digest}" in lines
    assert lines[-1] == f"6 of {len(lines) - 1} checks failed."
    assert list(tmp_path.glob("notes.txt/*")) == []


def test_a_data_folder_that_is_a_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("")
    assert folder_finding("SDBOT_DATA_DIR", notes).line() == (
        f"✗ SDBOT_DATA_DIR: {notes} is a file: set SDBOT_DATA_DIR to a folder that can be written"
    )


def test_a_corrupt_checkpoint_is_told_before_it_is_loaded(good, tmp_path, tiny_sd1, capsys):
    corrupt = tmp_path / "half-downloaded.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    settings = good(
        models={"tiny": {"source": str(tiny_sd1)}, "half": {"source": str(corrupt)}},
        default_model="tiny",
    )
    assert failures(report(settings, capsys)[1]) == [
        f"✗ SDBOT_MODELS (half): {corrupt} is not a readable .safetensors file: download it "
        'again, or fix its "source" (a Hub id, a diffusers folder or a .safetensors/.ckpt file)'
    ]


def test_hub_ids_are_looked_up_in_the_cache_only(good, hub_cache, monkeypatch, capsys):
    hub_cache("org/cached-xl", {"model_index.json": {"_class_name": "StableDiffusionXLPipeline"}})
    hub_cache("org/checker", {"config.json": {}})
    settings = good(
        models={
            "xl": {"source": "org/cached-xl"},
            "new": {"source": "org/not-downloaded-xl"},
            "file": {"source": "/models/x.safetensors", "config": "org/cached-xl"},
        },
        default_model="xl",
        safety_checker="org/checker",
    )
    lines = report(settings, capsys)[1]
    assert "✓ SDBOT_MODELS (xl): sdxl, Hub id org/cached-xl, in the Hugging Face cache" in lines
    assert "✓ SDBOT_SAFETY_CHECKER: Hub id org/checker, in the Hugging Face cache" in lines
    assert [line for line in lines if "(new)" in line] == [
        "✗ SDBOT_MODELS (new): org/not-downloaded-xl is not in the Hugging Face cache and "
        "HF_HUB_OFFLINE is set: download it once with the network (hf download "
        'org/not-downloaded-xl), or point its "source" at a local diffusers folder'
    ]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    lines = report(settings, capsys)[1]
    assert (
        "✓ SDBOT_MODELS (new): sdxl (guessed from its name), Hub id org/not-downloaded-xl, not "
        "downloaded yet: fetched at first use"
    ) in lines


def test_a_single_file_takes_its_family_config_from_the_cache(good, tmp_path, hub_cache, capsys):
    checkpoint = tmp_path / "sdxl-model.safetensors"
    xl_key = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
    save_file({xl_key: torch.zeros(1)}, str(checkpoint))
    hub_cache(SINGLE_FILE_CONFIGS["sdxl"], {"model_index.json": {}})
    settings = good(models={"xl": {"source": str(checkpoint)}}, default_model="xl")
    lines = report(settings, capsys)[1]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]  # as A1111 shows it
    assert [line for line in lines if "(xl" in line] == [
        f"✓ SDBOT_MODELS (xl): sdxl, file {checkpoint} (0.00 GiB), hash {digest}",
        "✓ SDBOT_MODELS (xl.config): not set: diffusers takes "
        "stabilityai/stable-diffusion-xl-base-1.0's from the Hugging Face cache",
    ]


def test_single_file_configs_are_the_ones_diffusers_reads():
    from diffusers.loaders import single_file_utils

    paths = single_file_utils.DIFFUSERS_DEFAULT_PIPELINE_PATHS
    read = {
        family: paths[key]["pretrained_model_name_or_path"]
        for family, key in (("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base"))
    }
    assert read == SINGLE_FILE_CONFIGS


class FakeCuda:
    """torch.cuda as a machine with GPUs answers it."""

    def __init__(self, free: list[float]) -> None:
        self.free = free

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.free))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"Card {index}")
        monkeypatch.setattr(
            torch.cuda, "mem_get_info", lambda index=0: (int(self.free[index] * GIB), 24 * GIB)
        )
        monkeypatch.setattr(torch.version, "cuda", "12.8")


def test_gpus_their_free_memory_and_the_device_setting(monkeypatch):
    FakeCuda([20.0, 1.0]).patch(monkeypatch)
    found = [finding.line() for finding in torch_findings()]
    assert found[:3] == [
        f"✓ torch: {torch.__version__}, built for CUDA 12.8"
        + (", Apple MPS available" if torch.backends.mps.is_available() else ""),
        "✓ GPU 0: Card 0, 20.0 GiB free of 24.0 GiB",
        "✗ GPU 1: Card 1, 1.0 GiB free of 24.0 GiB: other programs hold its memory (nvidia-smi "
        "lists them): close them",
    ]
    assert (
        device_finding("cuda:1", describe=True).line()
        == "✓ SDBOT_DEVICE=cuda:1: CUDA GPU 1: Card 1"
    )
    assert device_finding("cuda:2").line() == (
        "✗ SDBOT_DEVICE=cuda:2: this machine has 2 CUDA GPU(s), numbered from 0: set "
        "SDBOT_DEVICE to one of cuda:0 to cuda:1"
    )


def test_no_cuda_and_the_device_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert device_finding("cuda").line() == (
        f"✗ SDBOT_DEVICE=cuda: torch {torch.__version__} sees no CUDA GPU (no driver, or "
        "CUDA_VISIBLE_DEVICES hides it): set SDBOT_DEVICE=auto (or cpu), or install a CUDA build "
        "of torch (README, GPUs and torch)"
    )
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_finding("mps").line() == (
        "✗ SDBOT_DEVICE=mps: this machine has no Apple MPS device: set SDBOT_DEVICE=auto (or cpu)"
    )


@pytest.mark.parametrize(
    ("token", "line"),
    [
        (
            None,
            "✗ SDBOT_DISCORD_TOKEN: not set: copy .env.example to .env and put the bot's token "
            "there",
        ),
        (f'"{TOKEN}"', "✗ SDBOT_DISCORD_TOKEN: has spaces or quotes around it: remove them"),
        (f"Bot {TOKEN}", '✗ SDBOT_DISCORD_TOKEN: starts with "Bot ": put the token alone'),
        (
            "bm90LWFuLWlk.GaBcDe.xxxx",
            "✗ SDBOT_DISCORD_TOKEN: its first part is not a bot's id: copy it again from the "
            "developer portal: your application, Bot, Reset Token",
        ),
    ],
)
def test_token_shapes(token, line):
    from pydantic import SecretStr

    finding = token_finding(SecretStr(token) if token is not None else None)
    assert finding.line() == line
    assert "GaBcDe" not in finding.line()  # never a part of the token itself


def test_doctor_from_the_console_exits_1_on_a_failure(good, tmp_path, monkeypatch, capsys):
    from bot.__main__ import main

    for key in ("SDBOT_DISCORD_TOKEN", "SDBOT_DATA_DIR", "SDBOT_MODELS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDBOT_DEVICE", "cpu")
    assert main(["doctor"]) == 1  # the default sd15 is not cached here, and there is no token
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in failures(lines)] == [
        "✗ SDBOT_MODELS (sd15)",
        "✗ SDBOT_DISCORD_TOKEN",
    ]
    assert doctor_findings(good())[0].line().startswith("✓ Python: 3.")


def test_the_memory_mode_each_model_would_run_in(monkeypatch):
    from bot.cli.checks.machine import memory_finding

    specs = {
        "sd15": ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "sdxl": ModelSpec("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
        "mine": ModelSpec("mine", "/models/mine.safetensors", memory="low"),
    }
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (7 * GIB, int(7.8 * GIB)))
    assert memory_finding("auto", "auto", specs).line() == (
        "✓ SDBOT_MEMORY=auto: on a 7.8 GiB card: mine low, sd15 high, sdxl medium"
    )
    assert memory_finding("medium", "cuda:0", specs).line() == (
        "✓ SDBOT_MEMORY=medium: on a 7.8 GiB card: mine low, sd15 medium, sdxl medium"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert memory_finding("auto", "auto", specs).line() == (
        "✓ SDBOT_MEMORY=auto: on no CUDA card (offloading needs one; modes only slice and "
        "tile): mine low, sd15 high, sdxl high"
    )


def test_describes_two_models_are_checked_as_a_pair(good, tmp_path, capsys):
    blip = tmp_path / "blip"
    blip.mkdir()
    (blip / "config.json").write_text("{}")
    assert failures(report(good(), capsys)[1]) == [], "neither: /describe is simply off"
    _, lines = report(good(captioner=str(blip)), capsys)
    assert f"✓ SDBOT_CAPTIONER: folder {blip}" in lines
    assert failures(lines) == [
        "✗ SDBOT_CLIP_RANKER: not set, and /describe needs it beside SDBOT_CAPTIONER: set "
        "SDBOT_CLIP_RANKER (a Hub id or folder), or empty SDBOT_CAPTIONER to leave /describe off"
    ]
    _, lines = report(good(captioner=str(blip), clip_ranker=str(tmp_path / "none")), capsys)
    assert [line for line in failures(lines) if "SDBOT_CLIP_RANKER" in line] == [
        f"✗ SDBOT_CLIP_RANKER: there is no file or folder {tmp_path / 'none'}: fix "
        "SDBOT_CLIP_RANKER (a Hub id or a diffusers folder)"
    ]


def test_an_ip_adapter_is_found_where_load_ip_adapter_looks(good, tmp_path, tiny_sd1, capsys):
    from engine.pipelines.tiny_ip_adapter import WEIGHT_NAME, save_tiny_ip_adapter

    adapter = save_tiny_ip_adapter(tmp_path / "ip", tiny_sd1)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "ip-adapter_sd15.safetensors").write_bytes((adapter / WEIGHT_NAME).read_bytes())
    hub = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
    settings = good(
        models={
            "tiny": {"source": str(tiny_sd1), "ip_adapter": str(adapter / WEIGHT_NAME)},
            "lonely": {"source": str(tiny_sd1), "ip_adapter": str(lonely)},
            "hub": {"source": str(tiny_sd1), "ip_adapter": hub},
        }
    )
    code, lines = report(settings, capsys)
    assert code == 1
    encoder = adapter / "image_encoder"
    assert (
        f"✓ SDBOT_MODELS (tiny.ip_adapter): ip-adapter_tiny, its image encoder in {encoder}"
        in lines
    )
    assert failures(lines) == [
        f"✗ SDBOT_MODELS (lonely.ip_adapter): {lonely} has no image_encoder/config.json: put the "
        "adapter's image encoder (a CLIP vision model folder) there, or name its folder in "
        '"ip_adapter_encoder"',
        "✗ SDBOT_MODELS (hub.ip_adapter): h94/IP-Adapter's models/ip-adapter_sd15.safetensors or "
        "its image encoder is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download "
        "them once with the network (hf download h94/IP-Adapter --include "
        "'models/ip-adapter_sd15.safetensors' 'models/image_encoder/*'), or point \"ip_adapter\" "
        "at a local file",
    ]
