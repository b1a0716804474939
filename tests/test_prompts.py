"""Prompts as members write them: A1111's syntax and encoding, the optimized fork's
sub-prompts, and the options that come with them (clip skip, prompt syntax, variations)."""

from __future__ import annotations

import random

import pytest
import torch

from engine.api.checks import check_params
from engine.api.params import GenerationParams, InvalidParams
from engine.api.prompt_syntax import (
    BREAK,
    parse_attention,
    resolve_syntax,
    split_subprompts,
    uses_subprompt_syntax,
)
from engine.api.specs import ModelSpec
from engine.pipelines.prompts import CHUNK_LENGTH, PromptEncoder, apply_emphasis, text_encoders
from engine.pipelines.tiny import build_tiny_sd1, build_tiny_sdxl
from tests.factories import standard_params

# In the tiny vocabulary every letter is one token and "cat", "dog", "the" are one each.
A, COMMA = 353, 300
SEQUENCE = CHUNK_LENGTH + 2


def pairs(text: str) -> list[tuple[str, float]]:
    return [(fragment.text, fragment.weight) for fragment in parse_attention(text)]


# -- Parsing: A1111's `parse_prompt_attention`, result for result --------------------------

# The first six are the examples of A1111's own docstring, floats included.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    ("((word))", [("word", 1.2100000000000002)]),
    ("[word]", [("word", 0.9090909090909091)]),
    ("[[word]]", [("word", 0.8264462809917354)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 1.3 )", [("word", 1.3)]),
    ("(word:.5)", [("word", 0.5)]),
    ("(word:-1)", [("word", -1.0)]),
    ("((a) b:1.5)", [("a", 1.6500000000000001), (" b", 1.5)]),
    ("[a (b) c]", [("a ", 0.9090909090909091), ("b", 1.0), (" c", 0.9090909090909091)]),
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
]

ESCAPES = [
    ("\\(a\\) \\[b\\]", [("(a) [b]", 1.0)]),
    ("back\\\\slash", [("back\\slash", 1.0)]),
    ("lone \\ slash", [("lone  slash", 1.0)]),  # A1111 drops a backslash that escapes nothing
    ("(\\(a\\))", [("(a)", 1.1)]),
]

