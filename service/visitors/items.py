"""Visitor data items from a request body, checked: each problem is a 400 naming the field.

An item is a JSON object typed by ``"type"``; what comes out is a plain dict with the checked
fields only (absent optional fields left out), ready to be stored as JSON. A request's items
are all checked before any is stored: one bad item refuses the whole request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from service.errors import invalid

__all__ = ["BROWSERS", "DEVICES", "KINDS", "SYSTEMS", "ItemLimits", "read_items"]

BROWSERS: Final = ("chrome", "internet_explorer", "firefox", "safari", "opera", "other")
DEVICES: Final = ("phone", "tablet", "desktop")
SYSTEMS: Final = ("windows", "mac", "ios", "linux", "android", "windows_phone")
#: Longest text of a field that is not a URL (titles, custom values, cookie values, ...).
MAX_TEXT: Final = 1024
MAX_REFERRERS: Final = 32
MAX_CUSTOM_VALUES: Final = 100
MAX_CUSTOM_INDEX: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ItemLimits:
    """How much one request may add (settings ``FLAGPOST_VISITOR_MAX_*``)."""

    max_items: int = 100
    max_url: int = 2048
    max_cookies: int = 50


Item = dict[str, Any]
Reader = Callable[[Item, str, ItemLimits], Item]


def read_items(body: Mapping[str, Any], limits: ItemLimits) -> list[Item]:
    """The checked items of ``{"data": [item, ...]}``."""
    for name in body:
        if name != "data":
            raise invalid(f"unknown field {name!r} (expected: data)", field=name)
    data = body.get("data")
    if not isinstance(data, list):
        raise invalid("data must be a list of visitor data items", field="data")
    if not data:
        raise invalid("data must hold at least one item", field="data")
    if len(data) > limits.max_items:
        raise invalid(f"data holds more than {limits.max_items} items", field="data")
    return [_read_item(item, f"data[{index}]", limits) for index, item in enumerate(data)]


def _read_item(item: object, at: str, limits: ItemLimits) -> Item:
    if not isinstance(item, dict):
        raise invalid(f"{at} must be a JSON object", field=at)
    kind = item.get("type")
    reader = _READERS.get(kind) if isinstance(kind, str) else None
    if reader is None or not isinstance(kind, str):
        expected = ", ".join(KINDS)
        raise invalid(f"{at}.type must be one of {expected}", field=f"{at}.type")
    fields = _FIELDS[kind]
    for name in item:
        if name != "type" and name not in fields:
            allowed = ", ".join(fields)
            raise invalid(
                f"{at}: unknown field {name!r} for {kind} (expected: {allowed})",
                field=f"{at}.{name}",
            )
    return {"type": kind, **reader(item, at, limits)}


# -- fields -------------------------------------------------------------------------------


def _text(item: Mapping[str, Any], name: str, at: str, limit: int = MAX_TEXT) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"{at}.{name} must be a non-empty string", field=f"{at}.{name}")
    if len(value) > limit:
        raise invalid(f"{at}.{name} is longer than {limit} characters", field=f"{at}.{name}")
    return value


def _choice(item: Mapping[str, Any], name: str, at: str, allowed: tuple[str, ...]) -> str:
    value = item.get(name)
    if value not in allowed:
        raise invalid(f"{at}.{name} must be one of {', '.join(allowed)}", field=f"{at}.{name}")
    return str(value)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) < 2**53
    )


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _optional(item: Item, into: Item, name: str, check: Callable[[object], bool], at: str,
              expects: str) -> None:  # fmt: skip
    if name not in item or item[name] is None:
        return
    if not check(item[name]):
        raise invalid(f"{at}.{name} must be {expects}", field=f"{at}.{name}")
    into[name] = item[name]


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


# -- one reader per type -------------------------------------------------------------------


def _browser(item: Item, at: str, limits: ItemLimits) -> Item:
    read: Item = {"browser": _choice(item, "browser", at, BROWSERS)}
    _optional(item, read, "version", _is_number, at, "a number")
    return read


def _device(item: Item, at: str, limits: ItemLimits) -> Item:
    return {"device": _choice(item, "device", at, DEVICES)}


def _operating_system(item: Item, at: str, limits: ItemLimits) -> Item:
    return {"os": _choice(item, "os", at, SYSTEMS)}


def _geolocation(item: Item, at: str, limits: ItemLimits) -> Item:
    read: Item = {"country": _text(item, "country", at)}
    for name in ("region", "city", "postal_code"):
        _optional(item, read, name, _short_text, at, f"a non-empty string of at most {MAX_TEXT}")
    _optional(item, read, "latitude", lambda v: _is_number(v) and -90 <= v <= 90,  # type: ignore[operator]
              at, "a number from -90 to 90")  # fmt: skip
    _optional(item, read, "longitude", lambda v: _is_number(v) and -180 <= v <= 180,  # type: ignore[operator]
              at, "a number from -180 to 180")  # fmt: skip
    return read


def _page_view(item: Item, at: str, limits: ItemLimits) -> Item:
    read: Item = {"url": _text(item, "url", at, limits.max_url)}
    _optional(item, read, "title", _short_text, at, f"a non-empty string of at most {MAX_TEXT}")
    referrers = item.get("referrers")
    if referrers is not None:
        if not isinstance(referrers, list) or not all(map(_is_integer, referrers)):
            raise invalid(f"{at}.referrers must be a list of integers", field=f"{at}.referrers")
        if len(referrers) > MAX_REFERRERS:
            raise invalid(
                f"{at}.referrers lists more than {MAX_REFERRERS}", field=f"{at}.referrers"
            )
        read["referrers"] = referrers
    return read


def _custom_data(item: Item, at: str, limits: ItemLimits) -> Item:
    index = item.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_CUSTOM_INDEX:
        raise invalid(f"{at}.index must be an integer from 0 to {MAX_CUSTOM_INDEX}", f"{at}.index")
    values = item.get("values")
    if not isinstance(values, list):
        raise invalid(f"{at}.values must be a list of strings", field=f"{at}.values")
    if len(values) > MAX_CUSTOM_VALUES:
        raise invalid(f"{at}.values lists more than {MAX_CUSTOM_VALUES}", field=f"{at}.values")
    for position, value in enumerate(values):
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            where = f"{at}.values[{position}]"
            raise invalid(f"{where} must be a string of at most {MAX_TEXT}", field=where)
    return {"index": index, "values": values}


def _conversion(item: Item, at: str, limits: ItemLimits) -> Item:
    goal = item.get("goal_id")
    if not _is_integer(goal):
        raise invalid(f"{at}.goal_id must be an integer", field=f"{at}.goal_id")
    read: Item = {"goal_id": goal}
    _optional(item, read, "revenue", _is_number, at, "a number (currency units)")
    _optional(item, read, "negative", lambda v: isinstance(v, bool), at, "true or false")
    return read


def _user_agent(item: Item, at: str, limits: ItemLimits) -> Item:
    return {"value": _text(item, "value", at)}


def _cookie(item: Item, at: str, limits: ItemLimits) -> Item:
    cookies = item.get("cookies")
    if not isinstance(cookies, dict):
        raise invalid(f"{at}.cookies must be an object of names to values", f"{at}.cookies")
    if len(cookies) > limits.max_cookies:
        raise invalid(f"{at}.cookies holds more than {limits.max_cookies}", f"{at}.cookies")
    for name, value in cookies.items():
        where = f"{at}.cookies.{name}"
        if not name or len(name) > 256:
            raise invalid(f"{at}.cookies: a name must be 1 to 256 characters", f"{at}.cookies")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise invalid(f"{where} must be a string of at most {MAX_TEXT}", field=where)
    return {"cookies": cookies}


def _unique_identifier(item: Item, at: str, limits: ItemLimits) -> Item:
    return {"value": _text(item, "value", at, 255)}


_READERS: dict[str, Reader] = {
    "browser": _browser,
    "device": _device,
    "operating_system": _operating_system,
    "geolocation": _geolocation,
    "page_view": _page_view,
    "custom_data": _custom_data,
    "conversion": _conversion,
    "user_agent": _user_agent,
    "cookie": _cookie,
    "unique_identifier": _unique_identifier,
}
_FIELDS: dict[str, tuple[str, ...]] = {
    "browser": ("browser", "version"),
    "device": ("device",),
    "operating_system": ("os",),
    "geolocation": ("country", "region", "city", "postal_code", "latitude", "longitude"),
    "page_view": ("url", "title", "referrers"),
    "custom_data": ("index", "values"),
    "conversion": ("goal_id", "revenue", "negative"),
    "user_agent": ("value",),
    "cookie": ("cookies",),
    "unique_identifier": ("value",),
}
KINDS: Final = tuple(_READERS)
