"""The targeting operators, dispatched through one table.

Each entry of ``OPERATORS`` is a *builder*: it receives the rule's ``value`` once, at load
time, checks it (raising ``ValueError`` with a plain reason when it is unusable) and returns a
*test*: a function of the visitor's attribute value that answers ``True`` or ``False``. A test
never raises: an attribute that is missing (``MISSING``) or of the wrong type is no match.

Types are compared strictly, as JSON sees them: ``true`` is not ``1`` and ``"1"`` is not ``1``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import re2

__all__ = [
    "MAX_REGEX_TEXT",
    "MISSING",
    "OPERATORS",
    "Operator",
    "Test",
    "parse_semver",
    "to_instant",
]

#: The longest attribute text (in characters) a ``regex`` condition searches; longer text is
#: no match. RE2 searches in time linear in the text, and this bounds that time too.
MAX_REGEX_TEXT = 4096


class _Missing:
    """The type of ``MISSING``: what an attribute lookup yields when the attribute is absent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
Test = Callable[[Any], bool]
_NUMBER = (int, float)


def _kind(value: object) -> str | None:
    """The JSON kind of a scalar (bool, number, string, null); None for anything else."""
    kind = type(value)
    if kind is bool:
        return "bool"
    if kind in _NUMBER:
        return "number"
    if kind is str:
        return "string"
    if value is None:
        return "null"
    return None


def _same(left: object, right: object) -> bool:
    """Equality that refuses to mix JSON kinds (``true`` never equals ``1``)."""
    return _kind(left) == _kind(right) and left == right


def _require_scalar(value: object) -> object:
    if _kind(value) is None:
        raise ValueError("needs a string, number, boolean or null value")
    return value


def _require_list_of_scalars(value: object) -> list[object]:
    if not isinstance(value, list) or not value:
        raise ValueError("needs a non-empty list of values")
    for item in value:
        _require_scalar(item)
    return value


def _require_number(value: object) -> float:
    if type(value) not in _NUMBER or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError("needs a finite number value")
    return value  # type: ignore[return-value]


def _require_strings(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(type(item) is str and item for item in items):
        raise ValueError("needs a non-empty string or a non-empty list of non-empty strings")
    return tuple(items)


# -- equality and membership ----------------------------------------------------------------


def _build_eq(value: object) -> Test:
    expected = _require_scalar(value)
    kind = type(expected)
    if kind is str:  # the common case, without the generic kind check
        return lambda actual: actual.__class__ is str and actual == expected
    if kind is bool or expected is None:
        return lambda actual: actual is expected
    return lambda actual: _same(actual, expected)


def _build_ne(value: object) -> Test:
    expected = _require_scalar(value)
    kind = _kind(expected)
    return lambda actual: _kind(actual) == kind and actual != expected


def _member_index(values: list[object]) -> dict[str | None, set[object]]:
    index: dict[str | None, set[object]] = {}
    for item in values:
        index.setdefault(_kind(item), set()).add(item)
    return index


def _build_in(value: object) -> Test:
    index = _member_index(_require_list_of_scalars(value))
    empty: set[object] = set()
    if index.keys() == {"string"}:  # the common case, without the generic kind check
        strings = index["string"]
        return lambda actual: actual.__class__ is str and actual in strings

    def test(actual: object) -> bool:
        try:
            return actual in index.get(_kind(actual), empty)
        except TypeError:  # unhashable: a list or object is in no list of scalars
            return False

    return test


def _build_not_in(value: object) -> Test:
    index = _member_index(_require_list_of_scalars(value))
    empty: set[object] = set()

    def test(actual: object) -> bool:
        kind = _kind(actual)
        return kind is not None and actual not in index.get(kind, empty)

    return test


def _contains(actual: object, expected: object) -> bool | None:
    """Whether ``actual`` (a string or list) contains ``expected``; None if it holds nothing."""
    if type(actual) is str:
        return type(expected) is str and expected in actual
    if type(actual) is list:
        return any(_same(item, expected) for item in actual)
    return None


def _build_contains(value: object) -> Test:
    expected = _require_scalar(value)
    return lambda actual: _contains(actual, expected) is True


def _build_not_contains(value: object) -> Test:
    expected = _require_scalar(value)
    return lambda actual: _contains(actual, expected) is False


def _build_starts_with(value: object) -> Test:
    prefixes = _require_strings(value)
    return lambda actual: type(actual) is str and actual.startswith(prefixes)


def _build_ends_with(value: object) -> Test:
    suffixes = _require_strings(value)
    return lambda actual: type(actual) is str and actual.endswith(suffixes)


def _regex_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported as a validation problem, not logged
    options.never_capture = True  # only "does it match" is asked
    return options


_REGEX_OPTIONS = _regex_options()


def _build_regex(value: object) -> Test:
    # RE2, not the standard library's backtracking engine: its search time is linear in the
    # text, so no pattern in the rules can make one request hold the service (``(a+)+$``
    # against a long run of "a" takes the standard engine seconds). Its syntax has no
    # look-around or backreferences; such a pattern is refused here, when the rules load.
    if type(value) is not str:
        raise ValueError("needs a regular expression string")
    try:
        re2.compile(value, options=_REGEX_OPTIONS)  # for the reason, which a Set does not give
        searcher = re2.Set.SearchSet(_REGEX_OPTIONS)  # a one-pattern set: a bare yes or no,
        searcher.Add(value)  # without building a match object (about 8 times cheaper)
        searcher.Compile()
    except re2.error as error:
        raise ValueError(f"invalid regular expression (RE2 syntax): {_reason(error)}") from None
    search = searcher.Match

    def test(actual: Any) -> bool:
        if type(actual) is not str or len(actual) > MAX_REGEX_TEXT:
            return False
        try:
            return search(actual) is not None
        except UnicodeEncodeError:  # a lone surrogate cannot reach RE2 (UTF-8): no match
            return False

    return test


def _reason(error: Exception) -> str:
    reason = error.args[0] if error.args else str(error)
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)


