"""A1111's prompt editing, alternation and AND, read without torch.

A1111 (modules/prompt_parser.py) reads a prompt in two passes before it encodes anything:

- `get_multicond_prompt_list` splits the positive prompt at every `AND` into sub-prompts,
  each with an optional trailing `:weight` (`a cat AND a dog :1.2`), for composable
  diffusion. It does so for every prompt: a lone `a cat:1.2` is one sub-prompt of weight 1.2.
- `get_learned_conditioning_prompt_schedules` reads each sub-prompt (and the negative
  prompt) with a lark grammar into a schedule: `[from:to:when]`, `[to:when]`, `[from::when]`
  and `[a|b]` become a list of (end step, text), each text then encoded on its own.

lark is not a dependency here, so the grammar's one reading is reproduced by hand: every
bracket group that the grammar can read as a whole is read so (groups never overlap, so the
reading is unique), other brackets and colons stay text, and a prompt the grammar cannot
read at all (a `|` outside an alternation, a backslash before a newline or at the end) is
one unscheduled text, as A1111 catches lark's error. The tests compare with A1111's
doctests and with cases checked against lark itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# A1111's re_AND and re_weight, character for character (`\d` and `\b` are Unicode-aware
# in both).
_AND_RE = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT_RE = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
# lark's common.SIGNED_NUMBER as lark orders its alternatives (longest first): the regex
# match at a position is the one token lark's dynamic lexer offers there.
_NUMBER_RE = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
)
_WHITESPACE_RE = re.compile(r"\s*")
_OPENERS = {"(": ")", "[": "]"}
# Edits nested deeper than this make the prompt one text. A1111's transformer recurses and
# fails long before any prompt a member writes gets near; the readers here recurse too.
MAX_EDIT_DEPTH = 100
_CLOSERS = frozenset(")]")

# A1111 samplers that call the model twice per step (`second_order` in
# modules/sd_samplers_kdiffusion.py): their schedule is laid over twice the steps
# (SamplerData.total_steps) and advanced at every model call.
SECOND_ORDER_SAMPLERS = frozenset({"Heun", "DPM2", "DPM2 a", "DPM++ SDE", "DPM++ 2S a", "Restart"})


@dataclass(frozen=True, slots=True)
class Scheduled:
    """`[before:after:when]`; `before` is None for `[after:when]`."""

    before: tuple[Node, ...] | None
    after: tuple[Node, ...]
    when: str  # the number as written: a `.` makes it a fraction of the steps


@dataclass(frozen=True, slots=True)
class Alternate:
    """`[a|b|...]`: option (step - 1) % n at each step."""

    options: tuple[tuple[Node, ...], ...]


Node = str | Scheduled | Alternate


@dataclass(frozen=True, slots=True)
class SubPrompt:
    """One part of a positive prompt between ANDs, with its composable weight."""

    text: str
    weight: float
    weight_text: str | None = None  # as written, for messages


# -- AND ----------------------------------------------------------------------------------


def split_and(prompt: str) -> list[SubPrompt]:
    """A1111's `get_multicond_prompt_list` for one prompt: the sub-prompts and weights.

    The weight is a trailing `:number` (no exponent); the text keeps its leading spaces and
    loses the trailing ones, exactly as A1111's lazy regex cuts it.
    """
    parts = []
    for part in _AND_RE.split(prompt):
        match = _SUBPROMPT_WEIGHT_RE.search(part)
        if match is None:  # the regex matches any string; kept as A1111 keeps the branch
            parts.append(SubPrompt(part, 1.0))
            continue
        text, written = match.groups()
        weight = float(written) if written is not None else 1.0
        parts.append(SubPrompt(text, weight, written))
    return parts


def is_plain_and(parts: Sequence[SubPrompt]) -> bool:
    """One sub-prompt of weight 1: A1111's guidance is then ordinary classifier-free guidance."""
    return len(parts) == 1 and parts[0].weight == 1.0


# -- The grammar --------------------------------------------------------------------------


class _Unreadable(Exception):
    """The text has no reading in A1111's grammar (lark raises; A1111 keeps it as it is)."""


