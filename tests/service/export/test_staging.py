"""The staging query on single lines: types checked as JSON has them, never converted, and
text values exactly as written, escapes and all."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest

from service.export import sql

ATTRIBUTE = {"id": "plan", "name": "plan", "type": "custom", "value": "pro"}
DECISION: dict[str, Any] = {
    "kind": "decision", "uuid": "d1", "timestamp": 1_700_000_000_000,
    "process_timestamp": 1_700_000_000_005, "visitor_id": "v1", "campaign_id": "c1",
    "experiment_id": "e1", "variation_id": "a", "is_holdback": False, "referer": None,
    "attributes": [ATTRIBUTE],
}  # fmt: skip
CONVERSION: dict[str, Any] = {
    "kind": "conversion", "uuid": "c1", "timestamp": 1_700_000_000_000,
    "process_timestamp": 1_700_000_000_005, "visitor_id": "v1", "entity_id": "83023",
    "event_name": "purchase", "revenue": 1250, "value": 2.5, "quantity": 1,
    "tags": {"sku": "s-1"}, "attributes": [],
}  # fmt: skip


def stage(*lines: str) -> list[dict[str, Any]]:
    con = duckdb.connect()
    con.execute("CREATE TABLE lines (file VARCHAR, line_no BIGINT, line VARCHAR)")
    con.executemany("INSERT INTO lines VALUES ('f', ?, ?)", list(enumerate(lines, start=1)))
    cursor = con.execute(f"SELECT * FROM ({sql.staged('lines')}) ORDER BY line_no")
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.mark.parametrize(
    "text",
    ['say "hi"', "back\\slash", "caf\u00e9 \U0001f600", "line\nbreak\ttab", "", "/ and \\/"],
)
def test_text_values_come_out_as_written(text: str) -> None:
    """A visitor id with quotes, backslashes, non-ASCII text or control characters, as JSON
    escapes them or not, is staged exactly."""
    plain = json.dumps({**DECISION, "visitor_id": text}, ensure_ascii=False)
    escaped = json.dumps({**DECISION, "visitor_id": text}, ensure_ascii=True)
    rows = stage(plain, escaped)
    assert [(None, text), (None, text)] == [(row["reason"], row["visitor_id"]) for row in rows]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({**DECISION, "uuid": 17}, "decision: missing or mistyped uuid"),
        ({**DECISION, "timestamp": "1700000000000"}, "decision: missing or mistyped timestamp"),
        ({**DECISION, "timestamp": 1.5}, "decision: missing or mistyped timestamp"),
        ({**DECISION, "timestamp": 10**19}, "decision: missing or mistyped timestamp"),
        ({**DECISION, "is_holdback": "false"}, "decision: missing or mistyped is_holdback"),
        ({**DECISION, "referer": 3}, "decision: missing or mistyped referer"),
        ({**DECISION, "attributes": {"id": "x"}}, "decision: missing or mistyped attributes"),
        ({**DECISION, "attributes": [{"value": 1}]}, "decision: missing or mistyped attributes"),
        ({**DECISION, "variation_id": None}, "decision: missing or mistyped variation_id"),
        ({**CONVERSION, "value": "2.5"}, "conversion: missing or mistyped value"),
        ({**CONVERSION, "value": True}, "conversion: missing or mistyped value"),
        ({**CONVERSION, "tags": ["sku"]}, "conversion: missing or mistyped tags"),
        ({**CONVERSION, "quantity": 1.0}, "conversion: missing or mistyped quantity"),
        ({"uuid": "x"}, "not an object with a kind"),
        ({"kind": 3}, "not an object with a kind"),
    ],
)
def test_a_wrong_type_is_refused_not_converted(record: dict[str, Any], reason: str) -> None:
    """A value of another JSON type than its field's, even one that would convert, is a
    rejected line naming the field."""
    assert [reason] == [row["reason"] for row in stage(json.dumps(record))]


def test_good_records_are_typed_with_their_defaults() -> None:
    """Numbers, flags, attributes and tags are typed; missing optional fields get their
    defaults, and null ones are null."""
    bare = {key: value for key, value in CONVERSION.items() if key not in ("tags", "attributes")}
    decision, conversion, minimal, other = stage(
        json.dumps(DECISION), json.dumps(CONVERSION), json.dumps({**bare, "value": 3}),
        json.dumps({"kind": "odp", "uuid": "o1"}),
    )  # fmt: skip
    assert (None, None, None, None) == (
        decision["reason"], conversion["reason"], minimal["reason"], other["reason"]
    )  # fmt: skip
    assert (1_700_000_000_000, False, None, [ATTRIBUTE]) == (
        decision["timestamp"], decision["is_holdback"], decision["referer"],
        decision["attributes"],
    )  # fmt: skip
    assert (1250, 2.5, 1, {"sku": "s-1"}, "custom") == (
        conversion["revenue"], conversion["value"], conversion["quantity"], conversion["tags"],
        conversion["event_type"],
    )  # fmt: skip
    assert (3.0, {}, []) == (minimal["value"], minimal["tags"], minimal["attributes"])
    assert "odp" == other["kind"]
