"""Records as the flusher writes them: rows pasted from shared JSON parts, in queue order."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest

import rules
from service.events import records
from service.events.records import (
    CLIENT_VERSION,
    KNOWN_CONTEXTS,
    AttributeCache,
    Batch,
    Item,
    attribution,
    batch_of,
    new_uuids,
)
from tests.service.conftest import DEMO

RULESET = rules.load(DEMO.read_bytes())
CONTEXT = {"geo": {"country": "FR"}, "device": "phone", "age": 31}
UA, REFERER = "shop/1.0", "https://shop.example/"


def outcomes(decisions: list[rules.Decision]) -> tuple[str, ...]:
    return tuple(decision.outcome for decision in decisions)


def ruled(visitor: str) -> list[rules.Decision]:
    decisions = RULESET.decide_all(visitor, CONTEXT).values()
    return [decision for decision in decisions if decision.rule is not None]


def expected_row(decision: rules.Decision, visitor: str, number: int) -> dict[str, Any]:
    """The row as the export schema has it, built field by field (uuid left out)."""
    return {
        "kind": "decision",
        "timestamp": 1_700_000_000_123,
        "process_timestamp": 1_700_000_001_000,
        "visitor_id": visitor,
        "session_id": f"p-{number:x}",
        "campaign_id": str(decision.flag_id) if decision.flag_id is not None else decision.flag,
        "experiment_id": str(decision.experiment_id)
        if decision.experiment_id is not None
        else decision.rule,
        "variation_id": str(decision.variation_id)
        if decision.variation_id is not None
        else decision.variation,
        "flag": decision.flag,
        "rule": decision.rule,
        "variation": decision.variation,
        "is_holdback": False,
        "client_engine": "flagpost",
        "client_version": CLIENT_VERSION,
        "attributes": [
            {"id": "geo", "name": "geo", "type": "custom", "value": '{"country":"FR"}'},
            {"id": "device", "name": "device", "type": "custom", "value": "phone"},
            {"id": "age", "name": "age", "type": "custom", "value": "31"},
        ],
        "user_agent": "shop/1.0",
        "referer": "https://shop.example/",
        "revision": "r9",
    }


def test_rows_keep_queue_order_and_match_the_export_fields() -> None:
    """Exposure items become one row per decision, handler records stay where they were
    queued, and every row parses to the export schema's fields."""
    many, one = ruled("visitor-1"), ruled("visitor-2")[0]
    conversion = {"kind": "conversion", "uuid": "c-1", "visitor_id": "visitor-1"}
    items: list[Item] = [
        (1_700_000_000.1234, "visitor-1", 10, outcomes(many), CONTEXT, UA, REFERER, "r9"),
        conversion,
        (1_700_000_000.1234, "visitor-2", 11, one.outcome, CONTEXT, UA, REFERER, "r9"),
    ]
    batch = batch_of(items, 1_700_000_001_000, "p")
    rows = batch.records()
    assert rows == json.loads(batch.json_array())
    assert rows == [json.loads(line) for line in batch.json_lines().decode().splitlines()]
    assert ("decision",) * len(many) + ("conversion", "decision") == batch.kinds
    assert conversion == rows[len(many)]
    expected = [expected_row(d, "visitor-1", 10) for d in many]
    expected += [expected_row(one, "visitor-2", 11)]
    decision_rows = rows[: len(many)] + rows[len(many) + 1 :]
    for row in decision_rows:
        assert 7 == uuid.UUID(row.pop("uuid")).version
    assert expected == decision_rows


