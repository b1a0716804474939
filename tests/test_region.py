"""Vary (Region)'s parts below Discord (issue 18): the grid cells members name, the mask made
from a segmenter's scores, and the tiny CLIPSeg loaded the way an owner's model is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.api.checks import check_region_options
from engine.api.params import InvalidParams
from engine.api.regions import CELLS, cell_box, parse_cell, region_problem
from engine.imaging import masks
from engine.pipelines.segment import load_segmenter
from engine.pipelines.tiny_segmenter import save_tiny_segmenter
from tests.factories import tiny_params


@pytest.mark.parametrize(
    ("typed", "cell"),
    [
        ("top-left", "top-left"),
        ("Top Left", "top-left"),
        ("left_top", "top-left"),
        ("top", "top"),
        ("top-center", "top"),
        ("middle", "center"),
        ("centre", "center"),
        ("center-left", "left"),
        ("right middle", "right"),
        ("bottom-right", "bottom-right"),
        ("1", "top-left"),
        ("5", "center"),
        ("9", "bottom-right"),
    ],
)
def test_grid_cells_as_members_type_them(typed, cell):
    assert parse_cell(typed) == cell


@pytest.mark.parametrize("typed", ["", "0", "10", "top-top", "upper left", "left right", "a b c"])
def test_a_cell_that_does_not_exist_is_named_with_the_ones_that_do(typed):
    with pytest.raises(ValueError, match="is not one of: top-left, top, top-right") as caught:
        parse_cell(typed)
    assert "or 1-9, in reading order" in str(caught.value)


def test_cells_split_the_picture_in_thirds():
    assert cell_box("top-left", 96, 60) == (0, 0, 32, 20)
    assert cell_box("center", 96, 60) == (32, 20, 64, 40)
    assert cell_box("bottom-right", 100, 100) == (66, 66, 100, 100)
    covered = np.zeros((60, 96), dtype=int)
    for name in CELLS:
        left, top, right, bottom = cell_box(name, 96, 60)
        covered[top:bottom, left:right] += 1
    assert (covered == 1).all(), "the nine cells tile the picture"


def test_a_jobs_region_is_checked_where_every_parameter_is():
    assert region_problem("the sky", "top") is None
    assert "limit is 200" in str(region_problem("x" * 201, None))
    assert "not one of" in str(region_problem(None, "upper"))
    assert "Say what to change" in str(region_problem("  ", None))
    with pytest.raises(InvalidParams, match="mask image cannot"):
        check_region_options(
            tiny_params(mode="inpaint", init_image="a", mask_image="b", mask_prompt="the sky")
        )
    with pytest.raises(InvalidParams, match="needs a region"):
        check_region_options(tiny_params(mode="inpaint", init_image="a", mask_preview=True))
    # Read back from infotext onto a text-to-image job, they are a record only.
    check_region_options(tiny_params(mask_prompt="the sky", mask_cell="top"))


def test_the_region_is_what_scores_above_the_threshold_grown_and_kept_in_its_cell():
    scores = np.zeros((90, 90), dtype=np.float32)
    scores[10:30, 10:80] = 0.9  # a band across the top
    mask = masks.region_mask((90, 90), scores, None)
    assert mask is not None
    region = np.asarray(mask) > 0
    grown = max(1, round(masks.REGION_GROWTH * 90))
    assert region[10:30, 10:80].all()
    assert region[10 - grown, 40], "grown by its margin"
    assert not region[10 - grown - 1, 40], "and no more"
    assert not region[60:].any()
    in_cell = masks.region_mask((90, 90), scores, cell_box("top-left", 90, 90))
    assert in_cell is not None
    inside = np.asarray(in_cell) > 0
    assert inside[10:30, 10:30].all()
    assert not inside[:, 30:].any()
    assert not inside[30:].any()


def test_a_region_of_next_to_nothing_is_none_and_a_cell_alone_is_the_cell():
    scores = np.full((100, 100), 0.1, dtype=np.float32)
    assert masks.region_mask((100, 100), scores, None) is None
    scores[50, 50] = 0.99  # one pixel of 10,000: a speck, not a region
    assert masks.region_mask((100, 100), scores, None) is None
    assert masks.region_mask((100, 100), scores, cell_box("top", 100, 100)) is None
    only_cell = masks.region_mask((90, 60), None, cell_box("bottom", 90, 60))
    assert only_cell is not None
    assert only_cell.getbbox() == (30, 40, 60, 60)


def test_the_preview_tints_the_region_and_dims_the_rest():
    picture = Image.new("RGB", (40, 40), (200, 200, 200))
    shown = Image.new("L", (40, 40), 0)
    shown.paste(255, (0, 0, 20, 40))
    preview = np.asarray(masks.preview_overlay(picture, shown)).astype(int)
    assert tuple(preview[5, 5]) == (228, 120, 160)
    assert tuple(preview[5, 35]) == (100, 100, 100)


@pytest.fixture(scope="module")
def clipseg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_segmenter(tmp_path_factory.mktemp("models") / "tiny-clipseg")


def test_the_tiny_clipseg_loads_as_an_owners_and_scores_every_pixel(clipseg, tmp_path):
    segmenter = load_segmenter(str(clipseg), torch.device("cpu"), torch.float32)
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((128, 96))
    with torch.inference_mode():
        scores = segmenter.probabilities(picture, "the sky")
        again = segmenter.probabilities(picture, "the sky")
    assert scores.shape == (96, 128)
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_array_equal(scores, again)
    mask = masks.region_mask(picture.size, scores, None)
    assert mask is not None
    share = (np.asarray(mask) > 0).mean()
    assert 0.05 < share < 0.95, "a region, not the whole picture or nothing"

    blind = load_segmenter(
        str(save_tiny_segmenter(tmp_path / "blind", blind=True)), torch.device("cpu"), torch.float32
    )
    with torch.inference_mode():
        assert (
            masks.region_mask(picture.size, blind.probabilities(picture, "the sky"), None) is None
        )
