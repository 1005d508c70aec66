"""Validating a decoded rules document into ``rules.model.Document``.

Every problem is collected with its path (``flags.new_checkout.rules[1].split``) before
``InvalidRuleset`` is raised, so an author fixes a file in one round trip, not one per error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from rules import bucketing
from rules.conditions import Condition, FlagRef, Scope, SegmentRef, parse_condition, references
from rules.errors import InvalidRuleset, Problem
from rules.model import Document, Event, Flag, Rule, RuleType, Variable, Variation
from rules.report import Report, describe, join, key_path
from rules.steps import Steps, finish

__all__ = ["FORMAT", "parse_document", "parse_document_steps"]

FORMAT: Final = 1
#: How long a chain of prerequisites (or of segments using segments) may be.
MAX_CHAIN: Final = 16
_TOP_FIELDS = frozenset(
    {"$schema", "format", "revision", "description", "environments", "segments", "events", "flags"}
)
_FLAG_FIELDS = frozenset(
    {"id", "description", "variables", "variations", "default", "enabled", "environments", "rules"}
)
_RULE_FIELDS = frozenset(
    {
        "key",
        "type",
        "id",
        "description",
        "segment",
        "condition",
        "exposure",
        "variation",
        "split",
        "bucket_by",
        "salt",
        "respool",
    }
)


def _is_json(value: object, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON data (what a decision may hand back to a client)."""
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) is float:
        return math.isfinite(value)
    if depth > 32:
        return False
    if isinstance(value, list):
        return all(_is_json(item, depth + 1) for item in value)
    if isinstance(value, Mapping):
        return all(type(k) is str and _is_json(v, depth + 1) for k, v in value.items())
    return False


_VARIABLE_FIELDS = frozenset({"type", "default", "description"})
_VARIATION_FIELDS = frozenset({"id", "value", "variables", "description"})
_VARIABLE_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "boolean": lambda v: type(v) is bool,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float) and math.isfinite(v),
    "string": lambda v: type(v) is str,
    "json": _is_json,
}


def parse_document(data: object) -> Document:
    """Check a decoded document and return its validated model, or raise ``InvalidRuleset``."""
    return finish(parse_document_steps(data))


def parse_document_steps(data: object, max_flags: int | None = None) -> Steps[Document]:
    """``parse_document`` in steps: it yields after each segment and flag. A document with
    more than ``max_flags`` flags is refused before any of them is looked at."""
    report = Report()
    top = report.mapping(data, "")
    if top is None:
        raise InvalidRuleset(report.problems)
    flag_count = len(top["flags"]) if isinstance(top.get("flags"), dict) else 0
    if max_flags is not None and flag_count > max_flags:
        raise InvalidRuleset(
            [Problem("flags", f"holds {flag_count} flags; the limit is {max_flags}")]
        )
    report.fields(top, "", _TOP_FIELDS)
    if "format" not in top:
        report.add("format", f"is required (this version reads format {FORMAT})")
    elif top["format"] != FORMAT or type(top["format"]) is not int:
        report.add("format", f"must be {FORMAT}, not {describe(top['format'])}")
    revision = _parse_revision(top.get("revision"), report)
    environments = _parse_environments(top.get("environments", ["production"]), report)
    raw_segments = yield from _members(top.get("segments", {}), "segments", report)
    raw_flags = yield from _members(top.get("flags", {}), "flags", report)
    scope = Scope(frozenset(raw_segments), (yield from _flag_variations(raw_flags)))
    segments: dict[str, Condition] = {}
    for name, raw in raw_segments.items():
        condition = parse_condition(raw, key_path("segments", name), scope, report)
        if condition is not None:
            segments[name] = condition
        yield
    events = _parse_events((yield from _members(top.get("events", {}), "events", report)), report)
    flags: dict[str, Flag] = {}
    for key, raw in raw_flags.items():
        flag = _parse_flag(key, raw, environments, scope, report)
        if flag is not None:
            flags[key] = flag
        yield
    yield from _check_segment_cycles(segments, report)
    order = yield from _order_prerequisites(flags, segments, report)
    if report.problems:
        raise InvalidRuleset(report.problems)
    ordered: dict[str, Flag] = {}
    for index, key in enumerate(order):
        ordered[key] = flags[key]
        if index % _KEYS_PER_STEP == 0:
            yield
    return Document(revision, environments, segments, events, ordered)


