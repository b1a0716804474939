"""Prompt syntax as members write it, read without torch: A1111's attention weights and
the optimized fork's weighted sub-prompts (engine/pipelines/prompts.py turns them into embeddings).

The parsing half of the prompt encoder lives here so that the event loop can check a
prompt's numbers before a job is charged: a weight of `1e400` reads as infinity and turns
the picture to noise, so every weight is bounded when the job is submitted, with an answer
that names it, in every text prompt editing can make of the prompt and in its AND weights
(engine/api/prompt_schedule.py reads those); and a number A1111 itself fails on is refused,
since the infotext would then give a member nothing A1111 can generate from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine.api.prompt_schedule import SubPrompt, readings, split_and, when_problem

# How prompt text is read: A1111's emphasis syntax, the optimized fork's `text:weight`
# sub-prompts, or whichever one the text unambiguously uses.
PROMPT_SYNTAXES = ("a1111", "subprompt", "auto")
# The largest weight a prompt may give a word or a sub-prompt, either sign. A1111 sets no
# limit, but its users stay within about 0.5-2; past ten the embeddings leave the range
# the UNet was trained on and fp16 overflows to a black image.
MAX_PROMPT_WEIGHT = 10.0

ROUND_MULTIPLIER = 1.1  # `(word)`
SQUARE_MULTIPLIER = 1 / 1.1  # `[word]`
BREAK = "BREAK"
# A1111 marks a BREAK as the pair ("BREAK", -1) and recognises it by that exact weight, so a
# BREAK inside brackets (weight -1.1) is read as the word "break" with a negative weight.
# Odd, but prompts are pasted from A1111, so we keep its results.
_BREAK_WEIGHT = -1.0

# One token of A1111's attention syntax per match, in A1111's order of preference. The
# weight is A1111's `[+-]?[.\d]+`, so `(cat:1.2.3)` is one token here as there: A1111 then
# fails on float("1.2.3"), and the submit check refuses it (unreadable_weight) rather than
# write an infotext A1111 cannot generate from.
_ATTENTION_RE = re.compile(
    r"""
      \\(?P<escaped>[()\[\]\\]?)        # \( \) \[ \] \\ stand for themselves; a lone \ for nothing
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)   # `:1.3)` closes a round bracket
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+|:)
    """,
    re.VERBOSE,
)
_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(frozen=True, slots=True)
class Fragment:
    """A run of prompt text with its attention weight."""

    text: str
    weight: float

    @property
    def is_break(self) -> bool:
        return self.text == BREAK and self.weight == _BREAK_WEIGHT


@dataclass(slots=True)
class _Piece:
    text: str
    weight: float


# -- A1111's attention syntax ---------------------------------------------------------------


def parse_attention(text: str) -> list[Fragment]:
    """Split a prompt into runs of text and weights, with A1111's results.

    Brackets left open at the end are closed there, unmatched closing brackets are text, and
    `(word:abc)` keeps `:abc` as text with the bracket's 1.1. Where A1111 fails on a weight
    it cannot read (`(word:1.2.3)`, refused at submit) the engine reads `:1.2.3` as text
    with the bracket's 1.1, as this bot always has, so a stored job still runs.
    """
    return _parse_attention(text)[0]


def unreadable_weight(text: str) -> str | None:
    """The first `(word:weight)` weight A1111 would fail on (`1.2.3`, `.`), as written."""
    return _parse_attention(text)[1]


def _parse_attention(text: str) -> tuple[list[Fragment], str | None]:
    pieces: list[_Piece] = []
    round_opened: list[int] = []
    square_opened: list[int] = []
    unreadable: str | None = None

    for match in _ATTENTION_RE.finditer(text):
        token = match.group(0)
        weight = match.group("weight")
        if match.group("escaped") is not None:
            pieces.append(_Piece(match.group("escaped"), 1.0))
        elif token == "(":
            round_opened.append(len(pieces))
        elif token == "[":
            square_opened.append(len(pieces))
        elif weight is not None and round_opened:
            value = _float_or_none(weight)
            if value is None:
                unreadable = unreadable or weight
                _append_text(pieces, token[: token.rindex(")")])
                value = ROUND_MULTIPLIER
            _scale_from(pieces, round_opened.pop(), value)
        elif token == ")" and round_opened:
            _scale_from(pieces, round_opened.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_opened:
            _scale_from(pieces, square_opened.pop(), SQUARE_MULTIPLIER)
        else:
            _append_text(pieces, token)

    # A1111 closes what is left open, round brackets first, outermost first.
    for start in round_opened:
        _scale_from(pieces, start, ROUND_MULTIPLIER)
    for start in square_opened:
        _scale_from(pieces, start, SQUARE_MULTIPLIER)

    if not pieces:
        pieces.append(_Piece("", 1.0))
    fragments = [Fragment(piece.text, piece.weight) for piece in _merge_equal_weights(pieces)]
    return fragments, unreadable


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _scale_from(pieces: list[_Piece], start: int, multiplier: float) -> None:
    # Multiplying in place as brackets close, in A1111's order, gives its exact floats
    # (1.5730000000000004 for `(((house:1.3)))`), which the tests compare.
    for piece in pieces[start:]:
        piece.weight *= multiplier


def _append_text(pieces: list[_Piece], text: str) -> None:
    for index, part in enumerate(_BREAK_RE.split(text)):
        if index > 0:
            pieces.append(_Piece(BREAK, _BREAK_WEIGHT))
        pieces.append(_Piece(part, 1.0))


def _merge_equal_weights(pieces: list[_Piece]) -> list[_Piece]:
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece.weight == merged[-1].weight:
            merged[-1].text += piece.text
        else:
            merged.append(piece)
    return merged


# -- The optimized fork's sub-prompts ---------------------------------------------------------

# A colon that is a sub-prompt weight: after a word (not a digit, so `10:30` and `16:9` stay
# text) and followed by a number that ends at a space or at the end, as the fork reads it.
_WEIGHT_COLON_RE = re.compile(r"(?<=[^\d\s]):[-+]?(?:\d+\.?\d*|\.\d+)(?= |\Z)")
_A1111_MARKS = frozenset("()[]\\")
_AND_RE = re.compile(r"\bAND\b")


def split_subprompts(text: str) -> list[tuple[str, float]]:
    """`cute dog:0.95 cyborg:0.85` -> [("cute dog", 0.95), ("cyborg", 0.85)], as the fork does.

    A sub-prompt runs to the next colon; its weight runs from there to the next space. A
    weight that is not a number counts as 1.0 (the fork warns and does the same), and so
    does one that is infinite or NaN, which would turn the image to noise.
    """
    weighted, rest = _weighted_parts(text)
    parts = [(prompt, _weight(written)) for prompt, written in weighted]
    if rest:
        parts.append((rest, 1.0))
    return parts


def _weighted_parts(text: str) -> tuple[list[tuple[str, str]], str]:
    """(sub-prompt, its weight as written) up to the last colon, and the text after it."""
    parts: list[tuple[str, str]] = []
    rest = text
    while ":" in rest:
        prompt, rest = rest.split(":", 1)
        weight_text, _, rest = rest.partition(" ")
        parts.append((prompt, weight_text))
    return parts, rest


def _number(text: str) -> float:
    """A weight as written, infinite included; text that is not a number counts as 1.0."""
    try:
        return float(text)
    except ValueError:
        return 1.0


def _weight(text: str) -> float:
    value = _number(text)
    return value if math.isfinite(value) else 1.0


def uses_subprompt_syntax(text: str) -> bool:
    """Whether `text` can only be meant as weighted sub-prompts: two or more of them, every
    colon followed by a number, and none of A1111's brackets, escapes or ANDs (`a cat:0.5 AND
    a dog:0.5` is A1111's composable syntax)."""
    if _A1111_MARKS.intersection(text) or _AND_RE.search(text):
        return False
    if len(_WEIGHT_COLON_RE.findall(text)) != text.count(":"):
        return False
    return len(split_subprompts(text)) >= 2


def resolve_syntax(text: str, syntax: str) -> str:
    """ "a1111" or "subprompt" for this text; "auto" picks sub-prompts only when unambiguous."""
    if syntax not in PROMPT_SYNTAXES:
        raise ValueError(f"unknown prompt syntax {syntax!r}")
    if syntax == "auto":
        return "subprompt" if uses_subprompt_syntax(text) else "a1111"
    return syntax


# -- Checking a prompt's numbers ------------------------------------------------------------


def weight_problem(text: str, syntax: str, what: str = "prompt") -> str | None:
    """What is wrong with the first number in `text` that A1111 cannot read or that is not a
    finite weight within the bound, read as the engine will read it (`syntax` as the job has
    it); None if nothing. A1111's weights are bounded as they reach the embeddings, nested
    brackets multiplied, in every text an edit or alternation can make of the prompt; the
    prompt's AND weights too. Only the prompt is split at AND: A1111 reads the negative prompt
    as one text.

    A sentence, not an exception: engine/api/params.py raises it as InvalidParams, and imports
    this module (so this one cannot import that).
    """
    if resolve_syntax(text, syntax) == "subprompt":
        weighted, _ = _weighted_parts(text)
        weights = [(_number(written), f"{part.strip()}:{written}") for part, written in weighted]
        return _bound_problem(weights, what)
    parts = split_and(text) if what == "prompt" else [SubPrompt(text, 1.0)]
    if len(parts) > 1 or parts[0].weight_text is not None:
        and_weights = [(part.weight, f"{part.text.strip()}:{part.weight_text}") for part in parts]
        problem = _bound_problem(and_weights, what)
        if problem is not None:
            return problem
    for part in parts:
        problem = _edit_problem(part.text, what) or _attention_problem(part.text, what)
        if problem is not None:
            return problem
    return None


def _edit_problem(text: str, what: str) -> str | None:
    when = when_problem(text)
    if when is None:
        return None
    return f"The step {_shown(when)} of a prompt edit in the {what} is not a number of steps."


def _attention_problem(text: str, what: str) -> str | None:
    for reading in readings(text):
        unreadable = unreadable_weight(reading)
        if unreadable is not None:
            return (
                f"The weight {_shown(unreadable)} in the {what} is not a number A1111 can read; "
                "write it as (word:1.2)."
            )
        weights = [
            (fragment.weight, f"{fragment.text.strip()} at {fragment.weight:g}")
            for fragment in parse_attention(reading)
            if not fragment.is_break
        ]
        problem = _bound_problem(weights, what)
        if problem is not None:
            return problem
    return None


def _bound_problem(weights: list[tuple[float, str]], what: str) -> str | None:
    for weight, written in weights:
        if not math.isfinite(weight) or abs(weight) > MAX_PROMPT_WEIGHT:
            return (
                f"A weight in the {what} ({_shown(written)}) must be a number between "
                f"-{MAX_PROMPT_WEIGHT:g} and {MAX_PROMPT_WEIGHT:g}."
            )
    return None


def _shown(written: str) -> str:
    return written if len(written) <= 40 else written[:20] + "…" + written[-10:]