UNBALANCED = [
    ("((a)", [("a", 1.2100000000000002)]),
    ("[a", [("a", 0.9090909090909091)]),
    ("([a", [("a", 1.0)]),  # round closed first: 1.1, then square: 1.1 / 1.1
    ("a)b]", [("a)b]", 1.0)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),
    ("(a]", [("a]", 1.1)]),
]

MALFORMED_WEIGHTS = [
    ("(word:abc)", [("word:abc", 1.1)]),
    ("(word:)", [("word:", 1.1)]),
    ("(word:1e3)", [("word:1e3", 1.1)]),
    # A1111 raises ValueError on these three; they read like `(word:abc)` here.
    ("(word:1.2.3)", [("word:1.2.3", 1.1)]),
    ("(word:.)", [("word:.", 1.1)]),
    ("(a:1..)", [("a:1..", 1.1)]),
    ("[word:0.5]", [("word:0.5", 0.9090909090909091)]),  # a weight needs round brackets
]

BREAKS = [
    ("a BREAK b", [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]),
    ("a\nBREAK\nb", [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]),
    ("aBREAKb break", [("aBREAKb break", 1.0)]),
    # Inside brackets A1111's marker gets multiplied and is no longer a BREAK.
    ("(a BREAK b)", [("a", 1.1), (BREAK, -1.1), ("b", 1.1)]),
]


@pytest.mark.parametrize(
    ("text", "expected"), A1111_EXAMPLES + ESCAPES + UNBALANCED + MALFORMED_WEIGHTS + BREAKS
)
def test_parse_attention_gives_a1111s_results(text, expected):
    assert pairs(text) == expected


def test_break_markers_are_recognised_as_a1111_recognises_them():
    fragments = parse_attention("a BREAK b (c BREAK d)")
    assert [f.is_break for f in fragments] == [False, True, False, False, False, False]


# -- 75-token chunks ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return build_tiny_sd1(tmp_path_factory.mktemp("sd1"))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl"))


def chunks_of(pipe, text: str) -> list[list[int]]:
    [encoder] = text_encoders(pipe, "sd1")
    return [list(chunk.tokens) for chunk in encoder.chunks(parse_attention(text))]


def words(word: str, count: int) -> str:
    return " ".join([word] * count)


def test_a_prompt_of_75_tokens_is_one_chunk_and_76_is_two(sd1):
    assert chunks_of(sd1, words("a", 75)) == [[A] * 75]
    assert chunks_of(sd1, words("a", 76)) == [[A] * 75, [A]]
    assert chunks_of(sd1, words("a", 150)) == [[A] * 75, [A] * 75]
    assert chunks_of(sd1, "") == [[]]


def test_a_chunk_boundary_moves_back_to_a_comma_within_20_tokens(sd1):
    b = chunks_of(sd1, "b")[0][0]
    near = chunks_of(sd1, words("a", 70) + ", " + words("b", 10))
    assert near == [[A] * 70 + [COMMA], [b] * 10]
    far = chunks_of(sd1, words("a", 50) + ", " + words("b", 30))  # comma 25 tokens back
    assert far == [[A] * 50 + [COMMA] + [b] * 24, [b] * 6]


def test_break_starts_a_new_chunk(sd1):
    b = chunks_of(sd1, "b")[0][0]
    assert chunks_of(sd1, "a BREAK b") == [[A], [b]]
    assert chunks_of(sd1, "a BREAK") == [[A]]  # nothing after it: no empty chunk
    assert chunks_of(sd1, "BREAK a") == [[], [A]]  # A1111 closes the empty chunk too
    # A full chunk is closed by the BREAK itself, not once more.
    assert chunks_of(sd1, words("a", 75) + " BREAK b") == [[A] * 75, [b]]


def test_weights_follow_their_tokens_into_chunks(sd1):
    [encoder] = text_encoders(sd1, "sd1")
    [chunk] = encoder.chunks(parse_attention("a (a:1.5) [a]"))
    assert chunk.weights == (1.0, 1.5, 0.9090909090909091)


# -- Encoding ------------------------------------------------------------------------------


def test_weights_of_one_give_diffusers_own_embeddings_sd1(sd1):
    encoder = PromptEncoder(sd1, "sd1")
    pair = encoder.encode_pair("the cat, a dog", "ugly, blurry")
    positive, negative = sd1.encode_prompt("the cat, a dog", "cpu", 1, True, "ugly, blurry")
    assert torch.equal(pair.positive.embeds, positive)
    assert torch.equal(pair.negative.embeds, negative)
    # Brackets with a weight of 1 change nothing.
    assert torch.equal(encoder.encode("(the cat:1.0), a dog").embeds, positive)


def test_weights_of_one_give_diffusers_own_embeddings_sdxl(sdxl):
    encoder = PromptEncoder(sdxl, "sdxl")
    pair = encoder.encode_pair("the cat, a dog", "ugly")
    expected = sdxl.encode_prompt("the cat, a dog", device="cpu", negative_prompt="ugly")
    got = (pair.positive.embeds, pair.negative.embeds, pair.positive.pooled, pair.negative.pooled)
    for ours, theirs in zip(got, expected, strict=True):
        assert torch.equal(ours, theirs)
    # An empty negative prompt is zeros, as A1111 and diffusers' force_zeros make it.
    empty = encoder.encode_pair("the cat", "")
    _, zeros, _, zero_pooled = sdxl.encode_prompt("the cat", device="cpu", negative_prompt=None)
    assert torch.equal(empty.negative.embeds, zeros)
    assert torch.equal(empty.negative.pooled, zero_pooled)
    assert not empty.negative.embeds.any()


def test_emphasis_scales_tokens_and_restores_the_mean(sd1):
    encoder = PromptEncoder(sd1, "sd1")
    plain = encoder.encode("a cat").embeds[0]
    emphasised = encoder.encode("a (cat:1.5)").embeds[0]
    assert not torch.equal(plain, emphasised)
    torch.testing.assert_close(emphasised.mean(), plain.mean())
    weights = torch.ones(SEQUENCE)
    weights[2] = 1.5  # BOS, "a", "cat"
    scaled = plain * weights[:, None]
    torch.testing.assert_close(emphasised, scaled * (plain.mean() / scaled.mean()))
    torch.testing.assert_close(apply_emphasis(plain, weights), emphasised)
    # Weaker and stronger differ from each other in the direction asked for.
    weaker = encoder.encode("a [cat]").embeds[0]
    assert not torch.equal(weaker, plain)


def test_clip_skip_2_reads_the_penultimate_layer(sd1):
    skip1 = PromptEncoder(sd1, "sd1", clip_skip=1).encode("a cat").embeds
    skip2 = PromptEncoder(sd1, "sd1", clip_skip=2).encode("a cat").embeds
    assert not torch.equal(skip1, skip2)
    # diffusers counts from the penultimate layer: its clip_skip=1 is A1111's 2.
    expected, _ = sd1.encode_prompt("a cat", "cpu", 1, False, clip_skip=1)
    assert torch.equal(skip2, expected)
    # Deeper than the model is tall reads its first hidden state instead of failing.
    assert PromptEncoder(sd1, "sd1", clip_skip=12).encode("a cat").embeds.shape == skip1.shape


def test_clip_skip_is_not_applied_to_sdxl(sdxl):
    skip1 = PromptEncoder(sdxl, "sdxl", clip_skip=1).encode("a cat")
    skip2 = PromptEncoder(sdxl, "sdxl", clip_skip=2).encode("a cat")
    assert torch.equal(skip1.embeds, skip2.embeds)


def test_long_prompts_are_chunks_concatenated_and_pairs_are_padded(sd1, sdxl):
    encoder = PromptEncoder(sd1, "sd1")
    long_prompt = words("a", 76)
    pair = encoder.encode_pair(long_prompt, "ugly")
    assert pair.positive.embeds.shape == (1, 2 * SEQUENCE, 32)
    assert pair.negative.embeds.shape == (1, 2 * SEQUENCE, 32)
    first_chunk = encoder.encode(words("a", 75)).embeds
    torch.testing.assert_close(pair.positive.embeds[:, :SEQUENCE], first_chunk)
    assert torch.equal(pair.negative.embeds[:, :SEQUENCE], encoder.encode("ugly").embeds)
    assert torch.equal(pair.negative.embeds[:, SEQUENCE:], encoder.encode("").embeds)
    # SDXL: both encoders side by side per chunk; the pooled embedding is the first chunk's.
    xl = PromptEncoder(sdxl, "sdxl")
    xl_long = xl.encode(long_prompt)
    assert xl_long.embeds.shape == (1, 2 * SEQUENCE, 32 + 64)
    torch.testing.assert_close(xl_long.pooled, xl.encode(words("a", 75)).pooled)


def test_break_chunks_encode_like_their_own_prompts(sd1):
    encoder = PromptEncoder(sd1, "sd1")
    broken = encoder.encode("a cat BREAK the dog").embeds
    assert broken.shape[1] == 2 * SEQUENCE
    torch.testing.assert_close(broken[:, SEQUENCE:], encoder.encode("the dog").embeds)


# -- The optimized fork's sub-prompts --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("cute dog:0.95 cyborg:0.85", [("cute dog", 0.95), ("cyborg", 0.85)]),
        (
            "tabby cat:0.25 white duck:0.75 hybrid",
            [("tabby cat", 0.25), ("white duck", 0.75), ("hybrid", 1.0)],
        ),
        ("a:1 b:-0.5", [("a", 1.0), ("b", -0.5)]),
        ("a:x b", [("a", 1.0), ("b", 1.0)]),  # not a number: 1.0, as the fork does
        ("cat: 0.5 dog", [("cat", 1.0), ("0.5 dog", 1.0)]),
        ("cat:inf dog", [("cat", 1.0), ("dog", 1.0)]),
        ("no weights", [("no weights", 1.0)]),
        ("", []),
    ],
)
def test_split_subprompts_as_the_optimized_fork(text, parts):
    assert split_subprompts(text) == parts


