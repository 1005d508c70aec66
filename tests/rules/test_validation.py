"""Validation: every problem is reported with its path, and nothing invalid compiles."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

import rules
from tests.rules.helpers import DEMO_PATH, ROOT, demo_document

SCHEMA = jsonschema.Draft202012Validator(json.loads((ROOT / "rules" / "schema.json").read_text()))
NC = "flags.new_checkout"


def problems_of(data: Any) -> list[tuple[str, str]]:
    """Load ``data`` expecting failure; return each problem as (path, reason)."""
    with pytest.raises(rules.InvalidRuleset) as caught:
        rules.load(data)
    return [(problem.path, problem.reason) for problem in caught.value.errors]


def edit(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """A copy of the demo document with ``change`` applied."""
    doc = copy.deepcopy(demo_document())
    change(doc)
    return doc


def rule(doc: dict[str, Any], index: int) -> dict[str, Any]:
    return doc["flags"]["new_checkout"]["rules"][index]  # type: ignore[no-any-return]


# (name, how to break the demo, expected path, words of the reason, schema also rejects it)
BREAKAGES: list[tuple[str, Callable[[dict[str, Any]], Any], str, str, bool]] = [
    ("unknown variation", lambda d: rule(d, 1).update(variation="blue"), f"{NC}.rules[1].variation", "unknown variation 'blue'", False),
    ("unknown split variation", lambda d: rule(d, 2)["split"].update(pink=0), f"{NC}.rules[2].split.pink", "unknown variation", False),
    ("unknown segment", lambda d: rule(d, 1).update(segment="martians"), f"{NC}.rules[1].segment", "unknown segment 'martians'", False),
    ("unknown flag", lambda d: d["flags"]["express_shipping"]["rules"][0]["condition"]["all"][0].update(flag="ghost"), "flags.express_shipping.rules[0].condition.all[0].flag", "unknown flag 'ghost'", False),
    ("unknown prerequisite variation", lambda d: d["flags"]["express_shipping"]["rules"][0]["condition"]["all"][0].update(variations=["purple"]), "flags.express_shipping.rules[0].condition.all[0].variations", "unknown variation", False),
    ("split not 100", lambda d: rule(d, 2).update(split={"off": 34, "on": 33, "bold": 30}), f"{NC}.rules[2].split", "sum to 97, not 100", False),
    ("exposure over 100", lambda d: rule(d, 2).update(exposure=101), f"{NC}.rules[2].exposure", "from 0 to 100", True),
    ("exposure negative", lambda d: rule(d, 2).update(exposure=-1), f"{NC}.rules[2].exposure", "from 0 to 100", True),
    ("exposure three decimals", lambda d: rule(d, 2).update(exposure=12.345), f"{NC}.rules[2].exposure", "more than two decimals", False),
    ("exposure not a number", lambda d: rule(d, 2).update(exposure="50%"), f"{NC}.rules[2].exposure", "percentage", True),
    ("variable default type", lambda d: d["flags"]["new_checkout"]["variables"]["max_items"].update(default="3"), f"{NC}.variables.max_items.default", "of type integer", True),
    ("variable override type", lambda d: d["flags"]["new_checkout"]["variations"]["on"]["variables"].update(max_items=2.5), f"{NC}.variations.on.variables.max_items", "of type integer", False),
    ("undeclared variable", lambda d: d["flags"]["new_checkout"]["variations"]["on"]["variables"].update(size=1), f"{NC}.variations.on.variables.size", "unknown variable", False),
    ("unknown variable type", lambda d: d["flags"]["new_checkout"]["variables"]["max_items"].update(type="float"), f"{NC}.variables.max_items.type", "must be one of", True),
    ("duplicate rule key", lambda d: rule(d, 1).update(key="staff"), f"{NC}.rules[1].key", "duplicate rule key 'staff'", False),
    ("invalid regex", lambda d: d["segments"]["internal_staff"]["any"][0].update(op="regex", value="[a-"), "segments.internal_staff.any[0].value", "invalid regular expression", False),
    ("look-ahead regex (not RE2)", lambda d: d["segments"]["internal_staff"]["any"][0].update(op="regex", value="^(?=admin)"), "segments.internal_staff.any[0].value", "RE2 syntax", False),
    ("backreference regex (not RE2)", lambda d: d["segments"]["internal_staff"]["any"][0].update(op="regex", value=r"(a)\1"), "segments.internal_staff.any[0].value", "RE2 syntax", False),
    ("unknown operator", lambda d: d["segments"]["french_mobile"]["all"][1].update(op="equals"), "segments.french_mobile.all[1].op", "unknown operator 'equals'", True),
    ("unknown rule field", lambda d: rule(d, 0).update(percentage=5), f"{NC}.rules[0].percentage", "unknown field", True),
    ("unknown top field", lambda d: d.update(flagz={}), "flagz", "unknown field", True),
    ("unknown flag field", lambda d: d["flags"]["dark_mode"].update(state="on"), "flags.dark_mode.state", "unknown field", True),
    ("undeclared environment", lambda d: d["flags"]["new_checkout"]["environments"].update(qa={"enabled": True}), f"{NC}.environments.qa", "not declared", False),
    ("missing format", lambda d: d.pop("format"), "format", "is required", True),
    ("wrong format", lambda d: d.update(format=2), "format", "must be 1", True),
    ("bad flag key", lambda d: d["flags"].update({"has space": d["flags"]["dark_mode"]}), "flags.'has space'", "must be 1 to 128", True),
    ("default not a variation", lambda d: d["flags"]["dark_mode"].update(default="dim"), "flags.dark_mode.default", "must name one of", False),
    ("no variations", lambda d: d["flags"]["dark_mode"].update(variations={}, default="on"), "flags.dark_mode.variations", "at least one variation", True),
    ("delivery with split", lambda d: rule(d, 1).update(split={"on": 100}), f"{NC}.rules[1].split", "for experiments", True),
    ("experiment with variation", lambda d: rule(d, 2).update(variation="on"), f"{NC}.rules[2].variation", "for targeted deliveries", True),
    ("segment and condition", lambda d: rule(d, 1).update(condition={"attr": "a", "op": "exists"}), f"{NC}.rules[1]", "not both", True),
    ("unknown rule type", lambda d: rule(d, 1).update(type="rollout"), f"{NC}.rules[1].type", "must be 'targeted_delivery' or 'experiment'", True),
    ("salt with NUL", lambda d: rule(d, 2).update(salt="a\x00b"), f"{NC}.rules[2].salt", "without NUL", True),
    ("negative respool", lambda d: rule(d, 2).update(respool=-1), f"{NC}.rules[2].respool", "non-negative integer", True),
    ("leaf without attr", lambda d: d["segments"]["french_mobile"]["all"][1].pop("attr"), "segments.french_mobile.all[1].attr", "needs an attribute", True),
    ("condition not an object", lambda d: d["segments"].update(french_mobile=["FR"]), "segments.french_mobile", "must be an object", True),
    ("empty condition", lambda d: d["segments"].update(french_mobile={}), "segments.french_mobile", "must have", True),
    ("naive instant", lambda d: d["flags"]["holiday_theme"]["rules"][0]["condition"]["all"][0].update(value="2026-12-01T00:00:00"), "flags.holiday_theme.rules[0].condition.all[0].value", "UTC offset", False),
    ("event id", lambda d: d["events"]["purchase"].update(id="83023"), "events.purchase.id", "non-negative integer", True),
    ("duplicate environment", lambda d: d.update(environments=["production", "production"]), "environments[1]", "listed twice", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [pytest.param(change, path, reason, id=name) for name, change, path, reason, _ in BREAKAGES],
)
def test_each_problem_is_reported_with_its_path(
    change: Callable[[dict[str, Any]], Any], path: str, reason: str
) -> None:
    """Breaking one thing reports that thing, at its path, in plain words."""
    found = problems_of(edit(change))
    assert any(p == path and reason in r for p, r in found), found


@pytest.mark.parametrize(
    "change",
    [pytest.param(change, id=name) for name, change, _, _, schema in BREAKAGES if schema],
)
def test_schema_rejects_what_the_shape_forbids(change: Callable[[dict[str, Any]], Any]) -> None:
    """rules/schema.json refuses the same structural mistakes the validator does."""
    assert list(SCHEMA.iter_errors(edit(change)))


def test_schema_accepts_the_demo() -> None:
    """The bundled example is valid for the shipped JSON Schema."""
    assert [] == [error.message for error in SCHEMA.iter_errors(demo_document())]


INDEPENDENT = {
    "unknown variation", "duplicate rule key", "unknown flag", "split not 100", "exposure over 100",
    "variable default type", "variable override type", "invalid regex", "unknown top field",
    "undeclared environment", "default not a variation", "naive instant", "event id",
}  # fmt: skip


def test_every_problem_is_listed_at_once() -> None:
    """A document broken in many places reports each place in one error."""
    chosen = [b for b in BREAKAGES if b[0] in INDEPENDENT]
    doc = demo_document()
    for _, change, _, _, _ in chosen:
        change(doc)
    paths = {path for path, _ in problems_of(doc)}
    assert len(INDEPENDENT) == len(chosen)
    assert {path for _, _, path, _, _ in chosen} <= paths


def test_prerequisite_cycles_are_reported() -> None:
    """Flags that depend on each other, directly or through a segment, are refused."""

    def cycle(doc: dict[str, Any]) -> None:
        doc["segments"]["needs_express"] = {"flag": "express_shipping", "variations": ["on"]}
        rule(doc, 0)["segment"] = "needs_express"

    found = problems_of(edit(cycle))
    assert any("prerequisite cycle" in reason for _, reason in found), found
    assert not any("chain deeper" in reason for _, reason in found), found


def test_segment_cycles_are_reported() -> None:
    """Segments that include each other are refused."""

    def cycle(doc: dict[str, Any]) -> None:
        doc["segments"]["a"] = {"segment": "b"}
        doc["segments"]["b"] = {"all": [{"segment": "a"}]}

    found = problems_of(edit(cycle))
    assert any("segment cycle" in reason for _, reason in found), found


def test_long_prerequisite_chains_are_refused() -> None:
    """A chain of 100 prerequisites is reported instead of recursing at decision time."""
    flags: dict[str, Any] = {"f0": {"variations": {"on": {}}, "default": "on"}}
    for index in range(1, 100):
        flags[f"f{index}"] = {
            "variations": {"on": {}},
            "default": "on",
            "rules": [{"key": "r", "type": "targeted_delivery", "variation": "on",
                       "condition": {"flag": f"f{index - 1}", "variations": ["on"]}}],
        }  # fmt: skip
    found = problems_of({"format": 1, "flags": flags})
    assert any("chain deeper than" in reason for _, reason in found), found


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", "not valid JSON"),
        (b'{"format": 1,}', "line 1 column 14"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"format": NaN}', "not valid JSON"),
        ('{"format": 1, "format": 1}', "duplicate keys in one object: 'format'"),
        (b"[]", "must be an object"),
        ("null", "must be an object"),
        ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
        ('{"format": 1, "segments": {"s": ' + '{"not": ' * 100 + "{}" + "}" * 102, "deeper than"),
    ],
)
def test_unusable_documents(data: bytes | str, reason: str) -> None:
    """Broken JSON, non-objects and absurd nesting are reported, never raised raw."""
    found = problems_of(data)
    assert any(reason in r for _, r in found), found


def test_bytes_text_and_mapping_load_alike() -> None:
    """load accepts the same document as bytes, text or decoded data."""
    raw = DEMO_PATH.read_bytes()
    loaded = [rules.load(raw), rules.load(raw.decode()), rules.load(json.loads(raw))]
    assert 1 == len({(r.revision, r.flag_keys) for r in loaded})
    assert 1 == len({r.decide("search_ranking", "v-1").variation for r in loaded})


def test_problem_message_lists_every_path() -> None:
    """str(InvalidRuleset) names each problem, so a log line shows them all."""
    with pytest.raises(rules.InvalidRuleset) as caught:
        rules.load({"format": 1, "flags": {"a": {"variations": {}}, "b": []}})
    text = str(caught.value)
    assert "flags.a.variations" in text
    assert "flags.b: must be an object" in text


def test_loading_a_mapping_leaves_it_as_it_was() -> None:
    """A document passed as a mapping is read, never emptied (only bytes decoded by the load
    itself are freed piece by piece)."""
    document = demo_document()
    before = copy.deepcopy(document)
    ruleset = rules.load(document)
    assert before == document
    assert rules.load(json.dumps(before)).revision == ruleset.revision


def test_a_document_over_the_flag_limit_is_refused_before_its_flags_are_read() -> None:
    """``max_flags`` refuses a document with more flags, naming the count and the limit."""
    doc = demo_document()
    count = len(doc["flags"])
    with pytest.raises(rules.InvalidRuleset) as caught:
        rules.load(doc, max_flags=count - 1)
    assert [("flags", f"holds {count} flags; the limit is {count - 1}")] == [
        (problem.path, problem.reason) for problem in caught.value.errors
    ]
    assert count == len(rules.load(doc, max_flags=count).flag_keys)


def test_a_value_longer_than_a_decoding_piece_is_refused() -> None:
    """A single value of more than ``PIECE`` characters is refused before decoding it."""
    from rules.decoding import PIECE

    doc = demo_document()
    doc["description"] = "x" * (2 * PIECE)
    reason = problems_of(json.dumps(doc).encode())[0][1]
    assert f"is longer than {PIECE} characters" in reason
    doc["description"] = "x" * (PIECE // 2)
    assert rules.load(json.dumps(doc).encode())
