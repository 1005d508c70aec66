"""Decisions over the demo rules: reasons, environments, variables, prerequisites, time, errors."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rules
from bench.generate import generate
from rules import Reason
from tests.rules.helpers import DEMO_PATH, demo_document, one_flag, visitors

FRENCH_PHONE = {"geo": {"country": "FR"}, "device": "phone"}
GENERATED = rules.load(generate(400, seed=5))
STAFF = {"email": "ann@flagpost.example"}


@pytest.fixture(scope="module")
def demo() -> rules.Ruleset:
    return rules.load(DEMO_PATH.read_bytes())


def test_segment_match_gives_the_delivery_variation(demo: rules.Ruleset) -> None:
    """A French phone user matches the 'beta' delivery and gets 'on' with its variables."""
    decision = demo.decide("new_checkout", "v1", FRENCH_PHONE)
    assert ("on", "beta", "targeted_delivery", Reason.TARGETING_MATCH) == (
        decision.variation,
        decision.rule,
        decision.rule_type,
        decision.reason,
    )
    assert {"button_color": "green", "max_items": 3} == dict(decision.variables)
    assert (True, True, 1, 1001) == (
        decision.active,
        decision.value,
        decision.variation_id,
        decision.flag_id,
    )


def test_rules_are_tried_in_order(demo: rules.Ruleset) -> None:
    """A visitor in both segments gets the first matching rule ('staff' before 'beta')."""
    decision = demo.decide("new_checkout", "v1", {**FRENCH_PHONE, **STAFF})
    assert ("bold", "staff", "bold") == (decision.variation, decision.rule, decision.value)
    assert {"button_color": "red", "max_items": 5} == dict(decision.variables)


def test_no_rule_applies_gives_default(demo: rules.Ruleset) -> None:
    """Without targeting attributes or account, 'new_checkout' falls back to 'off'."""
    decision = demo.decide("new_checkout", "v1", {})
    assert ("off", None, Reason.DEFAULT, False, False) == (
        decision.variation,
        decision.rule,
        decision.reason,
        decision.active,
        decision.value,
    )


def test_experiment_buckets_by_account(demo: rules.Ruleset) -> None:
    """Visitors sharing an account_id share the experiment's answer; ids are reported."""
    answers = {
        (d.variation, d.rule)
        for d in (demo.decide("new_checkout", v, {"account_id": "acme"}) for v in visitors(50))
    }
    assert 1 == len(answers)
    exposed = [demo.decide("new_checkout", "v", {"account_id": f"acct-{i}"}) for i in range(400)]
    in_experiment = [d for d in exposed if d.rule == "checkout_ab"]
    assert {9001} == {d.experiment_id for d in in_experiment}
    assert {Reason.SPLIT} == {d.reason for d in in_experiment}
    assert 0.4 < len(in_experiment) / len(exposed) < 0.6


@pytest.mark.parametrize("account", [None, True, 1.5, "", "x" * 256, ["a"]])
def test_unusable_bucket_by_attribute_skips_the_rule(demo: rules.Ruleset, account: Any) -> None:
    """A missing or unusable account_id means the experiment does not apply."""
    context = {} if account is None else {"account_id": account}
    assert demo.decide("new_checkout", "v1", context).rule is None


def test_integer_bucket_by_attribute_is_used_as_its_decimal_text() -> None:
    """An integer account id buckets exactly like its decimal string."""
    ruleset = one_flag([{"key": "r", "type": "experiment", "bucket_by": "acct",
                         "split": {"off": 50, "on": 50}}])  # fmt: skip
    for number in range(50):
        assert ruleset.decide("f", "v", {"acct": str(number)}) == ruleset.decide(
            "f", "v", {"acct": number}
        )


def test_disabled_environment_gives_default_with_reason_disabled(demo: rules.Ruleset) -> None:
    """In staging, where new_checkout is disabled, even staff get the default."""
    decision = demo.decide("new_checkout", "v1", STAFF, environment="staging")
    assert ("off", Reason.DISABLED, None) == (decision.variation, decision.reason, decision.rule)


def test_kill_switch_disabled_everywhere(demo: rules.Ruleset) -> None:
    """A flag with enabled false is DISABLED in every environment."""
    for env in demo.environments:
        assert Reason.DISABLED == demo.decide("maintenance_banner", "v", environment=env).reason


