"""What is recorded of a visitor: consent, bots, stored attributes and linked users."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import rules
from tests.service.conftest import DEMO, Api, AppFactory
from tests.service.test_events import delivered, written

RULESET = rules.load(DEMO.read_bytes())
EXPERIMENTS = {"checkout_ab", "widgets_abn"}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
DATA = "/v1/visitors/{visitor_code}/data"
CONSENT = "/v1/visitors/{visitor_code}/consent"


def _context(visitor: str) -> dict[str, Any]:
    return {"account_id": visitor, "plan": "pro"}


def _visitors_with_both_kinds(count: int) -> list[str]:
    """Visitors whose decisions include an experiment exposure and a targeted delivery."""
    found = []
    for number in range(1000):
        code = f"visitor-{number}"
        decisions = RULESET.decide_all(code, _context(code)).values()
        if {"experiment", "targeted_delivery"} <= {d.rule_type for d in decisions if d.rule}:
            found.append(code)
            if len(found) == count:
                return found
    raise AssertionError("not enough such visitors")


def _visitor_with_both_kinds() -> str:
    return _visitors_with_both_kinds(1)[0]


def _exposures(visitor: str) -> list[tuple[str, str]]:
    decisions = RULESET.decide_all(visitor, _context(visitor)).values()
    return sorted((d.flag, d.rule_type or "") for d in decisions if d.rule)


async def _decide_all(api: Api, visitor: str, user_agent: str = BROWSER) -> None:
    reply = await api.post(
        "/v1/decide",
        json={"visitor_code": visitor, "context": _context(visitor)},
        headers={"User-Agent": user_agent, "Referer": "https://shop.example/"},
    )
    assert 200 == reply.status


async def test_without_consent_only_targeted_deliveries_are_recorded_bare(
    start: AppFactory, tmp_path: Path
) -> None:
    """Consent required and not given: experiment exposures go; what stays has no attributes."""
    visitor = _visitor_with_both_kinds()
    targeted = [e for e in _exposures(visitor) if e[1] == "targeted_delivery"]
    async with start(consent_required=True) as api:
        await _decide_all(api, visitor)
        records = await delivered(api, tmp_path, len(targeted))
        metrics = (await api.get("/metrics")).body.decode()
    assert {r["rule"] for r in records}.isdisjoint(EXPERIMENTS)
    assert [([], None, None)] * len(targeted) == [
        (r["attributes"], r["user_agent"], r["referer"]) for r in records
    ]
    dropped = len(_exposures(visitor)) - len(targeted)
    assert f'flagpost_events_filtered_total{{reason="no_consent"}} {float(dropped)}' in metrics


async def test_with_consent_every_exposure_is_recorded_whole(
    start: AppFactory, tmp_path: Path
) -> None:
    """Consent given: experiment exposures too, with attributes and headers."""
    visitor = _visitor_with_both_kinds()
    async with start(consent_required=True) as api:
        given = await api.call("PUT", CONSENT, {"visitor_code": visitor}, json={"consent": True})
        assert "kameleoonVisitorCode=" + visitor in given.headers["Set-Cookie"]
        await _decide_all(api, visitor)
        records = await delivered(api, tmp_path, len(_exposures(visitor)))
    assert {r["rule"] for r in records} & EXPERIMENTS
    assert all(r["user_agent"] == BROWSER for r in records)


async def test_a_conversion_without_consent_is_recorded_without_attributes(
    start: AppFactory, tmp_path: Path
) -> None:
    """A conversion always counts; without consent it carries no attributes or headers."""
    async with start(consent_required=True) as api:
        body = {"event_key": "purchase", "user_id": "v1", "attributes": {"plan": "pro"}}
        await api.post("/v1/track", json=body, headers={"User-Agent": BROWSER})
        [record] = await delivered(api, tmp_path, 1)
    assert ("conversion", [], None) == (record["kind"], record["attributes"], record["user_agent"])


async def test_bots_are_not_recorded_but_app_clients_are(api: Api, tmp_path: Path) -> None:
    """A crawler's header or a stored ``curl`` user agent records nothing; python-requests does."""
    crawler, stored_bot, app_client = _visitors_with_both_kinds(3)
    googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    await _decide_all(api, crawler, googlebot)
    await api.post(DATA, {"visitor_code": stored_bot}, json={"data": [
        {"type": "user_agent", "value": "curl/8.0"}]})  # fmt: skip
    await _decide_all(api, stored_bot, BROWSER)
    await _decide_all(api, app_client, "python-requests/2.32")
    records = await delivered(api, tmp_path, len(_exposures(app_client)))
    assert {app_client} == {r["visitor_id"] for r in records}
    metrics = (await api.get("/metrics")).body.decode()
    bots = len(_exposures(crawler)) + len(_exposures(stored_bot))
    assert f'flagpost_events_filtered_total{{reason="bot"}} {float(bots)}' in metrics


