"""A visitor's record and its targeting attributes: pure functions, checked directly."""

from __future__ import annotations

from typing import Any

from service.visitors.changes import add_data, forget, set_consent, take_unflushed
from service.visitors.records import (
    KEPT_PAGE_VIEWS,
    add_items,
    attributes_of,
    targeting,
    view,
)

TTL = 1_800_000  # 30 minutes, in ms
T0 = 1_764_633_600_000


def _typical() -> list[dict[str, Any]]:
    return [
        {"type": "browser", "browser": "chrome", "version": 120},
        {"type": "device", "device": "desktop"},
        {"type": "operating_system", "os": "windows"},
        {"type": "geolocation", "country": "FR", "city": "Paris"},
        {"type": "custom_data", "index": 1, "values": ["gold"]},
        {"type": "page_view", "url": "https://shop.example/", "title": "Home"},
        {"type": "page_view", "url": "https://shop.example/cart"},
        {"type": "conversion", "goal_id": 32},
        {"type": "conversion", "goal_id": 33, "negative": True},
        {"type": "cookie", "cookies": {"cart": "3"}},
        {"type": "user_agent", "value": "Mozilla/5.0"},
    ]


def test_every_documented_attribute_is_derived() -> None:
    """The flat ``visitor.*`` names read the newest data of the current visit."""
    record = add_items(None, _typical(), T0, TTL)
    assert {
        "visitor.browser": "chrome",
        "visitor.browser_version": 120,
        "visitor.device": "desktop",
        "visitor.os": "windows",
        "visitor.geo.country": "FR",
        "visitor.geo.city": "Paris",
        "visitor.custom.1": ["gold"],
        "visitor.page.url": "https://shop.example/cart",
        "visitor.page_urls": ["https://shop.example/", "https://shop.example/cart"],
        "visitor.page_views": 2,
        "visitor.goals": [32],
        "visitor.cookies.cart": "3",
        "visitor.user_agent": "Mozilla/5.0",
        "visitor.visits": 1,
        "visitor.first_visit": T0 / 1000,
    } == targeting(attributes_of(record, TTL), T0)


def test_one_instance_per_type_and_per_custom_index() -> None:
    """A newer browser replaces the older; custom data is kept per index."""
    record = add_items(None, _typical(), T0, TTL)
    later: list[dict[str, Any]] = [
        {"type": "browser", "browser": "firefox"},
        {"type": "custom_data", "index": 2, "values": ["x"]},
        {"type": "custom_data", "index": 1, "values": ["silver"]},
    ]
    attributes = targeting(attributes_of(add_items(record, later, T0 + 1, TTL), TTL), T0 + 1)
    assert ("firefox", None) == (
        attributes["visitor.browser"],
        attributes.get("visitor.browser_version"),
    )
    assert (["silver"], ["x"]) == (attributes["visitor.custom.1"], attributes["visitor.custom.2"])


def test_page_views_keep_the_newest_but_count_every_one() -> None:
    """Beyond the bound the oldest page views go; the count still says how many there were."""
    views = [{"type": "page_view", "url": f"https://shop.example/{n}"} for n in range(40)]
    attributes = targeting(attributes_of(add_items(None, views, T0, TTL), TTL), T0)
    assert 40 == attributes["visitor.page_views"]
    assert KEPT_PAGE_VIEWS == len(attributes["visitor.page_urls"])
    assert "https://shop.example/39" == attributes["visitor.page_urls"][-1]


def test_an_ended_visit_leaves_only_the_history_to_target() -> None:
    """After the session duration idle, targeting sees visits and first visit, not the data."""
    record = add_items(None, _typical(), T0, TTL)
    assert {"visitor.visits": 1, "visitor.first_visit": T0 / 1000} == targeting(
        attributes_of(record, TTL), T0 + TTL
    )


def test_a_new_visit_starts_after_the_session_duration() -> None:
    """Data added after an idle session opens visit two; the first is kept as history."""
    record = add_items(None, _typical(), T0, TTL)
    later = T0 + TTL + 5
    record = add_items(record, [{"type": "device", "device": "phone"}], later, TTL)
    attributes = targeting(attributes_of(record, TTL), later)
    assert (2, T0 / 1000, "phone") == (
        attributes["visitor.visits"],
        attributes["visitor.last_visit"],
        attributes["visitor.device"],
    )
    assert "visitor.browser" not in attributes
    shown = view(record, later, TTL, previous_visits=1)
    assert [("phone", 0), ("desktop", 1)] == [
        (item["device"], item["visit"]) for item in shown["data"]["device"]
    ]
    assert ["phone"] == [
        item["device"] for item in view(record, later, TTL, previous_visits=0)["data"]["device"]
    ]


def test_linking_joins_the_codes_data_with_the_users() -> None:
    """A unique identifier moves the code's own data into the user's record and links them."""
    own = add_items(None, [{"type": "device", "device": "phone"}], T0, TTL)
    user = add_items(None, [{"type": "browser", "browser": "safari"}], T0 - 10, TTL)
    link = [{"type": "unique_identifier", "value": "user-1"}]
    write = add_data(link)
    assert ["user-1", "device-code"] == write.needed("device-code", None)
    change = write.apply("device-code", None, {"user-1": user, "device-code": own}, T0 + 1, TTL)
    assert ("user-1", "user-1", None) == (change.id, change.link, change.records["device-code"])
    joined = targeting(attributes_of(change.records["user-1"], TTL), T0 + 1)  # type: ignore[arg-type]
    assert ("safari", "phone") == (joined["visitor.browser"], joined["visitor.device"])
    assert ["user-1", "device-code"] == forget().needed("device-code", "user-1")


def test_a_flush_takes_what_was_added_since_the_last_one() -> None:
    """Items are taken once each, oldest first."""
    record = add_items(None, _typical()[:2], T0, TTL)
    first = take_unflushed().apply("v", None, {"v": record}, T0, TTL)
    assert ["browser", "device"] == [item["type"] for item in first.result]
    again = take_unflushed().apply("v", None, {"v": first.record()}, T0, TTL)
    assert [] == again.result
    more = add_items(first.record(), _typical()[2:3], T0 + 1, TTL)
    assert ["operating_system"] == [
        item["type"] for item in take_unflushed().apply("v", None, {"v": more}, T0, TTL).result
    ]


def test_withdrawn_consent_deletes_the_data_and_keeps_the_answer() -> None:
    """Consent false leaves a record holding only the consent."""
    record = add_items(None, _typical(), T0, TTL)
    change = set_consent(False).apply("v", None, {"v": record}, T0 + 1, TTL)
    kept = change.record()
    assert kept is not None
    assert (False, {}) == (kept["consent"], view(kept, T0 + 1, TTL)["data"])