def _parse_revision(value: object, report: Report) -> str | None:
    if value is None:
        return None
    if type(value) is str and 0 < len(value) <= 128:
        return value
    report.add("revision", f"must be a string of 1 to 128 characters, not {describe(value)}")
    return None


def _parse_environments(value: object, report: Report) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        report.add("environments", "must be a non-empty list of environment names")
        return ("production",)
    names: list[str] = []
    for index, name in enumerate(value):
        if report.key(name, join("environments", index)):
            if name in names:
                report.add(join("environments", index), f"environment {name!r} is listed twice")
            else:
                names.append(name)
    return tuple(names) or ("production",)


#: How many keys a step checks in the passes over a whole section.
_KEYS_PER_STEP = 256


def _members(value: object, path: str, report: Report) -> Steps[dict[str, Any]]:
    """The well-keyed members of an object-valued section."""
    section = report.mapping(value, path)
    members: dict[str, Any] = {}
    for index, (key, raw) in enumerate((section or {}).items()):
        if report.key(key, key_path(path, str(key))):
            members[key] = raw
        if index % _KEYS_PER_STEP == 0:
            yield
    return members


def _flag_variations(raw_flags: Mapping[str, Any]) -> Steps[dict[str, frozenset[str]]]:
    """Each flag's variation keys, read ahead so prerequisite conditions can be checked."""
    found: dict[str, frozenset[str]] = {}
    for index, (key, raw) in enumerate(raw_flags.items()):
        variations = raw.get("variations") if isinstance(raw, Mapping) else None
        found[key] = frozenset(variations) if isinstance(variations, Mapping) else frozenset()
        if index % _KEYS_PER_STEP == 0:
            yield
    return found


def _parse_events(raw_events: Mapping[str, Any], report: Report) -> dict[str, Event]:
    events: dict[str, Event] = {}
    for key, raw in raw_events.items():
        path = key_path("events", key)
        node = report.mapping(raw, path)
        if node is not None:
            report.fields(node, path, frozenset({"id", "description"}))
            report.text(node.get("description"), key_path(path, "description"))
            events[key] = Event(key, report.identifier(node.get("id"), key_path(path, "id")))
    return events


# -- flags ----------------------------------------------------------------------------------


def _parse_flag(
    key: str, raw: object, environments: tuple[str, ...], scope: Scope, report: Report
) -> Flag | None:
    path = key_path("flags", key)
    node = report.mapping(raw, path)
    if node is None:
        return None
    before = len(report.problems)
    report.fields(node, path, _FLAG_FIELDS)
    flag_id = report.identifier(node.get("id"), key_path(path, "id"))
    description = report.text(node.get("description"), key_path(path, "description"))
    variables = _parse_variables(node.get("variables", {}), key_path(path, "variables"), report)
    variations = _parse_variations(
        node.get("variations"), key_path(path, "variations"), variables, report
    )
    default = node.get("default")
    if not isinstance(default, str) or default not in variations:
        report.add(
            key_path(path, "default"),
            f"must name one of the flag's variations, not {describe(default)}",
        )
    enabled = _parse_enabled(node, path, True, report)
    rules = _parse_rules(
        key, node.get("rules", []), key_path(path, "rules"), variations, scope, report
    )
    overrides = _parse_flag_environments(
        key, node.get("environments", {}), path, environments, variations, scope, report
    )
    if len(report.problems) > before:
        return None
    enabled_in: dict[str, bool] = {}
    rules_in: dict[str, tuple[Rule, ...]] = {}
    for env in environments:
        env_enabled, env_rules = overrides.get(env, (None, None))
        enabled_in[env] = enabled if env_enabled is None else env_enabled
        rules_in[env] = rules if env_rules is None else env_rules
    return Flag(
        key, flag_id, description, variables, variations, cast(str, default), enabled_in, rules_in
    )


