"""A1111's prompt editing, alternation and AND: the schedules, read without torch.

The expected values are A1111's: the doctests of modules/prompt_parser.py (steps=10), the
example in its opening comment (steps=100), and cases whose result lark (A1111's parser, at
A1111's pinned version) gives the same at every hash seed.
"""

from __future__ import annotations

import pytest

from engine.api.checks import check_params
from engine.api.params import InvalidParams
from engine.api.prompt_schedule import (
    SECOND_ORDER_SAMPLERS,
    entry_at,
    parse_prompt,
    prompt_schedule,
    readings,
    schedule_steps,
    split_and,
    when_step,
)
from engine.api.prompt_syntax import parse_attention, unreadable_weight, weight_problem
from engine.api.samplers import SAMPLERS
from engine.api.specs import ModelSpec
from tests.factories import standard_params

ALTERNATING = [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]

A1111_DOCTESTS = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", ALTERNATING),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
]

# Checked against lark 1.1.2 running A1111's grammar and transformer (steps=10).
LARK_CHECKED = [
    # A1111's doctest says [(5, "a  c"), (10, "a {b|d{ c")] "# not handling this right now";
    # A1111 itself (lark 1.1.2) reads it as text: a `|` outside an alternation.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    # A1111 1.6+: a number with a `.` is a fraction of the steps, whatever its size.
    ("a [b:1.5] c", [(10, "a  c")]),
    ("a [b:1.0] c", [(10, "a  c")]),
    ("[a:b:0]", [(10, "b")]),
    ("[a:b:-1]", [(10, "b")]),
    ("[a:b:1e1]", [(10, "a")]),
    ("[a:b:+2]", [(2, "a"), (10, "b")]),
    ("[a:b:1.]", [(10, "a")]),
    ("[a:b:2.5e-1]", [(2, "a"), (10, "b")]),
    ("[a:b: 2 ]", [(2, "a"), (10, "b")]),
    # Not an edit: literal text, brackets and all.
    ("[a:b:2 x]", [(10, "[a:b:2 x]")]),
    ("[a:b:c:2]", [(10, "[a:b:c:2]")]),
    ("[a:b:x]", [(10, "[a:b:x]")]),
    ("[a:b]", [(10, "[a:b]")]),
    ("\\[a:b:2\\]", [(10, "\\[a:b:2\\]")]),
    ("[a\\:b:2]", [(2, ""), (10, "a\\:b")]),
    ("[a:b\\:2]", [(10, "[a:b\\:2]")]),
    # A prompt the grammar cannot read at all is one text, edits and all.
    ("a | b [c:2]", [(10, "a | b [c:2]")]),
    ("a \\\n[b:2]", [(10, "a \\\n[b:2]")]),
    ("a [b:2] \\", [(10, "a [b:2] \\")]),
    # Nesting, emphasis around edits, empty branches.
    ("[a|[b|c]]", [(step, "a" if step % 2 else "c") for step in range(1, 11)]),
    ("(a [b:c:2]:1.2)", [(2, "(a b:1.2)"), (10, "(a c:1.2)")]),
    ("([a:b:2]:1.2)", [(2, "(a:1.2)"), (10, "(b:1.2)")]),
    ("[a::2]", [(2, "a"), (10, "")]),
    ("[:b:2]", [(2, ""), (10, "b")]),
    ("[|]", [(step, "") for step in range(1, 11)]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_DOCTESTS + LARK_CHECKED)
def test_schedules_are_a1111s(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


def test_the_example_of_a1111s_parser():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_prompts_without_edits_are_one_text_as_written():
    for prompt in ("a (cat:1.2), [dog] BREAK x", "\\(literal\\]", "10:30 a", "a <b> c", ""):
        assert prompt_schedule(prompt, 20) == [(20, prompt)]


def test_loose_brackets_beside_an_edit_keep_the_edit():
    # lark reads these two ways, and which one depends on Python's hash seed (A1111 itself
    # reads them differently from one start to the next); the edit is kept here, always.
    assert prompt_schedule("[a:2]]", 10) == [(2, "]"), (10, "a]")]
    assert prompt_schedule("x [a:b:2] y)", 10) == [(2, "x a y)"), (10, "x b y)")]


def test_deep_or_long_prompts_parse_without_recursion():
    deep = "(" * 3000 + "[a:b:2]" + ")" * 3000
    assert prompt_schedule(deep, 10)[0] == (2, "(" * 3000 + "a" + ")" * 3000)
    unclosed = "(" * 5000 + "[a:b:2]"
    assert prompt_schedule(unclosed, 10) == [(2, "(" * 5000 + "a"), (10, "(" * 5000 + "b")]


def test_a1111s_step_arithmetic():
    assert when_step("0.5", 20) == 10
    assert when_step(".25", 30) == 7  # int(7.5)
    assert when_step("3", 20) == 3
    assert when_step("30", 20) == 20
    assert when_step("1.5", 20) == 20  # a `.`: a fraction, 30 steps, at most the 20
    assert when_step("-2", 20) == -1
    # The entry for a 0-based model call: the first whose end is at least that call.
    ends = [3, 10]
    assert [entry_at(ends, call) for call in range(0, 11)] == [0] * 4 + [1] * 7


def test_second_order_samplers_lay_schedules_over_twice_the_steps():
    assert schedule_steps("Heun", 10) == 20
    assert schedule_steps("DPM2", 10) == 20
    assert schedule_steps("Euler a", 10) == 10
    assert {"Heun", "DPM2", "DPM2 a", "DPM++ SDE"} <= SECOND_ORDER_SAMPLERS
    assert SECOND_ORDER_SAMPLERS & set(SAMPLERS) == {"Heun", "DPM2", "DPM2 a", "DPM++ SDE"}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat AND a dog :1.2", [("a cat", 1.0), (" a dog", 1.2)]),
        ("a cat:1.2", [("a cat", 1.2)]),  # A1111 reads a lone trailing weight too
        ("a AND b:abc", [("a", 1.0), (" b:abc", 1.0)]),  # not a number: text
        ("a AND b:1.2.3", [("a", 1.0), (" b:1.2.3", 1.0)]),
        (" x AND y AND", [(" x", 1.0), (" y", 1.0), ("", 1.0)]),
        ("(cat:1.2) AND dog: -0.5 ", [("(cat:1.2)", 1.0), (" dog", -0.5)]),
        ("a ANDb AND c", [("a ANDb", 1.0), (" c", 1.0)]),
        ("cute dog:0.95 cyborg:0.85", [("cute dog:0.95 cyborg", 0.85)]),
        ("a cat", [("a cat", 1.0)]),
    ],
)
def test_and_splits_as_a1111s_get_multicond_prompt_list(prompt, expected):
    assert [(part.text, part.weight) for part in split_and(prompt)] == expected