def parse_prompt(text: str) -> tuple[Node, ...] | None:
    """The text as A1111's grammar reads it; None where it has no reading."""
    try:
        return _Parser(text).top()
    except _Unreadable:
        return None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.match = _matching_brackets(text)
        self.groups: dict[int, tuple[tuple[Node, ...], int] | None] = {}
        self.depth: dict[int, int] = {}  # edits nested in each group, itself included
        # Inner groups close first: reading them in that order needs no recursion.
        for start in sorted(self.match, key=self.match.__getitem__):
            self.groups[start] = self._group(start)

    def top(self) -> tuple[Node, ...]:
        nodes: list[Node] = []
        pos = 0
        while pos < len(self.text):
            char = self.text[pos]
            group = self.groups.get(pos)
            if group is not None:
                inner, pos = group
                nodes.extend(inner)
                continue
            if char == "|":
                raise _Unreadable
            width = self._escape_width(pos) if char == "\\" else 1
            nodes.append(self.text[pos : pos + width])
            pos += width
        return _merged(nodes)

    def _escape_width(self, pos: int) -> int:
        # `\\.` in the grammar's `plain`: a backslash takes the next character but a newline.
        if pos + 1 >= len(self.text) or self.text[pos + 1] == "\n":
            raise _Unreadable
        return 2

    def _group(self, start: int) -> tuple[tuple[Node, ...], int] | None:
        """A bracket group at `start` read as a whole, and where it ends; None if it cannot be."""
        end = self.match[start]
        segments: list[list[Node]] = [[]]
        separators: list[str] = []
        depth = 0
        pos = start + 1
        while pos < end:
            char = self.text[pos]
            if char in _OPENERS:
                group = self.groups.get(pos)
                if group is None:
                    return None  # a loose bracket inside a group: no reading as a group
                depth = max(depth, self.depth[pos])
                inner, pos = group
                segments[-1].extend(inner)
                continue
            if char in ":|":
                separators.append(char)
                segments.append([])
            elif char in _CLOSERS:
                return None
            elif char == "\\":
                segments[-1].append(self.text[pos : pos + self._escape_width(pos)])
                pos += 2
                continue
            else:
                segments[-1].append(char)
            pos += 1
        nodes = self._kind(self.text[start], segments, separators)
        if nodes is None:
            return None
        self.depth[start] = depth + (not isinstance(nodes[0], str))
        if self.depth[start] > MAX_EDIT_DEPTH:
            raise _Unreadable
        return nodes, end + 1

    @staticmethod
    def _kind(
        opener: str, segments: list[list[Node]], separators: list[str]
    ) -> tuple[Node, ...] | None:
        parts = [_merged(segment) for segment in segments]
        closer = _OPENERS[opener]
        if not separators or (opener == "(" and separators == [":"]):
            # `emphasized` keeps its brackets and colon: it is text to the schedule.
            joined: list[Node] = [opener]
            for index, part in enumerate(parts):
                joined.extend([":"] * (index > 0))
                joined.extend(part)
            return _merged([*joined, closer])
        if opener == "(":
            return None
        if all(separator == "|" for separator in separators):
            return (Alternate(tuple(parts)),)
        if "|" in separators or len(separators) > 2:
            return None
        when = _number(segments[-1])
        if when is None:
            return None
        before = parts[0] if len(separators) == 2 else None
        return (Scheduled(before, parts[-2], when),)


def _number(segment: Sequence[Node]) -> str | None:
    """The `when` of `[...:when]` as written, if the last part is `[WHITESPACE] NUMBER
    [WHITESPACE]` and nothing else."""
    if any(not isinstance(node, str) for node in segment):
        return None
    raw = "".join(str(node) for node in segment)
    start = _WHITESPACE_RE.match(raw)
    number = _NUMBER_RE.match(raw, start.end() if start else 0)
    if number is None or _WHITESPACE_RE.fullmatch(raw, number.end()) is None:
        return None
    return number.group(0)