def test_a_pasted_row_is_the_text_orjson_writes_for_the_row_as_a_dict() -> None:
    """A decision row pasted from JSON parts is, byte for byte, what orjson writes for the
    same row built as one dict, with text that needs escaping in every pasted field."""
    decision = ruled("visitor-8")[0]
    visitor, agent, referer = 'v "8" \\ é\n', 'bot "x"/1.0 \u2028', 'https://x.example/?q="a"'
    context = {"note": 'say "hi"\t', "n": 1.5}
    item: Item = (2.5, visitor, 255, decision.outcome, context, agent, referer, 'r"1')
    [line] = batch_of([item], 7, "p").lines
    row = orjson.loads(line)
    assert orjson.dumps(row).decode() == line
    assert (visitor, agent, referer, 'r"1', "p-ff") == (
        row["visitor_id"],
        row["user_agent"],
        row["referer"],
        row["revision"],
        row["session_id"],
    )


def test_each_row_has_its_own_requests_attributes_whether_queued_as_json_or_not() -> None:
    """Attributes are made once per distinct context in a batch, yet every row carries its
    own request's: nested contexts (queued as JSON) and flat ones (queued as dicts) alike."""
    decision = ruled("visitor-4")[0]
    contexts: list[Any] = [
        b'{"geo":{"country":"FR"}}',
        {"plan": "gold"},
        b'{"geo":{"country":"DE"}}',
        {"plan": "gold"},
        b'{"geo":{"country":"FR"}}',
        {"plan": "free"},
    ]
    items: list[Item] = [
        (1.0, f"v{n}", n, decision.outcome, context, None, None, "r")
        for n, context in enumerate(contexts)
    ]
    values = [[a["value"] for a in row["attributes"]] for row in batch_of(items, 0, "p").records()]
    expected = [
        ['{"country":"FR"}'],
        ["gold"],
        ['{"country":"DE"}'],
        ["gold"],
        ['{"country":"FR"}'],
        ["free"],
    ]
    assert expected == values


def test_attributes_kept_from_batch_to_batch_are_those_of_each_row() -> None:
    """A cache shared by batches gives every row its own context's attributes, as a batch
    built alone does, and stays within its bound however many contexts pass."""
    decision = ruled("visitor-5")[0]
    cache = AttributeCache()
    for first in (0, 1, KNOWN_CONTEXTS - 2):  # the second batch meets two known contexts
        contexts: list[Any] = [
            *(b'{"geo":{"country":"C%d"}}' % n for n in range(first, first + 3)),
            *({"plan": f"p{n}", "age": n} for n in range(first, first + 3)),
            {"text": "lone \udcff surrogate"},  # not JSON as it is: scrubbed, never kept
        ]
        items: list[Item] = [
            (1.0, f"v{n}", n, decision.outcome, context, None, None, "r")
            for n, context in enumerate(contexts)
        ]
        alone = batch_of(items, 0, "p").records()
        shared = batch_of(items, 0, "p", cache).records()
        assert [row["attributes"] for row in alone] == [row["attributes"] for row in shared]
        assert len(cache.known) <= KNOWN_CONTEXTS
    for n in range(KNOWN_CONTEXTS + 10):
        cache.part({"n": n})
    assert len(cache.known) <= KNOWN_CONTEXTS


def test_undecodable_header_bytes_become_replacement_characters() -> None:
    """A header with bytes that are not UTF-8 (lone surrogates once decoded) does not fail
    the batch; the row says what could be read."""
    decision = ruled("visitor-3")[0]
    item: Item = (1.0, "visitor-3", 1, decision.outcome, {}, "bot/\udcff1.0", None, "r")
    [row] = batch_of([item], 0, "p").records()
    assert "bot/" in row["user_agent"]
    assert "\ufffd" in row["user_agent"]
    assert [] == row["attributes"]
    assert None is row["referer"]


def test_a_batch_filtered_by_kind_keeps_lines_and_kinds_together() -> None:
    """only() picks the records of the kinds a sink takes, and is the batch itself when
    nothing is left out."""
    batch = Batch.of(
        [{"kind": "odp", "n": 1}, {"kind": "decision", "n": 2}, {"kind": "odp", "n": 3}]
    )
    odp = batch.only(frozenset({"odp"}))
    assert [{"kind": "odp", "n": 1}, {"kind": "odp", "n": 3}] == odp.records()
    assert ("odp", "odp") == odp.kinds
    assert batch is batch.only(frozenset({"odp", "decision"}))
    assert {"odp": 2, "decision": 1} == batch.counts()