def _parse_enabled(
    node: Mapping[str, Any], path: str, fallback: bool | None, report: Report
) -> Any:
    enabled = node.get("enabled", fallback)
    if enabled is not fallback and type(enabled) is not bool:
        report.add(key_path(path, "enabled"), f"must be a boolean, not {describe(enabled)}")
    return enabled


def _parse_flag_environments(
    flag_key: str,
    raw: object,
    path: str,
    environments: tuple[str, ...],
    variations: Mapping[str, Variation],
    scope: Scope,
    report: Report,
) -> dict[str, tuple[bool | None, tuple[Rule, ...] | None]]:
    """Per-environment overrides: ``enabled`` and rules replacing the flag's (None: inherited)."""
    section = key_path(path, "environments")
    node = report.mapping(raw, section)
    found: dict[str, tuple[bool | None, tuple[Rule, ...] | None]] = {}
    for env, settings in (node or {}).items():
        here = key_path(section, str(env))
        if env not in environments:
            report.add(here, f"environment {env!r} is not declared in 'environments'")
            continue
        entry = report.mapping(settings, here)
        if entry is None:
            continue
        report.fields(entry, here, frozenset({"enabled", "rules"}))
        enabled = _parse_enabled(entry, here, None, report)
        rules = (
            _parse_rules(
                flag_key, entry["rules"], key_path(here, "rules"), variations, scope, report
            )
            if "rules" in entry
            else None
        )
        found[env] = (enabled, rules)
    return found


def _parse_variables(raw: object, path: str, report: Report) -> dict[str, Variable]:
    node = report.mapping(raw, path)
    variables: dict[str, Variable] = {}
    for key, here, entry in report.entries(node, path, _VARIABLE_FIELDS):
        kind = entry.get("type")
        if kind not in _VARIABLE_CHECKS:
            report.add(
                key_path(here, "type"),
                f"must be one of {', '.join(_VARIABLE_CHECKS)}, not {describe(kind)}",
            )
            continue
        if "default" not in entry:
            report.add(key_path(here, "default"), "is required")
        elif not _VARIABLE_CHECKS[kind](entry["default"]):
            report.add(
                key_path(here, "default"),
                f"must be of type {kind}, not {describe(entry['default'])}",
            )
        variables[key] = Variable(key, kind, entry.get("default"))
    return variables


def _parse_variations(
    raw: object, path: str, variables: Mapping[str, Variable], report: Report
) -> dict[str, Variation]:
    node = report.mapping(raw, path)
    if node is not None and not node:
        report.add(path, "must declare at least one variation")
    variations: dict[str, Variation] = {}
    for key, here, entry in report.entries(node, path, _VARIATION_FIELDS):
        overrides = report.mapping(entry.get("variables", {}), key_path(here, "variables")) or {}
        for name, value in overrides.items():
            spot = key_path(key_path(here, "variables"), str(name))
            if name not in variables:
                report.add(spot, f"unknown variable {name!r}: declare it in the flag's 'variables'")
            elif not _VARIABLE_CHECKS[variables[name].type](value):
                report.add(spot, f"must be of type {variables[name].type}, not {describe(value)}")
        if "value" in entry and not _is_json(entry["value"]):
            report.add(key_path(here, "value"), "must be JSON data")
        variations[key] = Variation(
            key=key,
            id=report.identifier(entry.get("id"), key_path(here, "id")),
            value=entry.get("value"),
            has_value="value" in entry,
            overrides=dict(overrides),
        )
    return variations


# -- rules ----------------------------------------------------------------------------------


