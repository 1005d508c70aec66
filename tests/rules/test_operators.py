"""Every targeting operator: matches, non-matches, wrong types and missing attributes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.operators import MAX_REGEX_TEXT, MISSING, OPERATORS, parse_semver, to_instant

# (operator, rule value, attribute value, expected)
CASES: list[tuple[str, Any, Any, bool]] = [
    ("eq", "phone", "phone", True),
    ("eq", "phone", "tablet", False),
    ("eq", 1, 1.0, True),
    ("eq", 1, True, False),
    ("eq", True, 1, False),
    ("eq", True, True, True),
    ("eq", "1", 1, False),
    ("eq", None, None, True),
    ("ne", "phone", "tablet", True),
    ("ne", "phone", "phone", False),
    ("ne", "phone", 3, False),
    ("in", ["FR", "BE"], "BE", True),
    ("in", ["FR", "BE"], "DE", False),
    ("in", [1, 2], 2, True),
    ("in", [1, 2], True, False),
    ("in", ["a"], ["a"], False),
    ("not_in", ["FR", "BE"], "DE", True),
    ("not_in", ["FR", "BE"], "FR", False),
    ("not_in", ["FR"], {"x": 1}, False),
    ("contains", "staff", "staff,admin", True),
    ("contains", "staff", ["admin", "staff"], True),
    ("contains", "staff", ["admin"], False),
    ("contains", 3, [1, 2, 3], True),
    ("contains", "x", 12, False),
    ("not_contains", "staff", ["admin"], True),
    ("not_contains", "staff", "staff", False),
    ("not_contains", "x", 12, False),
    ("starts_with", "https://", "https://shop", True),
    ("starts_with", ["a", "b"], "beta", True),
    ("starts_with", "x", "yx", False),
    ("ends_with", "@corp.example", "ann@corp.example", True),
    ("ends_with", "@corp.example", "ann@other.example", False),
    ("regex", r"^user-\d+$", "user-42", True),
    ("regex", r"^user-\d+$", "user-x", False),
    ("regex", r"\d", 42, False),
    ("gt", 10, 11, True),
    ("gt", 10, 10, False),
    ("gte", 10, 10, True),
    ("lt", 10, 9.5, True),
    ("lte", 10, 10.0, True),
    ("lte", 10, 11, False),
    ("gt", 10, "11", False),
    ("gt", 0, True, False),
    ("semver_eq", "1.2.0", "1.2", True),
    ("semver_eq", "1.2.0", "v1.2.0+build.7", True),
    ("semver_gt", "1.2.0", "1.10.0", True),
    ("semver_gt", "1.2.0", "1.2.0-rc.1", False),
    ("semver_gte", "4.2.0", "4.2.0", True),
    ("semver_lt", "2.0.0", "2.0.0-alpha", True),
    ("semver_lte", "2.0.0", "2.0.1", False),
    ("semver_gt", "1.0.0", "not-a-version", False),
    ("semver_gt", "1.0.0", 2, False),
    ("before", "2026-12-01T00:00:00Z", "2026-11-30T23:59:59Z", True),
    ("before", "2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z", False),
    ("after", "2026-12-01T00:00:00Z", "2026-12-01T01:00:00+00:00", True),
    ("after", "2026-12-01T00:00:00Z", 1_796_083_201, True),
    ("after", "2026-12-01T00:00:00Z", 1_796_083_200, False),
    ("after", "2026-12-01T00:00:00Z", "yesterday", False),
]


@pytest.mark.parametrize(("op", "value", "actual", "expected"), CASES)
def test_operator(op: str, value: Any, actual: Any, expected: bool) -> None:
    """The operator answers as documented for this attribute value."""
    assert expected == OPERATORS[op].build(value)(actual)


@pytest.mark.parametrize("op", sorted(set(OPERATORS) - {"exists"}))
def test_missing_attribute_never_matches(op: str) -> None:
    """Every operator but ``exists`` is false for a missing attribute, negations included."""
    value: Any = {"before": "2026-01-01T00:00:00Z", "after": "2026-01-01T00:00:00Z"}.get(
        op, "1.0.0"
    )
    if op in ("gt", "gte", "lt", "lte"):
        value = 1
    if op in ("in", "not_in"):
        value = ["x"]
    assert OPERATORS[op].build(value)(MISSING) is False


def test_exists_checks_presence_either_way() -> None:
    """``exists`` is true for a present attribute, and with value false for an absent one."""
    present, absent = OPERATORS["exists"].build(MISSING), OPERATORS["exists"].build(False)
    assert (True, False) == (present(None), present(MISSING))
    assert (False, True) == (absent(0), absent(MISSING))


@pytest.mark.parametrize(
    ("op", "value", "reason"),
    [
        ("eq", [1], "string, number, boolean or null"),
        ("in", [], "non-empty list"),
        ("in", [[1]], "string, number, boolean or null"),
        ("starts_with", "", "non-empty string"),
        ("regex", "(", "invalid regular expression"),
        ("regex", "(?<!x)y", "RE2 syntax"),
        ("gt", "ten", "finite number"),
        ("semver_gt", "one", "semantic version"),
        ("before", "tomorrow", "ISO 8601"),
        ("after", "2026-12-01T00:00:00", "UTC offset"),
        ("exists", "yes", "boolean"),
    ],
)
def test_unusable_rule_values_are_refused_at_load(op: str, value: Any, reason: str) -> None:
    """A rule value the operator cannot use is a load-time error with a plain reason."""
    with pytest.raises(ValueError, match=reason):
        OPERATORS[op].build(value)


def test_semver_precedence_follows_the_specification() -> None:
    """SemVer 2.0's own example ordering sorts as listed."""
    ordered = [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
        "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "2.0.0", "2.1.0", "2.1.1",
    ]  # fmt: skip
    keys = [parse_semver(v) for v in ordered]
    assert sorted(keys) == keys  # type: ignore[type-var]


