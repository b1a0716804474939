"""Regions a member names in words for Vary (Region): the grid cells and the checks. No torch.

Discord cannot draw a mask, so a member says what to change: words a segmentation model
turns into a mask on the engine thread (engine/pipelines/segment.py), a cell of a 3x3 grid
over the picture, or both (the words' mask, kept inside the cell). A job carries the words
and the cell, never a mask file, so a reroll or a restart computes the same mask again.

Cells are named as a compass on the grid: `top-left`, `top`, `top-right`, `left`,
`center`, `right`, `bottom-left`, `bottom`, `bottom-right`. Also read: either word order
(`left top`), spaces or underscores for the dash, `middle` or `centre` for center (so
`top-center` is `top`), and the digits 1-9 in reading order (1 top-left, 5 center).
"""

from __future__ import annotations

import re

# CLIPSeg reads 77 tokens; a region is a few words ("the sky", "her red hat").
MAX_MASK_PROMPT = 200
GRID = 3

# (column, row) of each cell, in reading order.
CELLS: dict[str, tuple[int, int]] = {
    "top-left": (0, 0),
    "top": (1, 0),
    "top-right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom-left": (0, 2),
    "bottom": (1, 2),
    "bottom-right": (2, 2),
}
_ROWS = {"top": 0, "center": 1, "bottom": 2}
_COLUMNS = {"left": 0, "center": 1, "right": 2}
_SYNONYMS = {"middle": "center", "centre": "center", "mid": "center"}
_SEPARATORS = re.compile(r"[\s_\-]+")
_BY_PLACE = {place: name for name, place in CELLS.items()}

# Said on both sides: by a button when SDBOT_SEGMENTER is empty, by the engine to a job that
# needs words read when it has no segmenter (the setting removed while the job waited).
NOT_SET_UP = "Region edits are not set up here: this bot has no segmentation model."
NEITHER = 'Say what to change: a few words such as "the sky", or a grid cell such as top-left.'


class RegionProblem(ValueError):
    """A region a member can fix; the message is shown to them as is (engine/api/params.py
    raises it as InvalidParams, and this module cannot import that one)."""


def cell_problem_text(text: str) -> str:
    shown = text.strip()[:20]
    return f"Grid cell {shown!r} is not one of: {', '.join(CELLS)} (or 1-9, in reading order)."


def parse_cell(text: str) -> str:
    """A cell as a member types it, by its name in CELLS; RegionProblem when it is none."""
    cleaned = text.strip().lower()
    if cleaned.isdigit() and len(cleaned) == 1 and cleaned != "0":
        return list(CELLS)[int(cleaned) - 1]
    words = [_SYNONYMS.get(word, word) for word in _SEPARATORS.split(cleaned) if word]
    place = _place(words)
    if place is None:
        raise RegionProblem(cell_problem_text(text))
    return _BY_PLACE[place]


def _place(words: list[str]) -> tuple[int, int] | None:
    """(column, row) for one or two compass words; None for anything else."""
    if len(words) == 1:
        word = words[0]
        if word in _ROWS:
            return 1, _ROWS[word]
        return (_COLUMNS[word], 1) if word in _COLUMNS else None
    if len(words) != 2:
        return None
    for row, column in (words, words[::-1]):
        if row in _ROWS and column in _COLUMNS:
            return _COLUMNS[column], _ROWS[row]
    return None


def cell_box(cell: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The cell's pixels in a picture of this size: (left, top, right, bottom), PIL's box."""
    column, row = CELLS[cell]
    return (
        column * width // GRID,
        row * height // GRID,
        (column + 1) * width // GRID,
        (row + 1) * height // GRID,
    )


def region_problem(words: str | None, cell: str | None) -> str | None:
    """What is wrong with a job's region (its words and cell as stored); None if nothing."""
    if words is not None:
        if not words.strip():
            return NEITHER
        if len(words) > MAX_MASK_PROMPT:
            return f"The region is {len(words)} characters; the limit is {MAX_MASK_PROMPT}."
    if cell is not None and cell not in CELLS:
        return cell_problem_text(cell)
    return None


def describe_region(words: str | None, cell: str | None) -> str:
    """ "the sky" in the top-left cell: how failures and previews name a region."""
    if words and cell:
        return f'"{words}" in the {cell} cell'
    if words:
        return f'"{words}"'
    return f"the {cell} cell"