def test_environment_rules_replace_the_flags_rules(demo: rules.Ruleset) -> None:
    """In development every visitor gets search_ranking 'on' from the environment's own rule."""
    decision = demo.decide("search_ranking", "anyone", environment="development")
    assert ("on", "all_devs", Reason.STATIC) == (decision.variation, decision.rule, decision.reason)


def test_default_environment_is_the_first_declared(demo: rules.Ruleset) -> None:
    """environment=None decides as in the first declared environment."""
    for visitor in visitors(100):
        assert demo.decide("search_ranking", visitor) == demo.decide(
            "search_ranking", visitor, environment="production"
        )


def test_static_flag(demo: rules.Ruleset) -> None:
    """A flag without rules answers its default with reason STATIC."""
    decision = demo.decide("dark_mode", "v")
    assert ("on", Reason.STATIC, None, True) == (
        decision.variation,
        decision.reason,
        decision.rule,
        decision.active,
    )


def test_rollout_reason_is_split(demo: rules.Ruleset) -> None:
    """Visitors inside a partial rollout get the variation with reason SPLIT."""
    reasons = {demo.decide("search_ranking", v).reason for v in visitors(200)}
    assert {Reason.SPLIT, Reason.DEFAULT} == reasons


def test_prerequisite_follows_the_other_flags_decision(demo: rules.Ruleset) -> None:
    """express_shipping is on only while new_checkout is on or bold for that visitor."""
    cart = {"cart": {"total": 30}}
    assert "on" == demo.decide("express_shipping", "v", {**FRENCH_PHONE, **cart}).variation
    assert "off" == demo.decide("express_shipping", "v", cart).variation
    staging = demo.decide("express_shipping", "v", {**STAFF, **cart}, environment="staging")
    assert "off" == staging.variation


def test_json_variables_and_variation_values(demo: rules.Ruleset) -> None:
    """An experiment variation carries its json variable and declared value."""
    variations = demo.variations("recommendations")
    assert {"columns": 1, "cards": ["popular"], "autoplay": True} == variations["carousel"][
        "layout"
    ]
    assert 0.35 == variations["grid"]["score_threshold"]
    context = {"platform": "ios", "app_version": "4.2.0"}
    values = {demo.decide("recommendations", v, context).value for v in visitors(300)}
    assert {"control", "carousel", "grid"} == values


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 30, 23, 59, tzinfo=UTC), "off"),
        (datetime(2026, 12, 24, 12, 0, tzinfo=UTC), "on"),
        (datetime(2026, 12, 24, 12, 0), "on"),
        (datetime(2027, 1, 7, 0, 0, tzinfo=UTC).timestamp(), "off"),
        (datetime(2027, 1, 6, 23, 0, tzinfo=UTC).timestamp(), "on"),
    ],
)
def test_scheduled_flag_uses_the_given_time(demo: rules.Ruleset, now: Any, expected: str) -> None:
    """before/after compare the evaluation time the caller passes (naive means UTC)."""
    assert expected == demo.decide("holiday_theme", "v", now=now).variation
    assert expected == demo.decide_all("v", now=now)["holiday_theme"].variation


def test_literal_attribute_key_wins_over_nested_path() -> None:
    """'geo.country' is read as a literal key before walking nested objects."""
    ruleset = one_flag([{"key": "r", "type": "targeted_delivery", "variation": "on",
                         "condition": {"attr": "geo.country", "op": "eq", "value": "FR"}}])  # fmt: skip
    assert (
        "on" == ruleset.decide("f", "v", {"geo.country": "FR", "geo": {"country": "DE"}}).variation
    )
    assert (
        "off" == ruleset.decide("f", "v", {"geo.country": "DE", "geo": {"country": "FR"}}).variation
    )
    assert "on" == ruleset.decide("f", "v", {"geo": {"country": "FR"}}).variation
    assert "off" == ruleset.decide("f", "v", {"geo": "FR"}).variation


def test_zero_exposure_rule_never_applies() -> None:
    """A rule at 0 % is skipped for everyone."""
    ruleset = one_flag(
        [{"key": "r", "type": "targeted_delivery", "exposure": 0, "variation": "on"}]
    )
    assert {"off"} == {ruleset.decide("f", v).variation for v in visitors(500)}