ANY_VALUE = (
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )
    | st.binary()
    | st.sets(st.integers())
    | st.tuples(st.integers())
    | st.just(MISSING)
)


@given(ANY_VALUE)
def test_operators_never_raise_on_any_attribute_value(actual: object) -> None:
    """Whatever a client sends as an attribute, every operator answers a boolean."""
    samples = {
        "in": ["a", 1],
        "not_in": ["a"],
        "gt": 1,
        "gte": 1,
        "lt": 1,
        "lte": 1,
        "exists": True,
    }
    for name, operator in OPERATORS.items():
        value = samples.get(
            name, "2026-01-01T00:00:00Z" if name in ("before", "after") else "1.0.0"
        )
        assert operator.build(value)(actual) in (True, False)


def test_naive_attribute_instants_are_read_as_utc() -> None:
    """An attribute time without an offset means UTC."""
    assert to_instant("2026-12-01T00:00:00") == to_instant("2026-12-01T00:00:00Z")


def test_regex_runs_in_linear_time_on_a_catastrophic_pattern() -> None:
    """``(a+)+$`` on a long run of "a" answers no match at once (a backtracking engine never ends)."""
    probe = (
        "from rules.operators import OPERATORS; "
        "test = OPERATORS['regex'].build('(a+)+$'); "
        "print(test('a' * 4000 + '!'), test('a' * 4000))"
    )
    # A hang detector, not a speed check: the backtracking engine needs ~2**4000 steps here.
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "False True" == result.stdout.strip()


def test_regex_sees_attribute_text_only_up_to_its_bound() -> None:
    """Text longer than ``MAX_REGEX_TEXT`` characters is no match, even where the pattern would match."""
    test = OPERATORS["regex"].build("b")
    assert (True, False) == (
        test("a" * (MAX_REGEX_TEXT - 1) + "b"),
        test("a" * MAX_REGEX_TEXT + "b"),
    )


def test_regex_matches_unicode_text_by_characters() -> None:
    """RE2 works on UTF-8; patterns and text outside ASCII match as characters."""
    test = OPERATORS["regex"].build(r"^caf.$")
    assert (True, False) == (test("café"), test("cafés"))
