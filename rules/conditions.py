"""Targeting conditions: parsed from the document into a small tree, then compiled into closures.

A condition is one of::

    {"attr": "geo.country", "op": "in", "value": ["FR", "BE"]}   a leaf (see rules.operators)
    {"op": "after", "value": "2026-12-01T00:00:00Z"}              a leaf on the evaluation time
    {"all": [condition, ...]}    every one matches (an empty list matches)
    {"any": [condition, ...]}    at least one matches (an empty list does not)
    {"not": condition}
    {"segment": "name"}          the named segment's condition
    {"flag": "key", "variations": ["on"]}   the visitor's decision for a prerequisite flag

A compiled condition is a ``Predicate``: ``(unit, attributes, now) -> bool``, where ``now`` is
the evaluation time in seconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar, Union

from rules.operators import MISSING, OPERATORS, Test
from rules.report import Report, describe, join, key_path

__all__ = [
    "SEGMENT_MEMO",
    "AllOf",
    "AnyOf",
    "Condition",
    "FlagRef",
    "Leaf",
    "Not",
    "Predicate",
    "Scope",
    "SegmentRef",
    "attribute_getter",
    "compile_condition",
    "memoize_segments",
    "memoized",
    "parse_condition",
    "references",
    "walk",
]

Predicate = Callable[[str, Mapping[str, Any], "float | None"], bool]
MAX_DEPTH: Final = 32


class _SegmentMemo:
    """The attribute key under which ``memoize_segments`` keeps segment results and
    prerequisite variations (``memoized``). Not a string, so no attribute from JSON can
    collide with it."""

    __slots__ = ()


SEGMENT_MEMO: Final = _SegmentMemo()


def memoize_segments(attrs: Mapping[str, Any]) -> dict[Any, Any]:
    """A copy of ``attrs`` in which each segment (and each prerequisite flag) is evaluated at
    most once.

    Within one ``decide_all`` a segment's answer cannot change (it depends on the visitor,
    the attributes and the time only), yet many flags may target it.
    """
    with_memo: dict[Any, Any] = dict(attrs)
    with_memo[SEGMENT_MEMO] = {}
    return with_memo


R = TypeVar("R", bool, str)


def memoized(
    key: Hashable, compute: Callable[[str, Mapping[str, Any], float | None], R]
) -> Callable[[str, Mapping[str, Any], float | None], R]:
    """``compute``, answered from the memo when the attributes carry one: a segment's result
    (``key`` its name) or a prerequisite flag's variation (``key`` a tuple, never a name) is
    worked out once per ``decide_all``, however many flags ask for it."""

    def answer(unit: str, attrs: Mapping[str, Any], now: float | None) -> R:
        memo = attrs.get(SEGMENT_MEMO)  # type: ignore[call-overload]
        if memo is None:
            return compute(unit, attrs, now)
        found: R | None = memo.get(key)
        if found is None:
            found = memo[key] = compute(unit, attrs, now)
        return found

    return answer


_LEAF_FIELDS = frozenset({"attr", "op", "value", "description"})


@dataclass(frozen=True, slots=True)
class Leaf:
    """Compare one attribute (or, with ``attr`` None, the evaluation time) using an operator."""

    attr: str | None
    op: str
    test: Test


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition


@dataclass(frozen=True, slots=True)
class SegmentRef:
    name: str


@dataclass(frozen=True, slots=True)
class FlagRef:
    """Matches when the visitor's decision for prerequisite ``flag`` is one of ``variations``."""

    flag: str
    variations: frozenset[str]


Condition = Union[Leaf, AllOf, AnyOf, Not, SegmentRef, FlagRef]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a condition may refer to: segment names and each flag's variation keys."""

    segments: frozenset[str]
    flags: Mapping[str, frozenset[str]]


# -- parsing --------------------------------------------------------------------------------


def parse_condition(
    raw: object, path: str, scope: Scope, report: Report, depth: int = 0
) -> Condition | None:
    """Check one condition and return its tree, or None after recording what is wrong."""
    node = report.mapping(raw, path)
    if node is None:
        return None
    if depth > MAX_DEPTH:
        report.add(path, f"conditions nest deeper than {MAX_DEPTH} levels")
        return None
    for shape, parse in _SHAPES.items():
        if shape in node:
            return parse(node, path, scope, report, depth)
    report.add(path, "must have 'attr'/'op', 'all', 'any', 'not', 'segment' or 'flag'")
    return None


def _parse_leaf(
    node: Mapping[str, Any], path: str, scope: Scope, report: Report, depth: int
) -> Condition | None:
    report.fields(node, path, _LEAF_FIELDS)
    op_name, attr = node.get("op"), node.get("attr")
    if not isinstance(op_name, str) or op_name not in OPERATORS:
        known = ", ".join(OPERATORS)
        report.add(key_path(path, "op"), f"unknown operator {op_name!r} (known: {known})")
        return None
    operator = OPERATORS[op_name]
    if attr is None and not operator.clock:
        report.add(key_path(path, "attr"), f"operator {op_name!r} needs an attribute name")
        return None
    if attr is not None and (type(attr) is not str or not 0 < len(attr) <= 256):
        report.add(key_path(path, "attr"), f"must be a non-empty string, not {describe(attr)}")
        return None
    try:
        test = operator.build(node.get("value", MISSING))
    except ValueError as error:
        report.add(key_path(path, "value"), f"operator {op_name!r} {error}")
        return None
    return Leaf(attr, op_name, test)