async def test_decision_records_carry_the_stored_attributes(api: Api, tmp_path: Path) -> None:
    """Browser, device, OS, country and custom data join the request's own attributes."""
    visitor = _visitor_with_both_kinds()
    items: list[dict[str, Any]] = [
        {"type": "browser", "browser": "firefox", "version": 128},
        {"type": "geolocation", "country": "FR", "city": "Lyon"},
        {"type": "custom_data", "index": 1, "values": ["gold"]},
        {"type": "page_view", "url": "https://shop.example/"},
    ]
    await api.post(DATA, {"visitor_code": visitor}, json={"data": items})
    await _decide_all(api, visitor)
    records = await delivered(api, tmp_path, len(_exposures(visitor)))
    names = {(a["name"], a["value"]) for a in records[0]["attributes"]}
    assert {
        ("plan", "pro"),
        ("account_id", visitor),
        ("visitor.browser", "firefox"),
        ("visitor.browser_version", "128"),
        ("visitor.geo.country", "FR"),
        ("visitor.custom.1", '["gold"]'),
    } == names


async def test_a_linked_visitor_is_recorded_under_the_user_id(api: Api, tmp_path: Path) -> None:
    """After a unique identifier, the visitor code's exposures and conversions name the user."""
    visitor = _visitor_with_both_kinds()
    link = {"data": [{"type": "unique_identifier", "value": "user-7"}]}
    await api.post(DATA, {"visitor_code": visitor}, json=link)
    await _decide_all(api, visitor)
    await api.post("/v1/visitors/{visitor_code}/conversions", {"visitor_code": visitor},
                   json={"goal_id": 83023})  # fmt: skip
    records = await delivered(api, tmp_path, len(_exposures(visitor)) + 1)
    assert {"user-7"} == {r["visitor_id"] for r in records}


async def test_withdrawn_consent_deletes_the_data_and_expires_the_cookie(api: Api) -> None:
    """Consent false: the data is gone and the cookie is expired."""
    await api.post(
        DATA, {"visitor_code": "v1"}, json={"data": [{"type": "device", "device": "phone"}]}
    )
    reply = await api.call("PUT", CONSENT, {"visitor_code": "v1"}, json={"consent": False})
    assert (False, "kameleoonVisitorCode=; Max-Age=0; Path=/; SameSite=Lax") == (
        reply.body["consent"],
        reply.headers["Set-Cookie"],
    )
    stored = (await api.get(DATA, {"visitor_code": "v1"})).body
    assert ({}, False) == (stored["data"], stored["consent"])


async def _code(api: Api, headers: dict[str, str] | None = None, **params: str) -> Any:
    """GET /v1/visitor-code as a new browser would (the client keeps no cookie between)."""
    api.client.session.cookie_jar.clear()
    return await api.get("/v1/visitor-code", headers=headers, params=params)


async def test_visitor_code_comes_from_cookie_query_default_or_is_new(api: Api) -> None:
    """The cookie wins, then visitor_code, then default_visitor_code, else 16 new hex."""
    cookie = {"Cookie": "other=1; kameleoonVisitorCode=from-cookie"}
    assert ["from-cookie", "q", "d"] == [
        (await _code(api, cookie, visitor_code="q")).body["visitor_code"],
        (await _code(api, visitor_code="q", default_visitor_code="d")).body["visitor_code"],
        (await _code(api, default_visitor_code="d")).body["visitor_code"],
    ]
    fresh = (await _code(api, {"Cookie": "kameleoonVisitorCode=" + "x" * 300})).body
    assert 16 == len(fresh["visitor_code"])
    int(fresh["visitor_code"], 16)
    reply = await _code(api, visitor_code="q")
    assert (
        "kameleoonVisitorCode=q; Max-Age=32832000; Path=/; SameSite=Lax"
        == reply.body["set_cookie"]
        == reply.headers["Set-Cookie"]
    )
    refused = await _code(api, default_visitor_code="a b")
    assert (400, "INVALID_VISITOR_CODE") == (refused.status, refused.body["error"]["code"])


async def test_no_cookie_without_consent_when_it_is_required(start: AppFactory) -> None:
    """Consent required and not given: set_cookie is null and no header is sent."""
    async with start(consent_required=True, cookie_domain="shop.example") as api:
        reply = await _code(api, visitor_code="v1")
        assert (None, None) == (reply.body["set_cookie"], reply.headers.get("Set-Cookie"))
        await api.call("PUT", CONSENT, {"visitor_code": "v1"}, json={"consent": True})
        reply = await _code(api, visitor_code="v1")
        assert reply.headers["Set-Cookie"].endswith("; Path=/; Domain=shop.example; SameSite=Lax")