def _parse_rules(
    flag_key: str,
    raw: object,
    path: str,
    variations: Mapping[str, Variation],
    scope: Scope,
    report: Report,
) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        report.add(path, f"must be a list of rules, not {describe(raw)}")
        return ()
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        key = item.get("key") if isinstance(item, Mapping) else None
        if isinstance(key, str):  # checked on the raw key, so other problems do not hide it
            if key in seen:
                report.add(key_path(join(path, index), "key"), f"duplicate rule key {key!r}")
            seen.add(key)
        rule = _parse_rule(flag_key, item, join(path, index), variations, scope, report)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _parse_rule(
    flag_key: str,
    raw: object,
    path: str,
    variations: Mapping[str, Variation],
    scope: Scope,
    report: Report,
) -> Rule | None:
    node = report.mapping(raw, path)
    if node is None:
        return None
    before = len(report.problems)
    report.fields(node, path, _RULE_FIELDS)
    key = node.get("key")
    if not report.key(key, key_path(path, "key")):
        key = "?"
    kind = node.get("type")
    if kind not in ("targeted_delivery", "experiment"):
        report.add(
            key_path(path, "type"),
            f"must be 'targeted_delivery' or 'experiment', not {describe(kind)}",
        )
    condition = _parse_rule_condition(node, path, scope, report)
    exposure = _parse_percent(node.get("exposure", 100), key_path(path, "exposure"), report)
    variation: str | None = None
    split: tuple[tuple[str, int], ...] = ()
    if kind == "targeted_delivery":
        variation = node.get("variation")
        if "split" in node:
            report.add(
                key_path(path, "split"),
                "a targeted delivery gives one 'variation'; 'split' is for experiments",
            )
        if not isinstance(variation, str) or variation not in variations:
            report.add(key_path(path, "variation"), f"unknown variation {variation!r}")
    elif kind == "experiment":
        if "variation" in node:
            report.add(
                key_path(path, "variation"),
                "an experiment picks from 'split'; 'variation' is for targeted deliveries",
            )
        split = _parse_split(node.get("split"), key_path(path, "split"), variations, report)
    bucket_by = node.get("bucket_by")
    if bucket_by is not None and (type(bucket_by) is not str or not 0 < len(bucket_by) <= 256):
        report.add(
            key_path(path, "bucket_by"), f"must be an attribute name, not {describe(bucket_by)}"
        )
    salt = node.get("salt")
    if salt is not None and (type(salt) is not str or not 0 < len(salt) <= 256 or "\x00" in salt):
        report.add(key_path(path, "salt"), "must be a string of 1 to 256 characters without NUL")
    respool = node.get("respool", 0)
    if type(respool) is not int or respool < 0:
        report.add(
            key_path(path, "respool"), f"must be a non-negative integer, not {describe(respool)}"
        )
    rule_id = report.identifier(node.get("id"), key_path(path, "id"))
    if len(report.problems) > before:
        return None
    return Rule(
        key=cast(str, key),
        type=cast(RuleType, kind),
        id=rule_id,
        condition=condition,
        exposure=exposure,
        variation=variation,
        split=split,
        bucket_by=bucket_by,
        exposure_salt=bucketing.exposure_salt(flag_key, cast(str, key), salt, respool),
        split_salt=bucketing.split_salt(flag_key, cast(str, key), salt, respool),
    )


def _parse_rule_condition(
    node: Mapping[str, Any], path: str, scope: Scope, report: Report
) -> Condition | None:
    if "segment" in node and "condition" in node:
        report.add(path, "give either 'segment' or 'condition', not both")
        return None
    if "segment" in node:
        return parse_condition({"segment": node["segment"]}, path, scope, report)
    if "condition" in node:
        return parse_condition(node["condition"], key_path(path, "condition"), scope, report)
    return None


def _parse_percent(value: object, path: str, report: Report) -> int:
    """A percentage from 0 to 100 with at most two decimals, as a number of buckets."""
    if type(value) not in (int, float) or not 0 <= value <= 100:  # type: ignore[operator]
        report.add(path, f"must be a percentage from 0 to 100, not {describe(value)}")
        return 0
    buckets = bucketing.percent_to_buckets(value)  # type: ignore[arg-type]
    if abs(buckets - value * 100) > 1e-6:  # type: ignore[operator]
        report.add(path, f"{value} has more than two decimals")
    return buckets