def _parse_group(
    node: Mapping[str, Any], path: str, scope: Scope, report: Report, depth: int
) -> Condition | None:
    shape = "all" if "all" in node else "any"
    report.fields(node, path, frozenset({shape, "description"}))
    items = node[shape]
    here = key_path(path, shape)
    if not isinstance(items, list):
        report.add(here, f"must be a list of conditions, not {describe(items)}")
        return None
    parsed = [
        parse_condition(item, join(here, i), scope, report, depth + 1)
        for i, item in enumerate(items)
    ]
    if any(item is None for item in parsed):
        return None
    children = tuple(item for item in parsed if item is not None)
    return AllOf(children) if shape == "all" else AnyOf(children)


def _parse_not(
    node: Mapping[str, Any], path: str, scope: Scope, report: Report, depth: int
) -> Condition | None:
    report.fields(node, path, frozenset({"not", "description"}))
    item = parse_condition(node["not"], key_path(path, "not"), scope, report, depth + 1)
    return None if item is None else Not(item)


def _parse_segment(
    node: Mapping[str, Any], path: str, scope: Scope, report: Report, depth: int
) -> Condition | None:
    report.fields(node, path, frozenset({"segment", "description"}))
    name = node["segment"]
    if not isinstance(name, str) or name not in scope.segments:
        report.add(key_path(path, "segment"), f"unknown segment {name!r}")
        return None
    return SegmentRef(name)


def _parse_flag(
    node: Mapping[str, Any], path: str, scope: Scope, report: Report, depth: int
) -> Condition | None:
    report.fields(node, path, frozenset({"flag", "variations", "description"}))
    key, wanted = node["flag"], node.get("variations")
    known = scope.flags.get(key) if isinstance(key, str) else None
    if known is None:
        report.add(key_path(path, "flag"), f"unknown flag {key!r}")
        return None
    here = key_path(path, "variations")
    if not isinstance(wanted, list) or not wanted:
        report.add(here, "must be a non-empty list of the prerequisite flag's variation keys")
        return None
    unknown = [v for v in wanted if not isinstance(v, str) or v not in known]
    if unknown:
        report.add(here, f"unknown variation(s) {unknown!r} of flag {key!r}")
        return None
    return FlagRef(key, frozenset(wanted))


_SHAPES: Final = {
    "op": _parse_leaf,
    "attr": _parse_leaf,
    "all": _parse_group,
    "any": _parse_group,
    "not": _parse_not,
    "segment": _parse_segment,
    "flag": _parse_flag,
}


def walk(condition: Condition) -> Iterator[Condition]:
    """Every node of ``condition``, itself first, depth first."""
    yield condition
    if isinstance(condition, (AllOf, AnyOf)):
        for item in condition.items:
            yield from walk(item)
    elif isinstance(condition, Not):
        yield from walk(condition.item)


def references(condition: Condition) -> Iterator[SegmentRef | FlagRef]:
    """Every segment and flag reference inside ``condition``."""
    return (node for node in walk(condition) if isinstance(node, (SegmentRef, FlagRef)))


# -- compiling ------------------------------------------------------------------------------

VariationOf = Callable[[str, Mapping[str, Any], "float | None"], str]


def compile_condition(
    condition: Condition,
    segment: Callable[[str], Predicate],
    prerequisite: Callable[[str], VariationOf],
) -> Predicate:
    """Turn a condition tree into one closure.

    ``segment(name)`` gives a segment's compiled predicate and ``prerequisite(key)`` a function
    giving a flag's variation for a visitor; both are already compiled when this is called.
    """
    if isinstance(condition, Leaf):
        return _compile_leaf(condition)
    if isinstance(condition, (AllOf, AnyOf)):
        items = tuple(compile_condition(c, segment, prerequisite) for c in condition.items)
        return _compile_all(items) if isinstance(condition, AllOf) else _compile_any(items)
    if isinstance(condition, Not):
        inner = compile_condition(condition.item, segment, prerequisite)
        return lambda unit, attrs, now: not inner(unit, attrs, now)
    if isinstance(condition, SegmentRef):
        return segment(condition.name)
    variation_of, allowed = prerequisite(condition.flag), condition.variations
    return lambda unit, attrs, now: variation_of(unit, attrs, now) in allowed


def _compile_leaf(leaf: Leaf) -> Predicate:
    test, name = leaf.test, leaf.attr
    if name is None:  # a clock leaf: the operator tests the evaluation time itself
        return lambda unit, attrs, now: test(now)
    if "." not in name:
        return lambda unit, attrs, now: test(attrs.get(name, MISSING))
    lookup = attribute_getter(name)
    return lambda unit, attrs, now: test(lookup(attrs))


def attribute_getter(name: str) -> Callable[[Mapping[str, Any]], object]:
    """Read an attribute by its literal name first, then as a dotted path through objects."""
    parts = tuple(name.split("."))

    def lookup(attrs: Mapping[str, Any]) -> object:
        value: object = attrs.get(name, MISSING)
        if value is MISSING and len(parts) > 1:
            value = attrs
            for part in parts:
                if value.__class__ is not dict and not isinstance(value, Mapping):
                    return MISSING  # (dict first: an ABC check costs more than the lookup)
                value = value.get(part, MISSING)
        return value

    return lookup


def _compile_all(items: tuple[Predicate, ...]) -> Predicate:
    def predicate(unit: str, attrs: Mapping[str, Any], now: float | None) -> bool:
        for item in items:
            if not item(unit, attrs, now):
                return False
        return True

    return predicate


def _compile_any(items: tuple[Predicate, ...]) -> Predicate:
    def predicate(unit: str, attrs: Mapping[str, Any], now: float | None) -> bool:
        for item in items:
            if item(unit, attrs, now):
                return True
        return False

    return predicate