async def test_screening_never_holds_back_other_events(api: Api, tmp_path: Path) -> None:
    """Events of visitors with no stored data are recorded as before."""
    visitor = _visitor_with_both_kinds()
    await _decide_all(api, visitor)
    records = await delivered(api, tmp_path, len(_exposures(visitor)))
    await asyncio.sleep(0)
    assert len(written(tmp_path)) == len(records)


async def test_a_conversion_item_is_also_a_conversion_event(api: Api, tmp_path: Path) -> None:
    """Stored for targeting (visitor.goals) and recorded as POST .../conversions records it."""
    item = {"type": "conversion", "goal_id": 83023, "revenue": 19.99}
    added = await api.post(DATA, {"visitor_code": "buyer"}, json={"data": [item]})
    assert 200 == added.status
    [record] = await delivered(api, tmp_path, 1)
    assert ("conversion", "purchase", 1999, 1, "buyer") == (
        record["kind"],
        record["event_name"],
        record["revenue"],
        record["quantity"],
        record["visitor_id"],
    )


async def test_an_undeclared_goal_stores_nothing(api: Api, tmp_path: Path) -> None:
    """A conversion item for a goal the rules do not declare: 404 naming it, nothing kept."""
    items = [{"type": "device", "device": "phone"}, {"type": "conversion", "goal_id": 1}]
    reply = await api.post(DATA, {"visitor_code": "buyer"}, json={"data": items})
    assert (404, "EVENT_NOT_FOUND", "data[1].goal_id") == (
        reply.status,
        reply.body["error"]["code"],
        reply.body["error"]["field"],
    )
    assert {} == (await api.get(DATA, {"visitor_code": "buyer"})).body["data"]


async def test_the_tracking_code_hands_over_recent_experiment_assignments(api: Api) -> None:
    """Each experiment exposure becomes an assignVariation and a trigger, ids as recorded."""
    visitor = _visitor_with_both_kinds()
    experiments = [
        d for d in RULESET.decide_all(visitor, _context(visitor)).values()
        if d.rule_type == "experiment"
    ]  # fmt: skip
    await _decide_all(api, visitor)
    reply = await api.get("/v1/visitors/{visitor_code}/tracking-code", {"visitor_code": visitor})
    expected = "window.kameleoonQueue=window.kameleoonQueue||[];" + "".join(
        f"window.kameleoonQueue.push(['Experiments.assignVariation',{d.experiment_id},{d.variation_id}]);"
        f"window.kameleoonQueue.push(['Experiments.trigger',{d.experiment_id},true]);"
        for d in sorted(experiments, key=lambda d: d.flag)
    )
    assert reply.headers["Content-Type"].startswith("application/javascript")
    assert sorted(expected.split(";")) == sorted(reply.body.decode().split(";"))
    other = await api.get("/v1/visitors/{visitor_code}/tracking-code", {"visitor_code": "nobody"})
    assert b"window.kameleoonQueue=window.kameleoonQueue||[];" == other.body


async def test_a_flush_sends_the_data_added_since_the_last_one(api: Api, tmp_path: Path) -> None:
    """Page views and custom data go out once, as visitor_data records; a conversion item was
    already recorded when it was added and is not sent again."""
    items = [
        {"type": "page_view", "url": "https://shop.example/cart", "title": "Cart"},
        {"type": "custom_data", "index": 2, "values": ["vip"]},
        {"type": "conversion", "goal_id": 83024},
    ]
    await api.post(DATA, {"visitor_code": "v1"}, json={"data": items})
    first = await api.post("/v1/visitors/{visitor_code}/flush", {"visitor_code": "v1"})
    assert (2, 3) == (first.body["data"], first.body["flushed"])
    again = await api.post("/v1/visitors/{visitor_code}/flush", {"visitor_code": "v1"})
    assert 0 == again.body["data"]
    records = await delivered(api, tmp_path, 3)
    sent = [(r["type"], r["data"]) for r in records if r["kind"] == "visitor_data"]
    assert [
        ("page_view", {"url": "https://shop.example/cart", "title": "Cart"}),
        ("custom_data", {"index": 2, "values": ["vip"]}),
    ] == sent
    assert ["add_to_cart"] == [r["event_name"] for r in records if r["kind"] == "conversion"]


async def test_data_without_consent_is_never_sent(start: AppFactory, tmp_path: Path) -> None:
    """Consent required and not given: the data is kept for targeting, and not sent."""
    async with start(consent_required=True) as api:
        page = {"type": "page_view", "url": "https://shop.example/cart"}
        await api.post(DATA, {"visitor_code": "v1"}, json={"data": [page]})
        assert (
            1
            == (await api.post("/v1/visitors/{visitor_code}/flush", {"visitor_code": "v1"})).body[
                "data"
            ]
        )
        await asyncio.sleep(0.3)
        assert [] == written(tmp_path)
        assert "on" == (
            await api.post("/v1/flags/{flag}/decision", {"flag": "cart_reminder"},
                           json={"visitor_code": "v1", "track": False})
        ).body["variation"]  # fmt: skip
