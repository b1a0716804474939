"""The owner's folder of downloaded LoRA files (SDBOT_LORA_DIR) through SimCord: /dream with
`<lora:file:0.8>`, A1111's `Lora hashes`, /loras and the autocomplete, and files that cannot
be used (issue 16)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from data.jobs import JobStatus
from engine.api.infotext import parse_infotext
from engine.api.specs import ModelSpec
from engine.imaging.images import read_png_infotext
from engine.pipelines.loading import load_model
from tests.conftest import wait_until
from tests.discord_helpers import ephemeral_followups, has_result
from tests.kohya_files import addnet_hash, kohya_state, write_kohya
from tests.test_lora import make_lora

HUGE = 2 * 1024**3 + 1  # past the folder's 2 GB limit, as a sparse file: nothing is written


@pytest.fixture
def folder(tmp_path: Path, tiny_sd1: Path, tiny_sdxl: Path) -> Path:
    """A folder as an owner keeps one: subfolders, files from kohya's scripts, and a few
    that cannot be used."""
    root = tmp_path / "lora-folder"
    (root / "styles").mkdir(parents=True)
    sd1 = load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)
    xl = load_model(ModelSpec("xl", str(tiny_sdxl)), torch.device("cpu"), torch.float32)
    state = kohya_state(sd1.pipe, locon=True)
    write_kohya(root / "styles" / "detail.safetensors", state, ss_output_name="Detail Tweaker")
    write_kohya(root / "other.safetensors", kohya_state(sd1.pipe, seed=2, text=False))
    xl_state = kohya_state(xl.pipe, text=False)
    write_kohya(root / "xlstyle.safetensors", xl_state, ss_base_model_version="sdxl_base_v1-0")
    write_kohya(root / "xlplain.safetensors", xl_state, ss_output_name="xlplain")  # says nothing
    (root / "broken.safetensors").write_bytes(os.urandom(2048))
    loha = {"lora_unet_a.hada_w1_a": torch.ones(2, 2), "lora_unet_a.hada_w1_b": torch.ones(2, 2)}
    write_kohya(root / "loha.safetensors", loha)
    with (root / "huge.safetensors").open("wb") as handle:
        handle.truncate(HUGE)
    (root / "notes.txt").write_text("not a LoRA")
    return root


@pytest.fixture
def settings(make_settings, folder):
    return make_settings(lora_dir=folder)


async def balance(sim: Any, member: Any) -> int:
    return (await sim.bot.dreams.credits.account(member.id)).balance


async def dreamed(sim: Any, member: Any, prompt: str, **options: Any) -> tuple[np.ndarray, str]:
    result = await member.slash(sim.channel, "dream", prompt=prompt, seed=7, steps=2, **options)
    await wait_until(sim.env, lambda: has_result(result))
    png = await result.response.attachments[0].read()
    return np.asarray(Image.open(io.BytesIO(png))), read_png_infotext(png) or ""


def refusal(result: Any) -> str:
    if result.ephemeral:
        return result.response.content
    return ephemeral_followups(result)[-1]


async def test_a_folder_lora_changes_the_image_and_infotext_has_its_a1111_hash(sim, folder):
    alice = sim.member("alice")
    base, _ = await dreamed(sim, alice, "a cat")
    used, text = await dreamed(sim, alice, "a cat <lora:detail:0.8>")
    assert not np.array_equal(base, used)
    expected = addnet_hash(folder / "styles" / "detail.safetensors")
    assert f'Lora hashes: "detail: {expected}"' in text
    info = parse_infotext(text)
    assert info.prompt == "a cat <lora:detail:0.8>"  # the tag stays, as in A1111's
    again, _ = await dreamed(sim, alice, "a cat <lora:detail:0.8>")
    assert np.array_equal(used, again)  # and the same file gives the same image

    listed = (await alice.slash(sim.channel, "loras list")).response.content
    assert "**detail** · LoRA folder · `<lora:detail:0.8>` · family unknown" in listed
    assert "**xlstyle** · LoRA folder · `<lora:xlstyle:0.8>` · SDXL" in listed
    assert "~~broken~~ · is not a readable .safetensors file" in listed
    assert "notes" not in listed
    offered = await alice.autocomplete(sim.channel, "dream", "lora", "det", prompt="a cat")
    assert [choice["value"] for choice in offered] == ["detail"]


async def test_names_are_files_then_aliases_and_a_members_own_come_first(
    sim, folder, tmp_path, tiny_sd1
):
    alice, bob = sim.member("alice"), sim.member("bob")
    _, by_alias = await dreamed(sim, alice, "a cat <lora:Detail Tweaker:0.5>")
    detail = addnet_hash(folder / "styles" / "detail.safetensors")
    assert f'Lora hashes: "Detail Tweaker: {detail}"' in by_alias  # named as the tag writes it
    # The /dream option writes the name as chosen, as an A1111 tag names the file.
    _, by_option = await dreamed(sim, alice, "a cat", lora="Detail Tweaker")
    assert f'Lora hashes: "Detail Tweaker: {detail}"' in by_option

    sd1 = load_model(ModelSpec("tiny", str(tiny_sd1)), torch.device("cpu"), torch.float32)
    own = make_lora(sd1, tmp_path / "alice-detail.safetensors", seed=4)
    await sim.bot.library.loras.add(
        owner_id=alice.id,
        guild_id=sim.guild.id,
        name="detail",
        method="lora",
        token="zwxdetail",
        class_word="",
        base_model="tiny",
        path=str(own),
        job_id=None,
        metadata={},
    )
    _, mine = await dreamed(sim, alice, "a cat <lora:detail:1>")
    assert f'Lora hashes: "detail: {addnet_hash(own)}"' in mine
    _, theirs = await dreamed(sim, bob, "a cat <lora:detail:1>")  # alice's is private
    assert f'Lora hashes: "detail: {detail}"' in theirs


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("<lora:nothing:1>", "❌ There is no LoRA called 'nothing' that you may use"),
        ("<lora:../../etc/passwd:1>", "❌ There is no LoRA called '../../etc/passwd'"),
        ("<lora:broken:1>", "❌ The LoRA broken is not a readable .safetensors file."),
        (
            "<lora:huge:1>",
            "❌ The LoRA huge is 2.0 GB, over this bot's limit of 2 GB for a LoRA file.",
        ),
        ("<lora:loha:1>", "❌ The LoRA loha is a LyCORIS LoHa file, which this bot cannot"),
    ],
)
async def test_what_cannot_be_used_is_refused_before_any_charge(sim, tag, expected):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await alice.slash(sim.channel, "dream", prompt=f"a cat {tag}", steps=1)
    await wait_until(sim.env, lambda: bool(result.ephemeral or ephemeral_followups(result)))
    assert refusal(result).startswith(expected)
    assert "\n" not in refusal(result)
    sim.expected_errors()
    assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []
    assert await balance(sim, alice) == before


@pytest.mark.parametrize(
    ("name", "told"),
    [
        # Its metadata says SDXL; the model's family is only known for sure once loaded.
        ("xlstyle", "The LoRA xlstyle is for SDXL models; tiny is an SD 1.x model."),
        # Nothing in it says so: diffusers finds out.
        (
            "xlplain",
            "The LoRA xlplain could not be loaded: it was made for another kind of model "
            "(SD 1.x, SD 2.x and SDXL do not mix).",
        ),
    ],
)
async def test_a_lora_the_engine_cannot_apply_fails_only_its_job_refunded(sim, name, told):
    alice = sim.member("alice")
    before = await balance(sim, alice)
    result = await alice.slash(sim.channel, "dream", prompt=f"a cat <lora:{name}:1>", steps=1)
    await wait_until(sim.env, lambda: bool(ephemeral_followups(result)))
    assert ephemeral_followups(result) == [f"❌ {told} Your 1 credit was refunded."]
    await sim.bot.scheduler.drain()
    [job] = await sim.bot.scheduler.jobs.with_status(JobStatus.FAILED)
    assert job.error == told
    assert await balance(sim, alice) == before
    ok, _ = await dreamed(sim, alice, "a cat <lora:other:1>")  # the next LoRA still works
    assert ok.size


class TestAModelOfAConfiguredFamily:
    @pytest.fixture
    def settings(self, make_settings, folder, tiny_sd1):
        tiny = {"source": str(tiny_sd1), "family": "sd1", "default_size": (64, 64)}
        return make_settings(lora_dir=folder, models={"tiny": tiny})

    async def test_refuses_another_familys_lora_before_any_charge(self, sim):
        alice = sim.member("alice")
        before = await balance(sim, alice)
        result = await alice.slash(sim.channel, "dream", prompt="a cat <lora:xlstyle:1>")
        assert refusal(result) == "❌ The LoRA xlstyle is for SDXL models; tiny is an SD 1.x model."
        assert await sim.bot.scheduler.jobs.with_status(*JobStatus) == []
        assert await balance(sim, alice) == before


def test_the_lora_option_writes_the_files_name_as_chosen() -> None:
    from cogs.dream import with_lora_tag

    assert with_lora_tag("a cat", "Detail Tweaker", 0.8) == "a cat <lora:Detail Tweaker:0.8>"
    # What would end the tag early, or split its weight off, is taken out.
    assert with_lora_tag("a cat", "bad>name:2", 1.0) == "a cat <lora:badname2:1>"