@pytest.mark.parametrize(
    ("text", "unambiguous"),
    [
        ("cute dog:0.95 cyborg:0.85", True),
        ("a cat:1.5 a dog", True),
        ("cat:-1 dog:2", True),
        ("a cat", False),
        ("cat:0.5", False),  # one sub-prompt: the same either way
        ("(cat:1.2) dog", False),
        ("cat:1.2 (dog)", False),
        ("at 10:30 pm", False),
        ("16:9 landscape", False),
        ("photo: a cat", False),
        ("cat:0.5, dog:1", False),
        ("https://example.com", False),
    ],
)
def test_subprompt_syntax_is_detected_only_when_unambiguous(text, unambiguous):
    assert uses_subprompt_syntax(text) is unambiguous
    assert resolve_syntax(text, "auto") == ("subprompt" if unambiguous else "a1111")
    assert resolve_syntax(text, "a1111") == "a1111"


def test_subprompts_are_a_normalized_weighted_sum(sd1, sdxl):
    for pipe, family in ((sd1, "sd1"), (sdxl, "sdxl")):
        encoder = PromptEncoder(pipe, family)
        got = encoder.encode("cute dog:0.95 cyborg:0.85", "subprompt")
        dog, cyborg = encoder.encode("cute dog"), encoder.encode("cyborg")
        expected = (0.95 * dog.embeds + 0.85 * cyborg.embeds) / 1.8
        torch.testing.assert_close(got.embeds, expected)
        if family == "sdxl":
            torch.testing.assert_close(got.pooled, (0.95 * dog.pooled + 0.85 * cyborg.pooled) / 1.8)
        # "auto" reads the same text the same way; "a1111" reads the colons as text.
        assert torch.equal(encoder.encode("cute dog:0.95 cyborg:0.85", "auto").embeds, got.embeds)
        assert not torch.equal(encoder.encode("cute dog:0.95 cyborg:0.85").embeds, got.embeds)


