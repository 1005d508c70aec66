"""Events through the API: exposures from decisions, conversions, tracked and ODP events,
each checked in the file sink, and every bad input refused with nothing recorded."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import rules
from service.tracking import to_cents
from tests.service.conftest import DEMO, Api, AppFactory

FR_PHONE = {"geo": {"country": "FR"}, "device": "phone"}
RULESET = rules.load(DEMO.read_bytes())
DECISION = "/v1/flags/{flag}/decision"


def written(tmp_path: Path) -> list[dict[str, Any]]:
    """Every record in the file sink, in order (the file still open included)."""
    files = sorted((tmp_path / "events").glob("*.jsonl*"))
    return [json.loads(line) for path in files for line in path.read_text().splitlines()]


async def delivered(api: Api, tmp_path: Path, count: int) -> list[dict[str, Any]]:
    """Flush, then wait until the file sink holds ``count`` records."""
    reply = await api.post("/v1/visitors/{visitor_code}/flush", {"visitor_code": "anyone"})
    assert 202 == reply.status
    deadline = time.monotonic() + 10
    while len(records := written(tmp_path)) < count:
        assert time.monotonic() < deadline, f"only {len(records)} of {count} records arrived"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # and no more than that
    records = written(tmp_path)
    assert count == len(records)
    return records


def visitor_with_a_rule(flag: str, context: dict[str, Any] | None = None) -> str:
    """A visitor whose decision for ``flag`` comes from a rule (found, not assumed)."""
    for number in range(1000):
        code = f"visitor-{number}"
        if RULESET.decide(flag, code, context or {}).rule is not None:
            return code
    raise AssertionError("no visitor gets a rule")


async def test_a_tracked_decision_becomes_one_exposure_record(api: Api, tmp_path: Path) -> None:
    """A decision by a rule is written once as an export-schema decision row."""
    visitor = visitor_with_a_rule("new_checkout", FR_PHONE)
    expected = RULESET.decide("new_checkout", visitor, FR_PHONE)
    body = {"visitor_code": visitor, "context": FR_PHONE}
    headers = {"User-Agent": "shop/1.0", "Referer": "https://shop.example/cart"}
    for _ in range(3):  # asked on every page: one exposure per session
        reply = await api.post(DECISION, {"flag": "new_checkout"}, json=body, headers=headers)
        assert 200 == reply.status
    [record] = await delivered(api, tmp_path, 1)
    assert 7 == uuid.UUID(record["uuid"]).version
    assert {
        "kind": "decision",
        "visitor_id": visitor,
        "campaign_id": "1001",
        "experiment_id": str(expected.experiment_id or expected.rule),
        "variation_id": str(expected.variation_id),
        "flag": "new_checkout",
        "rule": expected.rule,
        "variation": expected.variation,
        "user_agent": "shop/1.0",
        "referer": "https://shop.example/cart",
        "is_holdback": False,
        "revision": "2026-12-02.1",
        "client_engine": "flagpost",
    } == {
        name: record[name]
        for name in (
            "kind",
            "visitor_id",
            "campaign_id",
            "experiment_id",
            "variation_id",
            "flag",
            "rule",
            "variation",
            "user_agent",
            "referer",
            "is_holdback",
            "revision",
            "client_engine",
        )
    }
    assert {"id": "device", "name": "device", "type": "custom", "value": "phone"} in record[
        "attributes"
    ]
    assert {"id": "geo", "name": "geo", "type": "custom", "value": '{"country":"FR"}'} in record[
        "attributes"
    ]
    assert record["timestamp"] <= record["process_timestamp"]
    assert record["session_id"]


async def test_untracked_default_and_disabled_decisions_record_nothing(
    api: Api, tmp_path: Path
) -> None:
    """track=false, a default answer and a disabled flag are not exposures."""
    visitor = visitor_with_a_rule("new_checkout", FR_PHONE)
    untracked = {"visitor_code": visitor, "context": FR_PHONE, "track": False}
    await api.post(DECISION, {"flag": "new_checkout"}, json=untracked)
    await api.get(
        DECISION, {"flag": "new_checkout"}, params={"visitor_code": visitor, "track": "false"}
    )
    await api.post(DECISION, {"flag": "new_checkout"}, json={"visitor_code": "visitor-1"})
    await api.post(DECISION, {"flag": "maintenance_banner"}, json={"visitor_code": visitor})
    await api.post("/v1/decide", json={**untracked})
    assert [] == await delivered(api, tmp_path, 0)


async def test_every_decision_endpoint_records_exposures(api: Api, tmp_path: Path) -> None:
    """/active, /variables, /v1/decide and OFREP (single and bulk) record their exposures."""
    visitors = [f"everywhere-{n}" for n in range(5)]
    context = FR_PHONE
    await api.post(
        "/v1/flags/{flag}/active",
        {"flag": "new_checkout"},
        json={"visitor_code": visitors[0], "context": context},
    )
    await api.post(
        "/v1/flags/{flag}/variables/{variable}",
        {"flag": "new_checkout", "variable": "button_color"},
        json={"visitor_code": visitors[1], "context": context},
    )
    await api.post("/v1/decide", json={"visitor_code": visitors[2], "context": context})
    await api.post(
        "/v1/decide",
        json={"visitor_code": visitors[3], "context": context, "flags": ["new_checkout"]},
    )
    await api.post(
        "/ofrep/v1/evaluate/flags/{key}",
        {"key": "new_checkout"},
        json={"context": {"targetingKey": visitors[4], **context}},
    )
    await api.post(
        "/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": visitors[4], **context}}
    )
    expected = []
    for index, visitor in enumerate(visitors):
        flags = RULESET.flag_keys if index in (2, 4) else ("new_checkout",)
        for flag in flags:
            decision = RULESET.decide(flag, visitor, context)
            if decision.rule is not None:
                expected.append((visitor, flag, decision.variation))
    records = await delivered(api, tmp_path, len(expected))
    assert sorted(expected) == sorted((r["visitor_id"], r["flag"], r["variation"]) for r in records)


async def test_track_records_a_conversion_attributed_to_the_session(
    api: Api, tmp_path: Path
) -> None:
    """/v1/track writes a conversion with revenue, value, tags and the session's exposures."""
    visitor = visitor_with_a_rule("new_checkout", FR_PHONE)
    await api.post(
        DECISION, {"flag": "new_checkout"}, json={"visitor_code": visitor, "context": FR_PHONE}
    )
    reply = await api.post(
        "/v1/track",
        json={
            "event_key": "purchase",
            "user_id": visitor,
            "attributes": {"plan": "pro"},
            "event_tags": {"revenue": 4200, "value": 3.5, "category": "shoes", "count": 2},
        },
    )
    assert 202 == reply.status
    assert "accepted" == reply.body["status"]
    exposure, conversion = await delivered(api, tmp_path, 2)
    assert reply.body["uuid"] == conversion["uuid"]
    assert {
        "kind": "conversion",
        "entity_id": "83023",
        "event_name": "purchase",
        "event_type": "custom",
        "revenue": 4200,
        "value": 3.5,
        "quantity": 1,
        "tags": {"category": "shoes", "count": "2"},
        "session_id": exposure["session_id"],
        "attributes": [{"id": "plan", "name": "plan", "type": "custom", "value": "pro"}],
    } == {
        name: conversion[name]
        for name in (
            "kind",
            "entity_id",
            "event_name",
            "event_type",
            "revenue",
            "value",
            "quantity",
            "tags",
            "session_id",
            "attributes",
        )
    }
    assert [
        {
            "campaign_id": exposure["campaign_id"],
            "experiment_id": exposure["experiment_id"],
            "variation_id": exposure["variation_id"],
            "is_holdback": False,
        }
    ] == conversion["experiments"]