def test_readings_cover_every_branch():
    assert sorted(readings("a [(b:3):(c:4):2] [d|(e:5)]")) == ["a (b:3) d", "a (c:4) (e:5)"]
    assert readings("[x:[y:z:3]:2]") == ["x", "y", "z"]
    assert readings("a | b [c:2]") == ["a | b [c:2]"]
    assert parse_prompt("a | b") is None


# -- Weights A1111 cannot read, and the submit check ---------------------------------------

MODELS = {"sd15": ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5")}


def test_a1111s_attention_regex_takes_the_whole_weight():
    # A1111 fails on float("1.2.3"); the engine keeps reading it as text, as it always has.
    assert unreadable_weight("(cat:1.2.3)") == "1.2.3"
    assert unreadable_weight("(cat: . )") == "."
    assert [(f.text, f.weight) for f in parse_attention("(cat:1.2.3)")] == [("cat:1.2.3", 1.1)]
    # Outside a round bracket A1111 never reads it as a weight: text, and nothing fails.
    assert unreadable_weight("cat:1.2.3)") is None
    assert unreadable_weight("(cat:1.2) (dog:.5) (x:1.)") is None


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("(cat:1.2.3)", "The weight 1.2.3 in the prompt is not a number A1111 can read"),
        ("[(cat:1.2.3):dog:5]", "The weight 1.2.3 in the prompt is not a number A1111 can read"),
        ("[a:(b:20):5]", "A weight in the prompt (b at 20) must be a number between -10 and 10."),
        ("[a|(b:20)]", "A weight in the prompt (b at 20) must be a number between -10 and 10."),
        ("a AND b :20", "A weight in the prompt (b:20) must be a number between -10 and 10."),
        ("a cat:11", "A weight in the prompt (a cat:11) must be a number between -10 and 10."),
        ("[a:b:1e400]", "The step 1e400 of a prompt edit in the prompt is not a number of steps."),
        ("a AND (b:1.2.3)", "The weight 1.2.3 in the prompt is not a number A1111 can read"),
    ],
)
def test_numbers_a1111_cannot_use_are_refused_at_submit(prompt, message):
    with pytest.raises(InvalidParams) as refused:
        check_params(standard_params(prompt=prompt), MODELS, 200)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    "prompt",
    [
        "a [unbalanced",
        "[a:b:c:d]",
        "[a:b:soon]",
        "a AND b:abc",
        "a | b",
        "a cat AND a dog :-0.5",
        "[a:b:0.5] [c|d] (e:1.2)",
        "((a][:b:c [d:3]",
    ],
)
def test_what_a1111_reads_as_text_or_runs_is_accepted(prompt):
    check_params(standard_params(prompt=prompt), MODELS, 200)


def test_the_negative_prompt_is_not_split_at_and():
    # A1111 reads `:20` at the end of a negative prompt as text, not as an AND weight.
    assert weight_problem("ugly AND bad :20", "a1111", "negative prompt") is None
    assert weight_problem("ugly AND bad :20", "a1111", "prompt") is not None
    assert weight_problem("[ugly:(bad:20):3]", "a1111", "negative prompt") is not None


def test_edits_and_and_survive_the_infotext_as_written():
    from engine.api.infotext import build_infotext, params_from_infotext

    p = standard_params(
        prompt="a [cat:dog:0.5], [red|blue] AND a hat :1.2",
        negative="[ugly::3], (blurry:1.3)",
    )
    text = build_infotext(p, seed=p.seed, model_hash=None)
    assert text.splitlines()[0] == p.prompt
    assert params_from_infotext(text) == p


def test_auto_reads_weighted_ands_as_a1111s():
    from engine.api.prompt_syntax import resolve_syntax

    assert resolve_syntax("a cat:0.5 AND a dog:0.5", "auto") == "a1111"
    assert resolve_syntax("a cat:0.5 a dog:0.5", "auto") == "subprompt"


def test_edits_nested_past_the_limit_are_one_text():
    nested = "[" * 100 + "a" + ":1]" * 100
    assert len(prompt_schedule(nested, 10)) == 2
    too_deep = "[" * 101 + "a" + ":1]" * 101
    assert prompt_schedule(too_deep, 10) == [(10, too_deep)]
    assert weight_problem("[" * 2000 + "a" + ":1]" * 2000, "a1111") is None
