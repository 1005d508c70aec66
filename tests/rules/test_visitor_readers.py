"""Which flags read the visitor's stored data: the ruleset knows when it compiles."""

from __future__ import annotations

from typing import Any

import rules


def _ruleset(flags: dict[str, Any], segments: dict[str, Any] | None = None) -> rules.Ruleset:
    return rules.load({"format": 1, "flags": flags, "segments": segments or {}})


def _flag(rule: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"variations": {"off": {}, "on": {}}, "default": "off", "rules": [rule], **extra}


def _targeted(condition: dict[str, Any]) -> dict[str, Any]:
    return _flag(
        {"key": "r", "type": "targeted_delivery", "variation": "on", "condition": condition}
    )


def test_a_condition_on_a_visitor_attribute_makes_the_flag_a_reader() -> None:
    """A leaf on ``visitor.browser`` marks its flag, and only its flag."""
    ruleset = _ruleset(
        {
            "reads": _targeted({"attr": "visitor.browser", "op": "eq", "value": "chrome"}),
            "plain": _targeted({"attr": "browser", "op": "eq", "value": "chrome"}),
            "lookalike": _targeted({"attr": "visitors", "op": "eq", "value": 1}),
        }
    )
    assert frozenset({"reads"}) == ruleset.visitor_readers()


def test_readers_are_found_through_segments_and_prerequisites() -> None:
    """A segment reading ``visitor.*`` marks the flags that target it and their dependants."""
    ruleset = _ruleset(
        {
            "base": _targeted({"segment": "shoppers"}),
            "child": _targeted({"flag": "base", "variations": ["on"]}),
            "other": _targeted({"segment": "others"}),
        },
        {
            "shoppers": {"attr": "visitor.goals", "op": "contains", "value": 32},
            "others": {"attr": "plan", "op": "eq", "value": "pro"},
        },
    )
    assert frozenset({"base", "child"}) == ruleset.visitor_readers()


def test_bucketing_by_a_visitor_attribute_makes_a_reader() -> None:
    """A rule bucketing by ``visitor.custom.1`` reads the stored data too."""
    rule = {
        "key": "r",
        "type": "targeted_delivery",
        "variation": "on",
        "bucket_by": "visitor.custom.1",
    }
    assert frozenset({"f"}) == _ruleset({"f": _flag(rule)}).visitor_readers()


def test_a_disabled_flag_reads_nothing() -> None:
    """A flag answered the same for everyone never needs the store."""
    flag = _targeted({"attr": "visitor.device", "op": "eq", "value": "phone"})
    assert frozenset() == _ruleset({"f": {**flag, "enabled": False}}).visitor_readers()


def test_the_stored_data_steers_the_decision_as_a_nested_context() -> None:
    """Data under ``visitor`` is read through the dotted path like any nested attribute."""
    ruleset = _ruleset(
        {"f": _targeted({"attr": "visitor.geo.country", "op": "in", "value": ["FR"]})}
    )
    assert "on" == ruleset.decide("f", "v", {"visitor": {"geo": {"country": "FR"}}}).variation
    assert "off" == ruleset.decide("f", "v", {"visitor": {"geo": {"country": "DE"}}}).variation
    assert "off" == ruleset.decide("f", "v", {}).variation