def test_negative_and_cancelling_subprompt_weights(sd1):
    encoder = PromptEncoder(sd1, "sd1")
    a, b = encoder.encode("a").embeds, encoder.encode("b").embeds
    torch.testing.assert_close(
        encoder.encode("a:1 b:-0.5", "subprompt").embeds, (a - 0.5 * b) / 0.5
    )
    # Weights summing to 0 cannot be normalized; they are used as given instead of failing.
    torch.testing.assert_close(encoder.encode("a:1 b:-1", "subprompt").embeds, a - b)
    # A single sub-prompt is the whole text, colon included, as in the fork.
    assert torch.equal(encoder.encode("a:0.5", "subprompt").embeds, encoder.encode("a:0.5").embeds)


# -- Nothing a member types makes encoding fail ---------------------------------------------


def malformed_prompts() -> list[str]:
    rng = random.Random(7)
    alphabet = ["(", ")", "[", "]", ":", "\\", " ", "BREAK", ",", "1.2", "-", ".", "cat", "é", "\n"]
    fuzzed = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(30)]
    return [
        *fuzzed,
        "(" * 200,
        ")" * 200 + "]" * 200,
        "(a:1.2.3) (b:) [c:d:0.5] [e|f] a AND b \\",
        "BREAK BREAK BREAK",
        ":::: :1: ::0.5 a:-0 b:0",
        "🐱 ünïcödé " * 20,
        "".join(rng.choice(alphabet) for _ in range(1200))[:5000],
        ("masterpiece, (best quality:1.2), " * 200)[:5000],
    ]