def _matching_brackets(text: str) -> dict[int, int]:
    """Each `(` or `[` and the bracket that closes it, where the brackets between nest.

    Escaped brackets are text. A closer of the wrong kind leaves every bracket still open
    without a group: each of them would contain a loose bracket.
    """
    match: dict[int, int] = {}
    stack: list[int] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char in _OPENERS:
            stack.append(pos)
        elif char in _CLOSERS and stack:
            if _OPENERS[text[stack[-1]]] == char:
                match[stack.pop()] = pos
            else:
                stack.clear()
        pos += 1
    return match


def _merged(nodes: Sequence[Node]) -> tuple[Node, ...]:
    """Adjacent text joined, so equal readings compare equal."""
    out: list[Node] = []
    for node in nodes:
        if isinstance(node, str) and out and isinstance(out[-1], str):
            out[-1] += node
        elif node != "":
            out.append(node)
    return tuple(out)


# -- Schedules ----------------------------------------------------------------------------


def when_step(when: str, steps: int) -> int:
    """The step a `when` ends at, with A1111 1.6+'s arithmetic: a number with a `.` is a
    fraction of the steps, one without a step count; `min(steps, int(v))`.

    A1111 overflows on an infinite `1e400` (the submit check refuses it); here it is clamped
    first, which gives the same result for every number A1111 can read.
    """
    value = float(when)
    if "." in when:
        value *= steps
    return int(min(float(steps), max(-1.0, value)))


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """A1111's `get_learned_conditioning_prompt_schedules([text], steps)[0]`, as tuples."""
    nodes = parse_prompt(text)
    if nodes is None:
        return [(steps, text)]
    ends = {steps}
    for node in _walk(nodes):
        if isinstance(node, Scheduled):
            end = when_step(node.when, steps)
            if end >= 1:
                ends.add(end)
        else:
            ends.update(range(1, steps + 1))
    return [(end, _text_at(nodes, end, steps)) for end in sorted(ends)]


def entry_at(ends: Sequence[int], step: int) -> int:
    """Which schedule entry A1111 uses at a 0-based model call: the first whose end step is
    at least `step` (`reconstruct_cond_batch`), the first one past the last."""
    for index, end in enumerate(ends):
        if step <= end:
            return index
    return 0


def schedule_steps(sampler: str, steps: int) -> int:
    """The step count A1111 lays schedules over (`SamplerData.total_steps`)."""
    return steps * 2 if sampler in SECOND_ORDER_SAMPLERS else steps


def _walk(nodes: Sequence[Node]) -> Iterator[Scheduled | Alternate]:
    for node in nodes:
        if isinstance(node, Scheduled):
            yield node
            yield from _walk(node.before or ())
            yield from _walk(node.after)
        elif isinstance(node, Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _text_at(nodes: Sequence[Node], step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Scheduled):
            chosen = node.before or () if step <= when_step(node.when, steps) else node.after
            out.append(_text_at(chosen, step, steps))
        else:
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


# -- What a prompt can become, for the submit checks ------------------------------------------


def readings(text: str) -> list[str]:
    """Texts that between them contain every branch of every edit and alternation, so
    checking each covers whatever a schedule of any length makes of the prompt.

    Not every combination: a branch's weights come only from the brackets around it, and
    branches are balanced, so each branch has to appear once, not with every other choice.
    """
    nodes = parse_prompt(text)
    if nodes is None:
        return [text]
    return _variants(nodes)


def _variants(nodes: Sequence[Node]) -> list[str]:
    per_node = [_node_variants(node) for node in nodes]
    count = max((len(variants) for variants in per_node), default=1)
    return [
        "".join(variants[index] if index < len(variants) else variants[0] for variants in per_node)
        for index in range(count)
    ]


def _node_variants(node: Node) -> list[str]:
    if isinstance(node, str):
        return [node]
    branches = (
        [node.before or (), node.after] if isinstance(node, Scheduled) else list(node.options)
    )
    return [variant for branch in branches for variant in _variants(branch)]


def when_problem(text: str) -> str | None:
    """The first `when` A1111 cannot turn into a step (it overflows on `1e400`); None if none."""
    nodes = parse_prompt(text)
    for node in _walk(nodes or ()):
        if isinstance(node, Scheduled) and not math.isfinite(float(node.when)):
            return node.when
    return None