@pytest.mark.parametrize("environment", [None, "production", "staging", "development"])
def test_decide_all_equals_deciding_each_flag(demo: rules.Ruleset, environment: str | None) -> None:
    """decide_all gives, flag by flag, what decide gives."""
    contexts: list[dict[str, Any]] = [
        {}, FRENCH_PHONE, STAFF, {"account_id": "a1", "cart": {"total": 99}}
    ]  # fmt: skip
    for visitor in visitors(40):
        for context in contexts:
            every = demo.decide_all(visitor, context, environment)
            assert set(demo.flag_keys) == set(every)
            for key, decision in every.items():
                assert decision == demo.decide(key, visitor, context, environment)


def test_variable_lookup(demo: rules.Ruleset) -> None:
    """variable() gives the visitor's value; unknown variables and flags raise."""
    assert "green" == demo.variable("new_checkout", "button_color", "v", FRENCH_PHONE)
    assert 3 == demo.variable("new_checkout", "max_items", "v")
    with pytest.raises(rules.VariableNotFound) as caught:
        demo.variable("new_checkout", "nope", "v")
    assert ("new_checkout", "nope") == (caught.value.flag, caught.value.variable)
    with pytest.raises(rules.FlagNotFound):
        demo.variable("nope", "x", "v")


@pytest.mark.parametrize("code", ["", "x" * 256, None, 42, b"bytes"])
def test_invalid_visitor_codes(demo: rules.Ruleset, code: Any) -> None:
    """Empty, over 255 characters or non-string visitor codes raise InvalidVisitorCode."""
    with pytest.raises(rules.InvalidVisitorCode):
        demo.decide("dark_mode", code)
    with pytest.raises(rules.InvalidVisitorCode):
        demo.decide_all(code)


def test_visitor_code_of_255_characters_is_accepted(demo: rules.Ruleset) -> None:
    """The limit is inclusive."""
    assert "dark_mode" == demo.decide("dark_mode", "é" * 255).flag


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r: r.decide("nope", "v"), rules.FlagNotFound),
        (lambda r: r.decide(["unhashable"], "v"), rules.FlagNotFound),
        (lambda r: r.variations("nope"), rules.FlagNotFound),
        (lambda r: r.decide("dark_mode", "v", environment="prod"), rules.UnknownEnvironment),
        (lambda r: r.decide_all("v", environment={}), rules.UnknownEnvironment),
        (lambda r: r.decide("dark_mode", "v", context=["a"]), rules.InvalidContext),
        (lambda r: r.decide_all("v", context="a=1"), rules.InvalidContext),
    ],
)
def test_errors_share_one_base(demo: rules.Ruleset, call: Any, error: type[Exception]) -> None:
    """Each misuse raises its own error, and every one is a RulesError."""
    with pytest.raises(error) as caught:
        call(demo)
    assert isinstance(caught.value, rules.RulesError)


def test_unknown_environment_lists_known_ones(demo: rules.Ruleset) -> None:
    """The error names what was asked and what exists."""
    with pytest.raises(rules.UnknownEnvironment) as caught:
        demo.decide("dark_mode", "v", environment="qa")
    assert ("qa", ("production", "staging", "development")) == (
        caught.value.environment,
        caught.value.known,
    )


