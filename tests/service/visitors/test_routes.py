"""The visitor data routes on the memory store, and decisions steered by what they store."""

from __future__ import annotations

import asyncio
from typing import Any

from service.visitors.changes import add_data
from service.visitors.stores import MemoryVisitors
from tests.service.conftest import Api

DATA = "/v1/visitors/{visitor_code}/data"
CART = [{"type": "page_view", "url": "https://shop.example/cart", "title": "Cart"}]


async def _cart_reminder(api: Api, visitor: str, **body: Any) -> str:
    reply = await api.post(
        "/v1/flags/{flag}/decision",
        {"flag": "cart_reminder"},
        json={"visitor_code": visitor, "track": False, **body},
    )
    assert 200 == reply.status, reply.body
    variation: str = reply.body["variation"]
    return variation


async def test_added_data_steers_the_next_decision(api: Api) -> None:
    """A page view on the cart turns the demo's cart reminder on for that visitor only."""
    assert "off" == await _cart_reminder(api, "v1")
    reply = await api.post(DATA, {"visitor_code": "v1"}, json={"data": CART})
    assert 200 == reply.status
    assert "on" == await _cart_reminder(api, "v1")
    assert "off" == await _cart_reminder(api, "v2")


async def test_every_decision_route_sees_the_stored_data(api: Api) -> None:
    """/v1/decide (all flags and a list), active, variables and OFREP all read the store."""
    await api.post(DATA, {"visitor_code": "v1"}, json={"data": CART})
    every = await api.post("/v1/decide", json={"visitor_code": "v1", "track": False})
    listed = await api.post(
        "/v1/decide", json={"visitor_code": "v1", "flags": ["cart_reminder"], "track": False}
    )
    active = await api.post(
        "/v1/flags/{flag}/active",
        {"flag": "cart_reminder"},
        json={"visitor_code": "v1", "track": False},
    )
    ofrep = await api.post(
        "/ofrep/v1/evaluate/flags/{key}",
        {"key": "cart_reminder"},
        json={"context": {"targetingKey": "v1"}},
    )
    ofrep_all = await api.post("/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "v1"}})
    reminder = next(f for f in ofrep_all.body["flags"] if f["key"] == "cart_reminder")
    assert ["on", "on", True, "on", "on"] == [
        every.body["decisions"]["cart_reminder"]["variation"],
        listed.body["decisions"]["cart_reminder"]["variation"],
        active.body["active"],
        ofrep.body["variant"],
        reminder["variant"],
    ]


async def test_the_answer_says_what_is_stored(api: Api) -> None:
    """POST answers the current visit by type; GET filters by type."""
    items = [*CART, {"type": "device", "device": "phone"}]
    added = await api.post(DATA, {"visitor_code": "v1"}, json={"data": items})
    assert {"page_view", "device"} == set(added.body["data"])
    assert ("v1", None, 1, None) == (
        added.body["visitor_code"],
        added.body["user_id"],
        added.body["visits"]["count"],
        added.body["consent"],
    )
    read = await api.get(DATA, {"visitor_code": "v1"}, params={"types": "device"})
    assert [{"device": "phone", "visit": 0}] == [
        {k: v for k, v in item.items() if k != "time"} for item in read.body["data"]["device"]
    ]


async def test_delete_forgets_the_visitor(api: Api) -> None:
    """After DELETE nothing is stored and decisions no longer see the data."""
    await api.post(DATA, {"visitor_code": "v1"}, json={"data": CART})
    forgotten = await api.call("DELETE", DATA, {"visitor_code": "v1"})
    assert {"visitor_code": "v1", "forgotten": True} == forgotten.body
    assert {} == (await api.get(DATA, {"visitor_code": "v1"})).body["data"]
    assert "off" == await _cart_reminder(api, "v1")
    again = await api.call("DELETE", DATA, {"visitor_code": "v1"})
    assert {"visitor_code": "v1", "forgotten": False} == again.body


async def test_a_signed_in_user_sees_data_added_on_either_code(api: Api) -> None:
    """After a unique identifier links two devices to one user, data added on one steers the other."""
    link = [{"type": "unique_identifier", "value": "user-42"}]
    await api.post(DATA, {"visitor_code": "laptop"}, json={"data": link})
    await api.post(DATA, {"visitor_code": "phone"}, json={"data": link})
    added = await api.post(DATA, {"visitor_code": "laptop"}, json={"data": CART})
    assert "user-42" == added.body["user_id"]
    assert ["on", "on"] == [
        await _cart_reminder(api, "phone"),
        await _cart_reminder(api, "user-42"),
    ]


async def test_a_bad_item_stores_nothing_of_the_request(api: Api) -> None:
    """One bad item refuses the whole request with its field named."""
    body = {"data": [*CART, {"type": "custom_data", "index": -1, "values": []}]}
    reply = await api.post(DATA, {"visitor_code": "v1"}, json=body)
    assert (400, "INVALID_REQUEST", "data[1].index") == (
        reply.status,
        reply.body["error"]["code"],
        reply.body["error"]["field"],
    )
    assert {} == (await api.get(DATA, {"visitor_code": "v1"})).body["data"]


async def test_a_context_may_not_carry_visitor_attributes(api: Api) -> None:
    """A request's own ``visitor`` (or ``visitor.*``) attribute is refused, not mixed in."""
    for context in ({"visitor": {"page": {"url": "x"}}}, {"visitor.page.url": "x"}):
        reply = await api.post(
            "/v1/flags/{flag}/decision",
            {"flag": "cart_reminder"},
            json={"visitor_code": "v1", "context": context},
        )
        assert (400, "INVALID_REQUEST") == (reply.status, reply.body["error"]["code"])


async def test_read_filters_are_checked(api: Api) -> None:
    """Unknown types, a bad visit count or an unknown parameter: 400 naming it."""
    for params, field in (
        ({"types": "device,spaceship"}, "types"),
        ({"previous_visits": "26"}, "previous_visits"),
        ({"previous_visits": "-1"}, "previous_visits"),
        ({"previous_visits": "\u00b2"}, "previous_visits"),  # a digit to str.isdigit, not to int
        ({"colour": "red"}, "colour"),
    ):
        reply = await api.get(DATA, {"visitor_code": "v1"}, params=params)
        assert (400, field) == (reply.status, reply.body["error"]["field"])


async def test_the_memory_store_evicts_the_least_recently_active(start: Any) -> None:
    """Past the visitor limit the visitor idle longest goes first."""
    async with start(visitor_limit=2) as api:
        for visitor in ("a", "b"):
            await api.post(DATA, {"visitor_code": visitor}, json={"data": CART})
        assert "on" == await _cart_reminder(api, "a")  # a decision is activity: b is now oldest
        await api.post(DATA, {"visitor_code": "c"}, json={"data": CART})
        assert ["on", "off", "on"] == [await _cart_reminder(api, v) for v in ("a", "b", "c")]


async def test_the_memory_store_sweeps_what_expired() -> None:
    """Entries and links past their retention go at the next sweep, the live ones stay."""
    store = MemoryVisitors(ttl=0.01, retention=0.01, limit=100)
    await store.write("old", add_data(CART))
    await store.write("linked", add_data([{"type": "unique_identifier", "value": "user-1"}]))
    await asyncio.sleep(0.05)
    store.retention = 60_000  # what is written from now on lives a minute
    await store.write("new", add_data(CART))
    assert 3 == store.sweep()  # old, user-1, and the link of linked
    assert (["new"], []) == (list(store.entries), list(store.links))