def _build_exists(value: object) -> Test:
    if value is MISSING:
        value = True
    if type(value) is not bool:
        raise ValueError("takes an optional boolean value (true: present, false: absent)")
    wanted = value
    return lambda actual: (actual is not MISSING) is wanted


# -- ordered comparisons --------------------------------------------------------------------


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[object], Test]:
    def build(value: object) -> Test:
        bound = _require_number(value)
        return lambda actual: type(actual) in _NUMBER and compare(actual, bound)

    return build


_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
SemverKey = tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]


def parse_semver(text: object) -> SemverKey | None:
    """Parse ``1.2.3-rc.1+build`` into a key that sorts by SemVer 2.0 precedence; None if invalid.

    A leading ``v`` and a missing minor or patch (``1.2``, ``v2``) are accepted as zeros;
    build metadata is ignored, as precedence requires.
    """
    if type(text) is not str or len(text) > 256:
        return None
    return _parse_semver_text(text)


@lru_cache(maxsize=4096)
def _parse_semver_text(text: str) -> SemverKey | None:
    # Cached: visitors report few distinct app versions, and parsing one costs microseconds.
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, pre = match.groups()
    # A release sorts after all of its pre-releases: flag 1 for a release, 0 for a pre-release.
    identifiers = tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in (pre.split(".") if pre else ())
    )
    return (int(major), int(minor or 0), int(patch or 0), 0 if pre else 1, identifiers)


def _semver(compare: Callable[[SemverKey, SemverKey], bool]) -> Callable[[object], Test]:
    def build(value: object) -> Test:
        bound = parse_semver(value)
        if bound is None:
            raise ValueError(f"needs a semantic version string such as '1.4.0', not {value!r}")

        def test(actual: object) -> bool:
            key = parse_semver(actual)
            return key is not None and compare(key, bound)

        return test

    return build


def to_instant(value: object) -> float | None:
    """An instant as seconds since the epoch, from a number of seconds or an ISO 8601 string.

    A string without a UTC offset is read as UTC. Anything else gives None.
    """
    if type(value) in _NUMBER:
        return float(value) if math.isfinite(value) else None  # type: ignore[arg-type]
    if type(value) is not str or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _instant(compare: Callable[[float, float], bool]) -> Callable[[object], Test]:
    def build(value: object) -> Test:
        if type(value) is not str or to_instant(value) is None:
            raise ValueError("needs an ISO 8601 instant such as '2026-12-01T00:00:00Z'")
        if datetime.fromisoformat(value).tzinfo is None:
            raise ValueError(f"instant {value!r} needs a UTC offset (such as 'Z' or '+01:00')")
        bound = to_instant(value)

        def test(actual: object) -> bool:
            moment = to_instant(actual)
            return moment is not None and compare(moment, bound)  # type: ignore[arg-type]

        return test

    return build


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operator:
    """How one operator is checked at load time and evaluated at decision time."""

    build: Callable[[object], Test]
    #: True for operators that may omit ``attr`` and then test the evaluation time instead.
    clock: bool = False


def _lt(a: Any, b: Any) -> bool:
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return bool(a <= b)


def _gt(a: Any, b: Any) -> bool:
    return bool(a > b)


def _ge(a: Any, b: Any) -> bool:
    return bool(a >= b)


def _eq(a: Any, b: Any) -> bool:
    return bool(a == b)


OPERATORS: Final[dict[str, Operator]] = {
    "eq": Operator(_build_eq),
    "ne": Operator(_build_ne),
    "in": Operator(_build_in),
    "not_in": Operator(_build_not_in),
    "contains": Operator(_build_contains),
    "not_contains": Operator(_build_not_contains),
    "starts_with": Operator(_build_starts_with),
    "ends_with": Operator(_build_ends_with),
    "regex": Operator(_build_regex),
    "exists": Operator(_build_exists),
    "gt": Operator(_numeric(_gt)),
    "gte": Operator(_numeric(_ge)),
    "lt": Operator(_numeric(_lt)),
    "lte": Operator(_numeric(_le)),
    "semver_eq": Operator(_semver(_eq)),
    "semver_gt": Operator(_semver(_gt)),
    "semver_gte": Operator(_semver(_ge)),
    "semver_lt": Operator(_semver(_lt)),
    "semver_lte": Operator(_semver(_le)),
    "before": Operator(_instant(_lt), clock=True),
    "after": Operator(_instant(_gt), clock=True),
}