async def test_goal_conversions_including_a_cancelled_one(api: Api, tmp_path: Path) -> None:
    """A goal conversion counts one; a negative one takes one back with its revenue, given in
    currency units as Kameleoon sends it and kept in cents."""
    path = {"visitor_code": "buyer-1"}
    first = await api.post(
        "/v1/visitors/{visitor_code}/conversions", path, json={"goal_id": 83023, "revenue": 19.99}
    )
    second = await api.post(
        "/v1/visitors/{visitor_code}/conversions",
        path,
        json={"goal_id": 83023, "revenue": 19.99, "negative": True},
    )
    assert (202, 202) == (first.status, second.status)
    records = await delivered(api, tmp_path, 2)
    assert [("purchase", 1999, 1), ("purchase", -1999, -1)] == [
        (r["event_name"], r["revenue"], r["quantity"]) for r in records
    ]
    assert ["buyer-1", "buyer-1"] == [r["visitor_id"] for r in records]


async def test_odp_event_gets_defaults_the_caller_may_override(api: Api, tmp_path: Path) -> None:
    """ODP events get idempotence_id and data_source fields unless the caller sets them."""
    reply = await api.post(
        "/v1/odp/events",
        json={
            "action": "purchased",
            "identifiers": {"fs_user_id": "user123", "email": "user@example.com"},
            "data": {"item": "shirt", "price": 50.0, "data_source": "checkout", "gift": None},
        },
    )
    assert 202 == reply.status
    [record] = await delivered(api, tmp_path, 1)
    assert "fullstack" == record["type"]
    assert "purchased" == record["action"]
    assert {
        "idempotence_id": reply.body["uuid"],
        "data_source_type": "sdk",
        "data_source": "checkout",
        "item": "shirt",
        "price": 50.0,
        "gift": None,
    } == {name: value for name, value in record["data"].items() if name != "data_source_version"}