def test_decisions_are_immutable(demo: rules.Ruleset) -> None:
    """Neither a decision nor its variables can be changed by a caller."""
    decision = demo.decide("new_checkout", "v", FRENCH_PHONE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.variation = "bold"  # type: ignore[misc]
    with pytest.raises(TypeError):
        decision.variables["button_color"] = "pink"  # type: ignore[index]


def test_as_dict_has_the_documented_fields(demo: rules.Ruleset) -> None:
    """as_dict gives plain data with every documented field."""
    data = demo.decide("new_checkout", "v", FRENCH_PHONE).as_dict()
    assert {
        "flag": "new_checkout", "variation": "on", "active": True, "value": True,
        "variables": {"button_color": "green", "max_items": 3}, "rule": "beta",
        "rule_type": "targeted_delivery", "experiment_id": None, "variation_id": 1,
        "reason": "TARGETING_MATCH",
    } == data  # fmt: skip


def test_metadata(demo: rules.Ruleset) -> None:
    """The ruleset exposes its revision, sorted flag keys, environments and events."""
    assert "2026-12-02.1" == demo.revision
    assert sorted(demo_document()["flags"]) == list(demo.flag_keys)
    assert 83023 == demo.events["purchase"].id


def test_revision_defaults_to_a_content_hash() -> None:
    """Without a revision the document's content names it, stably."""
    doc = demo_document()
    del doc["revision"]
    first, again = rules.load(doc).revision, rules.load(dict(reversed(doc.items()))).revision
    doc["flags"]["dark_mode"]["default"] = "off"
    assert first == again
    assert first.startswith("sha-")
    assert first != rules.load(doc).revision


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
ATTRS = ["geo", "geo.country", "device", "email", "roles", "platform", "app_version", "plan",
         "account_id", "cart", "cart.total"]  # fmt: skip


@given(st.dictionaries(st.sampled_from(ATTRS), JSON, max_size=8), st.text(min_size=1, max_size=255))
def test_any_context_decides_without_raising(context: dict[str, Any], visitor: str) -> None:
    """Whatever attribute values a client sends, every flag gets a decision."""
    ruleset = rules.load(DEMO_PATH.read_bytes())
    assert set(ruleset.flag_keys) == set(ruleset.decide_all(visitor, context))


def test_clock_reaches_flags_that_depend_on_a_scheduled_flag() -> None:
    """Without `now`, a flag whose prerequisite (or segment) reads the clock still gets it."""
    since_2000 = {"op": "after", "value": "2000-01-01T00:00:00Z"}

    def on_when(condition: dict[str, Any]) -> dict[str, Any]:
        rule = {"key": "r", "type": "targeted_delivery", "variation": "on", "condition": condition}
        return {"variations": {"off": {}, "on": {}}, "default": "off", "rules": [rule]}

    ruleset = rules.load(
        {
            "format": 1,
            "segments": {"has_a": {"flag": "a", "variations": ["on"]}},
            "flags": {
                "a": on_when(since_2000),
                "b": on_when({"flag": "a", "variations": ["on"]}),
                "c": on_when({"segment": "has_a"}),
                "d": on_when({"not": {"flag": "b", "variations": ["off"]}}),
            },
        }
    )
    assert {"a": "on", "b": "on", "c": "on", "d": "on"} == {
        key: ruleset.decide(key, "v").variation for key in "abcd"
    }
    assert {"a": "on", "b": "on", "c": "on", "d": "on"} == {
        key: decision.variation for key, decision in ruleset.decide_all("v").items()
    }


@pytest.mark.parametrize("environment", [None, "staging", "development"])
def test_constant_and_varying_decisions_make_up_decide_all(
    demo: rules.Ruleset, environment: str | None
) -> None:
    """constant_decisions and decide_varying split decide_all without overlap or gap."""
    constant = demo.constant_decisions(environment)
    assert {Reason.STATIC, Reason.DISABLED} >= {d.reason for d in constant.values()}
    for visitor in visitors(30):
        varying = demo.decide_varying(visitor, FRENCH_PHONE, environment)
        assert not set(constant) & set(varying)
        assert demo.decide_all(visitor, FRENCH_PHONE, environment) == {**constant, **varying}


@pytest.mark.parametrize("visitor", ["plain-visitor", "élodie ✓ 日本", "\ud800lone", "x" * 255])
def test_decide_all_agrees_with_decide_for_any_visitor_code(visitor: str) -> None:
    """The batched rollouts of decide_all hash exactly as decide does, whatever the code."""
    from bench.generate import generate

    ruleset = rules.load(generate(400, seed=3))
    every = ruleset.decide_all(visitor, {"geo": {"country": "FR"}, "device": "phone"})
    for key, decision in every.items():
        assert decision == ruleset.decide(
            key, visitor, {"geo": {"country": "FR"}, "device": "phone"}
        )


def test_outcome_names_the_answer_as_json_and_survives_recompiling(demo: rules.Ruleset) -> None:
    """A decision's outcome is the JSON of its keys and ids, equal for the same answer of
    two compilations and different for different answers."""
    import json

    again = rules.load(DEMO_PATH.read_bytes())
    outcomes = set()
    for visitor in visitors(200):
        for key, decision in demo.decide_all(visitor, FRENCH_PHONE).items():
            expected = [
                decision.flag,
                decision.rule,
                decision.variation,
                decision.flag_id,
                decision.experiment_id,
                decision.variation_id,
                decision.rule_type,
            ]
            assert expected == json.loads(decision.outcome)
            assert decision.outcome == again.decide(key, visitor, FRENCH_PHONE).outcome
            outcomes.add(decision.outcome)
    assert len(outcomes) > 5


GENERATED_CONTEXTS: list[dict[str, Any]] = [
    {},
    {"geo": {"country": "FR"}, "device": "phone", "app_version": "4.3.1"},
    {"plan": "pro", "email": "ann@example.com"},
    {"geo": {"country": "US"}, "device": "desktop", "plan": "free", "app_version": "3.0"},
]


@given(
    visitor=st.text(min_size=1, max_size=40),
    context=st.sampled_from(GENERATED_CONTEXTS),
)
def test_decide_all_batches_agree_with_one_flag_at_a_time(
    visitor: str, context: dict[str, Any]
) -> None:
    """Segment targeting then rollout, experiments and prerequisites decided in decide_all's
    batches give exactly what deciding each flag alone gives, segments matched or not."""
    every = GENERATED.decide_all(visitor, context)
    assert {key: GENERATED.decide(key, visitor, context) for key in every} == every


def test_generated_rules_exercise_every_batched_shape() -> None:
    """The generated ruleset reaches targeted, split and default answers in decide_all."""
    reasons = Counter(
        decision.reason
        for visitor in visitors(50)
        for context in GENERATED_CONTEXTS
        for decision in GENERATED.decide_all(visitor, context).values()
    )
    assert {Reason.TARGETING_MATCH, Reason.SPLIT, Reason.DEFAULT, Reason.STATIC} <= set(reasons)


def test_release_steps_take_a_ruleset_apart_in_many_small_steps() -> None:
    """Releasing a 400-flag ruleset takes many steps and leaves it knowing no flag, while
    another ruleset of the same document keeps answering."""
    document = generate(400)
    released, kept = rules.load(document), rules.load(document)
    expected = kept.decide_all("v-1")
    steps = sum(1 for _ in released.release_steps())
    assert steps >= 400 // rules.ruleset.RELEASED_PER_STEP
    with pytest.raises(rules.FlagNotFound):
        released.decide("flag_00000", "v-1")
    assert {} == released.decide_all("v-1")
    assert expected == kept.decide_all("v-1")


def test_experiment_flags_hold_every_varying_experiment_exposure() -> None:
    """Each varying decision that is an experiment exposure is of a flag in
    ``experiment_flags``, and each of those flags is one with an experiment rule."""
    named = set(GENERATED.experiment_flags())
    with_experiments = {
        key
        for key in GENERATED.flag_keys
        if any(rule.type == "experiment" for rule in GENERATED.flag(key).rules["production"])
    }
    exposed = {
        decision.flag
        for number in range(300)
        for decision in GENERATED.decide_varying(f"v{number}", FRENCH_PHONE).values()
        if decision.rule_type == "experiment"
    }
    assert exposed  # the generated rules run experiments, or this checks nothing
    assert exposed <= named
    assert named == with_experiments - set(GENERATED.constant_decisions())


def test_decisions_share_a_fingerprint_exactly_when_they_are_equal(demo: rules.Ruleset) -> None:
    """Within one ruleset, across environments, visitors and contexts, two decisions have the
    same fingerprint if and only if they are equal (callers key cached JSON by it)."""
    for ruleset in (demo, GENERATED):
        by_print: dict[str, rules.Decision] = {}
        for environment in ruleset.environments:
            for number in range(200):
                for context in (FRENCH_PHONE, STAFF, {}):
                    decided = ruleset.decide_all(f"v{number}", context, environment)
                    for decision in decided.values():
                        assert by_print.setdefault(decision.fingerprint, decision) == decision
        assert len(by_print) == len({repr(decision) for decision in by_print.values()})
