"""A server's rules as plain functions: word lists, role limits, prices (bot/community/policy)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from bot.community.guilds import (
    GuildPolicy,
    GuildSettingsService,
    SettingRefused,
    WordRule,
    WordsAction,
    check_word,
)
from bot.community.policy import (
    Limits,
    apply_words,
    check_limits,
    job_price,
    limits_for,
    tidy_prompt,
)
from bot.jobs.contracts import JobRefused
from data.guilds import GuildSettingsRepository, RoleLimits
from data.store import Store
from tests.factories import tiny_params

POLICY = GuildPolicy(buttons_for_anyone=False, max_steps=20, max_count=2, max_pixels=64 * 64)


def words(*entries: str, action: WordsAction = WordsAction.NEGATIVE) -> GuildPolicy:
    rules = tuple(WordRule(e[1:-1], True) if e.startswith("/") else WordRule(e) for e in entries)
    return replace(POLICY, words=rules, words_action=action)


@pytest.mark.parametrize(
    ("prompt", "negative", "expected_prompt", "expected_negative"),
    [
        ("a cat, gore, sunset", "", "a cat, sunset", "gore"),
        ("(gore:1.4) cat", "blurry", "cat", "blurry, gore"),
        ("Gore and GORE", "", "and", "Gore"),
        ("bloody blood cat", "", "cat", "bloody, blood"),
    ],
)
def test_words_move_to_the_negative_prompt(prompt, negative, expected_prompt, expected_negative):
    params = tiny_params(prompt=prompt, negative=negative)
    moved, note = apply_words(params, words("gore", r"/blood\w*/"), 1500)
    assert (moved.prompt, moved.negative) == (expected_prompt, expected_negative)
    assert note.startswith("Moved to the negative prompt by this server's rules: ")


def test_words_refuse_names_the_words_and_whole_words_only():
    policy = words("gore", "c++", action=WordsAction.REFUSE)
    with pytest.raises(JobRefused, match=r"does not allow gore, c\+\+ in prompts"):
        apply_words(tiny_params(prompt="gore in c++"), policy, 1500)
    same, note = apply_words(tiny_params(prompt="gorey c+ code"), policy, 1500)
    assert (same.prompt, note) == ("gorey c+ code", "")


def test_moving_words_never_makes_the_negative_prompt_too_long():
    params = tiny_params(prompt="gore cat", negative="x" * 10)
    with pytest.raises(JobRefused, match="over 12 characters"):
        apply_words(params, words("gore"), 12)


@pytest.mark.parametrize(
    ("entry", "regex", "message"),
    [
        ("", False, "The word is empty."),
        ("x" * 101, False, "at most 100"),
        ("[unclosed", True, "not a valid pattern"),
        ("(a+)+$", True, "repeats a repeated group"),
        (r"(\w*)*x", True, "repeats a repeated group"),
        ("(x{2,})+", True, "repeats a repeated group"),
    ],
)
def test_bad_words_and_patterns_are_refused(entry, regex, message):
    with pytest.raises(SettingRefused, match=message):
        check_word(entry, regex)


def test_plain_words_are_escaped():
    rule = check_word("a.b", regex=False)
    assert rule.pattern().search("a.b") is not None
    assert rule.pattern().search("axb") is None


def test_tidy_prompt_drops_empty_emphasis_and_stray_commas():
    assert tidy_prompt(" ,a cat, ( :1.2) , , sunset [] ,") == "a cat, sunset"


def test_the_most_generous_role_applies():
    roles = [
        RoleLimits(1, max_steps=50, price_factor=0.8),
        RoleLimits(2, max_steps=30, max_count=4, price_factor=0.5),
        RoleLimits(3, max_steps=150),  # not the member's
        RoleLimits(4, max_pixels=128 * 128, max_pending=9),
    ]
    limits = limits_for(POLICY, roles, frozenset({1, 2, 4}))
    assert limits == Limits(50, 128 * 128, 4, 9, 0.5)
    assert limits_for(POLICY, roles, frozenset()) == Limits(20, 64 * 64, 2, 3, 1.0)
    # A role never lowers the server's own caps.
    assert limits_for(POLICY, [RoleLimits(5, max_steps=5)], frozenset({5})).max_steps == 20


def test_limits_name_the_value_over_them():
    limits = limits_for(POLICY, [], frozenset())
    with pytest.raises(JobRefused, match="30 steps is over this server's limit of 20"):
        check_limits(tiny_params(steps=30), POLICY, limits)
    with pytest.raises(JobRefused, match="Size 128x64 is 8,192 pixels; this server allows"):
        check_limits(tiny_params(width=128, height=64), POLICY, limits)
    only_other = replace(POLICY, allowed_models=("other",))
    with pytest.raises(JobRefused, match=r"Model tiny is not allowed here\. Models: other\."):
        check_limits(tiny_params(), only_other, limits)


def test_prices_scale_with_the_server_and_the_role():
    params = tiny_params(width=512, height=512, steps=20, count=2)
    assert job_price(params, 1.0, 1.0) == 2
    assert job_price(params, 3.0, 0.5) == 3
    assert job_price(params, 0.0, 1.0) == 1, "never below 1"


async def test_guild_settings_fall_back_and_ignore_unreadable_values(tmp_path, settings):
    store = Store(tmp_path / "db.sqlite3")
    await store.open()
    try:
        repository = GuildSettingsRepository(store)
        guilds = GuildSettingsService(settings, repository)
        assert await guilds.policy(1) == guilds.defaults()
        await repository.put(1, "max_steps", '"many"', by=None)  # an unreadable value
        await repository.put(1, "unknown_key", "1", by=None)
        assert await guilds.policy(1) == guilds.defaults()
        policy = await guilds.put(1, "allowed_models", ["gone", "tiny"], by=7)
        assert policy.allowed_models == ("tiny",), "models the bot no longer has are dropped"
        assert (await guilds.put(1, "max_steps", None, by=7)).max_steps == 150
        started = time.time()
        assert await guilds.block(1, 5, "spam", by=7)
        assert not await guilds.block(1, 5, "again", by=7)
        assert await guilds.is_blocked(1, 5)
        assert not await guilds.is_blocked(None, 5)
        assert await guilds.blocked(1) == [5]
        assert time.time() - started < 5
    finally:
        await store.close()


def test_a_pattern_that_backtracks_for_minutes_refuses_the_prompt_in_milliseconds():
    policy = replace(POLICY, words=(check_word("(a|a)+b", True),))
    started = time.perf_counter()
    with pytest.raises(JobRefused, match="could not be checked"):
        apply_words(tiny_params(prompt="a" * 60), policy, 1500)
    assert time.perf_counter() - started < 1.0