BAD_EVENTS = [
    ("/v1/track", {"user_id": "v"}, 400, "event_key"),
    ("/v1/track", {"event_key": "purchase"}, 400, "user_id"),
    ("/v1/track", {"event_key": "purchase", "user_id": "x" * 300}, 400, "user_id"),
    ("/v1/track", {"event_key": "purchase", "user_id": ""}, 400, "user_id"),
    ("/v1/track", {"event_key": 7, "user_id": "v"}, 400, "event_key"),
    ("/v1/track", {"event_key": "refund", "user_id": "v"}, 404, "event_key"),
    (
        "/v1/track",
        {"event_key": "purchase", "user_id": "v", "event_tags": {"revenue": 12.5}},
        400,
        "event_tags.revenue",
    ),
    (
        "/v1/track",
        {"event_key": "purchase", "user_id": "v", "event_tags": {"revenue": True}},
        400,
        "event_tags.revenue",
    ),
    (
        "/v1/track",
        {"event_key": "purchase", "user_id": "v", "event_tags": {"value": "high"}},
        400,
        "event_tags.value",
    ),
    (
        "/v1/track",
        {"event_key": "purchase", "user_id": "v", "event_tags": {"nested": {"a": 1}}},
        400,
        "event_tags.nested",
    ),
    ("/v1/track", {"event_key": "purchase", "user_id": "v", "event_tags": []}, 400, "event_tags"),
    (
        "/v1/track",
        {"event_key": "purchase", "user_id": "v", "attributes": "pro"},
        400,
        "attributes",
    ),
    ("/v1/track", {"event_key": "purchase", "user_id": "v", "extra": 1}, 400, "extra"),
    ("/v1/visitors/v/conversions", {}, 400, "goal_id"),
    ("/v1/visitors/v/conversions", {"goal_id": "83023"}, 400, "goal_id"),
    ("/v1/visitors/v/conversions", {"goal_id": 1}, 404, "goal_id"),
    ("/v1/visitors/v/conversions", {"goal_id": 83023, "revenue": "10"}, 400, "revenue"),
    ("/v1/visitors/v/conversions", {"goal_id": 83023, "negative": "yes"}, 400, "negative"),
    (
        "/v1/visitors/v/conversions",
        {"goal_id": 83023, "revenue": 2**64 - 1, "negative": True},
        400,
        "revenue",
    ),
    (
        "/v1/track",
        {"event_key": "purchase", "user_id": "v", "event_tags": {"revenue": 2**63}},
        400,
        "event_tags.revenue",
    ),
    (f"/v1/visitors/{'x' * 300}/conversions", {"goal_id": 83023}, 400, "visitor_code"),
    ("/v1/odp/events", {"identifiers": {"a": "b"}}, 400, "action"),
    ("/v1/odp/events", {"action": "", "identifiers": {"a": "b"}}, 400, "action"),
    ("/v1/odp/events", {"action": "x"}, 400, "identifiers"),
    ("/v1/odp/events", {"action": "x", "identifiers": {}}, 400, "identifiers"),
    ("/v1/odp/events", {"action": "x", "identifiers": {"a": 1}}, 400, "identifiers.a"),
    ("/v1/odp/events", {"action": "x", "identifiers": {"a": "b"}, "type": 3}, 400, "type"),
    (
        "/v1/odp/events",
        {"action": "x", "identifiers": {"a": "b"}, "data": {"l": [1]}},
        400,
        "data.l",
    ),
    ("/v1/odp/events", {"action": "x", "identifiers": {"a": "b"}, "data": "d"}, 400, "data"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD_EVENTS)
async def test_bad_events_are_refused_and_nothing_is_recorded(
    api: Api, tmp_path: Path, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    """Each invalid event gets its 4xx naming the field, and none of it reaches the sink."""
    route, params = path, None
    if path.startswith("/v1/visitors/"):
        route, params = (
            "/v1/visitors/{visitor_code}/conversions",
            {"visitor_code": path.split("/")[3]},
        )
    reply = await api.post(route, params, json=body)  # the answer is checked against OpenAPI too
    assert (status, field) == (reply.status, reply.body["error"].get("field"))
    if status == 404:
        assert "EVENT_NOT_FOUND" == reply.body["error"]["code"]
    assert [] == await delivered(api, tmp_path, 0)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
async def test_malformed_event_bodies_are_refused(api: Api, tmp_path: Path, raw: bytes) -> None:
    """Malformed JSON or a non-object body is a 400 on every events endpoint."""
    for path in ("/v1/track", "/v1/visitors/v/conversions", "/v1/odp/events"):
        async with api.client.post(
            path, data=raw, headers={"Content-Type": "application/json"}
        ) as response:
            assert 400 == response.status
    assert [] == await delivered(api, tmp_path, 0)


async def test_flush_reports_the_visitors_pending_events(start: AppFactory) -> None:
    """The flush answer counts the visitor's events that were waiting, each exposure of a
    /v1/decide included."""
    visitor, exposures = next(
        (code, count)
        for code in (f"visitor-{n}" for n in range(1000))
        if (count := sum(d.rule is not None for d in RULESET.decide_all(code, FR_PHONE).values()))
        > 1
    )
    async with start(flush_interval=3600.0) as api:
        for goal in (83023, 83024):
            await api.post(
                "/v1/visitors/{visitor_code}/conversions",
                {"visitor_code": visitor},
                json={"goal_id": goal},
            )
        await api.post(
            "/v1/visitors/{visitor_code}/conversions",
            {"visitor_code": "other"},
            json={"goal_id": 83025},
        )
        decided = await api.post("/v1/decide", json={"visitor_code": visitor, "context": FR_PHONE})
        assert 200 == decided.status
        reply = await api.post("/v1/visitors/{visitor_code}/flush", {"visitor_code": visitor})
    assert {"visitor_code": visitor, "flushed": 2 + exposures, "data": 0} == reply.body


async def test_config_and_metrics_show_the_sinks(api: Api, tmp_path: Path) -> None:
    """/v1/config reports sink health; /metrics counts accepted and delivered events."""
    await api.post(
        "/v1/visitors/{visitor_code}/conversions", {"visitor_code": "m"}, json={"goal_id": 83023}
    )
    await delivered(api, tmp_path, 1)
    config = (await api.get("/v1/config")).body["events"]
    [sink] = config["sinks"]
    assert (True, 1, 0) == (sink["healthy"], sink["delivered"], sink["spool_batches"])
    metrics = (await api.get("/metrics")).body.decode()
    assert 'flagpost_events_accepted_total{kind="conversion"} 1.0' in metrics
    assert (
        f'flagpost_events_delivered_total{{kind="conversion",sink="file:{tmp_path / "events"}"}} 1.0'
        in metrics
    )


async def test_events_off_records_nothing_and_says_so(start: AppFactory, tmp_path: Path) -> None:
    """With FLAGPOST_EVENTS=off, events are still validated but answered as discarded."""
    async with start(events=()) as api:
        reply = await api.post("/v1/track", json={"event_key": "purchase", "user_id": "v"})
        visitor = visitor_with_a_rule("new_checkout", FR_PHONE)
        await api.post(
            DECISION, {"flag": "new_checkout"}, json={"visitor_code": visitor, "context": FR_PHONE}
        )
        config = (await api.get("/v1/config")).body["events"]
    assert (202, "discarded") == (reply.status, reply.body["status"])
    assert [] == config["sinks"]
    assert not (tmp_path / "events").exists()


@pytest.mark.parametrize(
    ("revenue", "cents"),
    [(19.99, 1999), (0.125, 13), (2.675, 268), (-0.125, -13), (7, 700), (1e-9, 0)],
)
def test_currency_units_become_cents_rounded_half_up(revenue: float, cents: int) -> None:
    """Rounded from the number's decimal text, half away from zero."""
    assert cents == to_cents(revenue)