@pytest.mark.parametrize("syntax", ["a1111", "subprompt", "auto"])
def test_malformed_and_very_long_prompts_never_raise(sd1, sdxl, syntax):
    prompts = malformed_prompts()
    assert len(prompts[-1]) == 5000
    for pipe, family in ((sd1, "sd1"), (sdxl, "sdxl")):
        encoder = PromptEncoder(pipe, family, clip_skip=2)
        for text in prompts:
            pair = encoder.encode_pair(text, text[::-1], syntax)
            assert pair.positive.embeds.shape == pair.negative.embeds.shape
            assert pair.positive.embeds.shape[1] % SEQUENCE == 0
    assert PromptEncoder(sd1, "sd1").encode(prompts[-1]).chunks > 10


# -- The options in GenerationParams ---------------------------------------------------------

MODELS = {"sd15": ModelSpec("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5")}


def good(**overrides) -> GenerationParams:
    return standard_params(**overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clip_skip": 0}, "Clip skip must be 1-12, not 0."),
        ({"clip_skip": 13}, "Clip skip must be 1-12, not 13."),
        (
            {"prompt_syntax": "compel"},
            "Unknown prompt syntax 'compel'. Syntaxes: a1111, subprompt, auto.",
        ),
        (
            {"variation_strength": 1.5, "variation_seed": 1},
            "Variation strength must be 0-1, not 1.5.",
        ),
        ({"variation_strength": -0.1, "variation_seed": 1}, "Variation strength must be 0-1"),
        ({"variation_seed": 2**32}, "Variation seed must be 0-4294967295"),
        ({"variation_strength": 0.5}, "A variation strength above 0 needs a variation seed."),
    ],
)
def test_bad_prompt_options_are_named(overrides, message):
    with pytest.raises(InvalidParams, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_params(good(**overrides), MODELS, 100)


def test_good_prompt_options_pass_and_old_rows_still_load():
    check_params(good(clip_skip=12, prompt_syntax="auto"), MODELS, 100)
    check_params(good(variation_seed=0, variation_strength=1.0), MODELS, 100)
    check_params(good(variation_seed=5), MODELS, 100)  # a seed without strength: no variation
    old_row = {k: v for k, v in good().to_dict().items() if k in ("prompt", "negative", "seed")}
    old_row |= dict(steps=20, cfg=7.0, width=512, height=512, sampler="Euler a", count=1, model="m")
    params = GenerationParams.from_dict(old_row)
    assert (params.clip_skip, params.prompt_syntax) == (1, "a1111")
    assert (params.variation_seed, params.variation_strength) == (None, 0.0)


def test_variation_seeds_count_up_while_the_seed_stays_as_in_a1111():
    plain = good(seed=10, count=3)
    assert (plain.seeds, plain.variation_seeds) == ([10, 11, 12], [None, None, None])
    varied = good(seed=10, count=3, variation_seed=2**32 - 2, variation_strength=0.3)
    assert varied.seeds == [10, 10, 10]
    assert varied.variation_seeds == [2**32 - 2, 2**32 - 1, 0]
    # Strength 0 is no variation: A1111 counts the seed up as usual.
    assert good(seed=10, count=2, variation_seed=5).seeds == [10, 11]


def test_prompt_options_do_not_split_batches():
    base = good()
    for other in (
        good(prompt="a dog", clip_skip=2),
        good(prompt_syntax="subprompt"),
        good(seed=4, variation_seed=9, variation_strength=0.5),
    ):
        assert other.batch_key() == base.batch_key()


def test_tiny_models_are_what_these_tests_assume(sd1):
    assert sd1.tokenizer.convert_tokens_to_ids([",</w>", "a</w>"]) == [COMMA, A]