def test_uuids_are_version_7_in_order_and_distinct() -> None:
    """Generated uuids read back as RFC 9562 version 7 uuids carrying the time in ms, come
    in increasing order, and none repeats, also past one prefix's worth of rows."""
    made = new_uuids(5000, now_ms=1_795_332_590_123)
    assert 5000 == len(set(made))
    assert sorted(made) == made
    for text in made:
        parsed = uuid.UUID(text)
        assert (7, uuid.RFC_4122, text) == (parsed.version, parsed.variant, str(parsed))
        assert 1_795_332_590_123 == parsed.int >> 80


def test_a_batch_past_one_prefix_of_rows_still_has_distinct_uuids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the row numbers of one prefix run out, a new random prefix takes over."""
    monkeypatch.setattr(records, "ROWS_PER_PREFIX", 4)
    three = outcomes(ruled("visitor-5")[:1] * 3)  # three rows an item
    items: list[Item] = [(1.0, f"v-{n}", n, three, {}, UA, REFERER, "r") for n in range(5)]
    rows = batch_of(items, 0, "p").records()
    assert 15 == len({row["uuid"] for row in rows})
    assert 5 == len({row["uuid"][:-5] for row in rows})
    assert 20 == len(set(new_uuids(20)))


def test_rows_past_the_numbered_suffixes_still_count_up() -> None:
    """A batch with more rows than ``ROW_SUFFIXES`` numbers each row in order all the same."""
    outcome = ruled("visitor-9")[0].outcome
    count = len(records.ROW_SUFFIXES) + 3
    items: list[Item] = [(1.0, f"v-{n}", n, outcome, {}, None, None, "r") for n in range(count)]
    uuids = [row["uuid"] for row in batch_of(items, 0, "p").records()]
    assert list(range(count)) == [int(text[-5:], 16) for text in uuids]
    assert 1 == len({text[:-5] for text in uuids})


def test_attribution_lists_the_sessions_outcomes_with_their_ids() -> None:
    """A conversion's experiments come from the outcomes its session holds."""
    decisions = ruled("visitor-4")
    experiments = attribution(decision.outcome for decision in decisions)
    assert [
        {
            "campaign_id": str(d.flag_id) if d.flag_id is not None else d.flag,
            "experiment_id": str(d.experiment_id) if d.experiment_id is not None else d.rule,
            "variation_id": str(d.variation_id) if d.variation_id is not None else d.variation,
            "is_holdback": False,
        }
        for d in decisions
    ] == experiments


def test_an_item_that_cannot_be_written_is_left_out_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row that fails to build (a bug) costs only its own item: the batch keeps the others
    in order and says how many events it could not write."""
    distinct = {id(d): d for n in range(50) for d in ruled(f"visitor-{n}")}
    broken, good = list(distinct.values())[:2]
    real_part = records._decision_part

    def failing_part(outcome: str) -> dict[str, Any]:
        if outcome == broken.outcome:
            raise RuntimeError("a bug in building a row")
        return real_part(outcome)

    monkeypatch.setattr(records, "_decision_part", failing_part)
    conversion = {"kind": "conversion", "uuid": "c-2", "visitor_id": "visitor-6"}
    items: list[Item] = [
        (1.0, "visitor-7", 1, outcomes([good, good]), {}, UA, REFERER, "r"),
        (1.0, "visitor-6", 2, outcomes([good, broken]), {}, UA, REFERER, "r"),
        conversion,
    ]
    batch = batch_of(items, 0, "p")
    assert 2 == batch.unwritable
    assert ("decision", "decision", "conversion") == batch.kinds
    assert ["visitor-7", "visitor-7", "visitor-6"] == [r["visitor_id"] for r in batch.records()]