def _parse_split(
    raw: object, path: str, variations: Mapping[str, Variation], report: Report
) -> tuple[tuple[str, int], ...]:
    node = report.mapping(raw, path)
    if node is None:
        return ()
    if not node:
        report.add(path, "must give at least one variation a share")
        return ()
    split: list[tuple[str, int]] = []
    for name, percent in node.items():
        if name not in variations:
            report.add(key_path(path, str(name)), f"unknown variation {name!r}")
            continue
        split.append((name, _parse_percent(percent, key_path(path, str(name)), report)))
    total = sum(buckets for _, buckets in split)
    if len(split) == len(node) and total != bucketing.BUCKETS:
        report.add(path, f"shares sum to {total / 100:g}, not 100")
    return tuple(split)


# -- references -----------------------------------------------------------------------------


def _segment_edges(condition: Condition) -> set[str]:
    return {ref.name for ref in references(condition) if isinstance(ref, SegmentRef)}


def _check_segment_cycles(segments: Mapping[str, Condition], report: Report) -> Steps[None]:
    graph = {name: _segment_edges(condition) for name, condition in segments.items()}
    yield from _order_graph(graph, "segments", "segment", report)


def _flag_edges(flag: Flag, segments: Mapping[str, Condition]) -> set[str]:
    """The flags this flag's decision depends on, through its conditions and their segments."""
    found: set[str] = set()
    pending = [
        rule.condition for env_rules in flag.rules.values() for rule in env_rules if rule.condition
    ]
    visited: set[str] = set()
    while pending:
        for ref in references(pending.pop()):
            if isinstance(ref, FlagRef):
                found.add(ref.flag)
            elif ref.name not in visited and ref.name in segments:
                visited.add(ref.name)
                pending.append(segments[ref.name])
    return found


def _order_prerequisites(
    flags: Mapping[str, Flag], segments: Mapping[str, Condition], report: Report
) -> Steps[list[str]]:
    """Flag keys with every prerequisite before its dependants; cycles are reported."""
    graph: dict[str, set[str]] = {}
    for key, flag in flags.items():
        graph[key] = _flag_edges(flag, segments) & flags.keys()
        yield
    return (yield from _order_graph(graph, "flags", "prerequisite", report))


def _order_graph(
    graph: Mapping[str, set[str]], section: str, what: str, report: Report
) -> Steps[list[str]]:
    """Nodes with every dependency first. Cycles and chains longer than ``MAX_CHAIN`` are
    reported, which also bounds the recursion here and in compiled decisions."""
    depth: dict[str, int] = {}  # finished nodes: the length of their longest chain
    order: list[str] = []
    for node in graph:
        if node not in depth:
            _visit(node, [], graph, depth, order, section, what, report)
        yield
    return order


def _visit(
    node: str,
    path: list[str],
    graph: Mapping[str, set[str]],
    depth: dict[str, int],
    order: list[str],
    section: str,
    what: str,
    report: Report,
) -> None:
    """Depth first from ``node``, recording each node's longest chain once its dependencies
    are done. (A module function: a nested recursive one would be a reference cycle.)"""
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
        if nxt in path:
            cycle = " -> ".join([*path[path.index(nxt) :], nxt])
            report.add(key_path(section, nxt), f"{what} cycle: {cycle}")
        elif nxt not in depth and len(path) <= MAX_CHAIN:
            _visit(nxt, path, graph, depth, order, section, what, report)
    # A dependency still on the path is a cycle (reported above); one never reached was
    # cut off by the length limit, so it counts as too long.
    depth[node] = 1 + max(
        (depth.get(nxt, 0 if nxt in path else MAX_CHAIN) for nxt in graph.get(node, ())),
        default=0,
    )
    path.pop()
    if depth[node] == MAX_CHAIN + 1:  # report where the chain first gets too long
        report.add(key_path(section, node), f"{what} chain deeper than {MAX_CHAIN}")
    order.append(node)
