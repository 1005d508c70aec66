"""Checking visitor data items: every bad field is a 400 naming it."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import ApiError
from service.visitors.items import ItemLimits, read_items

LIMITS = ItemLimits(max_items=5, max_url=40, max_cookies=2)


def _field_of(body: dict[str, Any]) -> str | None:
    with pytest.raises(ApiError) as caught:
        read_items(body, LIMITS)
    assert 400 == caught.value.status
    return caught.value.field


def test_every_type_is_read_with_its_fields_only() -> None:
    """Each type keeps its checked fields; absent optional ones stay absent."""
    items = read_items(
        {
            "data": [
                {"type": "browser", "browser": "chrome", "version": 120.5},
                {"type": "geolocation", "country": "FR", "city": "Paris"},
                {"type": "custom_data", "index": 3, "values": ["gold", ""]},
                {"type": "conversion", "goal_id": 32, "revenue": 19.99},
                {"type": "cookie", "cookies": {"cart": "3"}},
            ]
        },
        LIMITS,
    )
    assert [
        {"type": "browser", "browser": "chrome", "version": 120.5},
        {"type": "geolocation", "country": "FR", "city": "Paris"},
        {"type": "custom_data", "index": 3, "values": ["gold", ""]},
        {"type": "conversion", "goal_id": 32, "revenue": 19.99},
        {"type": "cookie", "cookies": {"cart": "3"}},
    ] == items


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"type": "spaceship"}, "data[1].type"),
        ({"browser": "chrome"}, "data[1].type"),
        ({"type": "browser", "browser": "netscape"}, "data[1].browser"),
        ({"type": "browser", "browser": "chrome", "version": "120"}, "data[1].version"),
        ({"type": "device", "device": "phone", "colour": "red"}, "data[1].colour"),
        ({"type": "custom_data", "index": -1, "values": []}, "data[1].index"),
        ({"type": "custom_data", "index": True, "values": []}, "data[1].index"),
        ({"type": "custom_data", "index": 1, "values": ["a", 2]}, "data[1].values[1]"),
        ({"type": "custom_data", "index": 1, "values": "a"}, "data[1].values"),
        ({"type": "page_view", "url": "https://shop.example/" + "a" * 40}, "data[1].url"),
        (
            {"type": "page_view", "url": "https://a.example", "referrers": ["x"]},
            "data[1].referrers",
        ),
        ({"type": "geolocation", "country": "FR", "latitude": 91}, "data[1].latitude"),
        ({"type": "geolocation", "city": "Paris"}, "data[1].country"),
        ({"type": "conversion", "goal_id": 1.5}, "data[1].goal_id"),
        ({"type": "conversion", "goal_id": 1, "revenue": "19.99"}, "data[1].revenue"),
        ({"type": "conversion", "goal_id": 1, "negative": "yes"}, "data[1].negative"),
        ({"type": "cookie", "cookies": {"a": "1", "b": "2", "c": "3"}}, "data[1].cookies"),
        ({"type": "cookie", "cookies": {"a": 1}}, "data[1].cookies.a"),
        ({"type": "user_agent", "value": ""}, "data[1].value"),
        ({"type": "unique_identifier", "value": "u" * 256}, "data[1].value"),
        ("browser", "data[1]"),
    ],
)
def test_a_bad_item_is_refused_naming_its_field(item: Any, field: str) -> None:
    """The error names the item by its position and the field inside it."""
    good = {"type": "device", "device": "phone"}
    assert field == _field_of({"data": [good, item]})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "data"),
        ({"data": []}, "data"),
        ({"data": {"type": "device"}}, "data"),
        ({"data": [{"type": "device", "device": "phone"}] * 6}, "data"),
        ({"data": [{"type": "device", "device": "phone"}], "extra": 1}, "extra"),
    ],
)
def test_a_bad_body_is_refused(body: dict[str, Any], field: str) -> None:
    """No list, an empty one, too many items or an unknown field: 400 naming it."""
    assert field == _field_of(body)
