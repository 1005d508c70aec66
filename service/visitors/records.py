"""A visitor's stored record, and what is derived from it: pure functions on plain values.

A record is a JSON object, the same in every store::

    {"first": ms, "last": ms, "visits": n, "seq": n, "flushed": n, "consent": bool | null,
     "current": visit, "previous": [visit, ...]}          (newest previous visit first)
    visit = {"start": ms, "end": ms, "browser": item, ..., "custom_data": {"3": item},
             "page_view": [item, ...], "conversion": [item, ...], "page_views": n}

Each stored item is the checked item (``service.visitors.items``) plus ``time`` (ms, when it
was added) and ``seq`` (its number in this record: those above ``flushed`` are not sent yet).
A visit ends when the visitor has been idle for the session duration; the next addition then
starts a new one and the old one joins ``previous``.

Targeting reads *attributes*: a flat dict of ``visitor.*`` names (``visitor.browser``,
``visitor.geo.country``, ``visitor.custom.3``, ...) built when the record changes, so a
decision merges it into its context without walking the record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "KEPT_CONVERSIONS",
    "KEPT_PAGE_VIEWS",
    "KEPT_VISITS",
    "Record",
    "add_items",
    "attributes_of",
    "merge_records",
    "recorded",
    "targeting",
    "unflushed",
    "view",
]

Record = dict[str, Any]
#: Page views and conversions kept per visit (the newest); a visit still counts every page.
KEPT_PAGE_VIEWS: Final = 25
KEPT_CONVERSIONS: Final = 50
#: Previous visits kept per visitor (the newest).
KEPT_VISITS: Final = 25
#: Types of which a visit keeps one item (a newer one replaces it).
SINGLE: Final = frozenset(
    {"browser", "device", "operating_system", "geolocation", "user_agent", "cookie",
     "unique_identifier"}
)  # fmt: skip
LISTED: Final = {"page_view": KEPT_PAGE_VIEWS, "conversion": KEPT_CONVERSIONS}
#: The attributes that outlive a visit: what a returning visitor is targeted on before any
#: new data arrives.
HISTORY: Final = ("visitor.visits", "visitor.first_visit", "visitor.last_visit")
#: The key of a stored attributes object giving, in ms, when its visit's part expires. Its
#: name is under ``visitor.``, which no request's context may use, so merged into a
#: decision's context as it is (the cheapest way), it shadows none of the request's.
UNTIL: Final = "visitor.~until"
#: The key of a stored attributes object holding the visitor's consent (true, false, null).
CONSENT: Final = "visitor.~consent"
#: The stored attributes a decision record carries (with every ``visitor.custom.*``): what
#: results are broken down by.
RECORDED: Final = frozenset(
    {"visitor.browser", "visitor.browser_version", "visitor.device", "visitor.os",
     "visitor.geo.country"}
)  # fmt: skip


def new_record(now: int) -> Record:
    return {
        "first": now,
        "last": now,
        "visits": 1,
        "seq": 0,
        "flushed": 0,
        "consent": None,
        "current": {"start": now, "end": now},
        "previous": [],
    }


def _roll_visit(record: Record, now: int, ttl: int) -> None:
    """Start a new visit when the current one has ended (idle for ``ttl`` ms)."""
    if record["last"] + ttl > now:
        return
    ended = record["current"]
    if len(ended) > 2:  # a visit with data (not only start and end) is history worth keeping
        record["previous"] = [ended, *record["previous"]][:KEPT_VISITS]
    record["current"] = {"start": now, "end": now}
    record["visits"] += 1


def add_items(
    record: Record | None, items: Iterable[Mapping[str, Any]], now: int, ttl: int
) -> Record:
    """``record`` (None: a new visitor) with ``items`` added at ``now``; changed in place."""
    if record is None:
        record = new_record(now)
    else:
        _roll_visit(record, now, ttl)
    visit = record["current"]
    for item in items:
        record["seq"] += 1
        stamped = {**item, "time": now, "seq": record["seq"]}
        kind = item["type"]
        if kind in SINGLE:
            visit[kind] = stamped
        elif kind == "custom_data":
            visit.setdefault("custom_data", {})[str(item["index"])] = stamped
        else:
            kept = visit.setdefault(kind, [])
            kept.append(stamped)
            del kept[: -LISTED[kind]]
            if kind == "page_view":
                visit["page_views"] = visit.get("page_views", 0) + 1
    record["last"] = visit["end"] = now
    return record


def touch(record: Record | None, now: int, ttl: int) -> Record:
    """``record`` with activity at ``now`` and nothing added (a consent change, say)."""
    return add_items(record, (), now, ttl)


def merge_records(into: Record | None, other: Record | None) -> Record | None:
    """One record of two (a visitor code's own data joining a signed-in user's): single
    items keep the newer, lists join in time order, visits and counts add up."""
    if into is None or other is None:
        return into if other is None else other
    offset = into["seq"]
    merged_visit = dict(into["current"])
    for kind, value in other["current"].items():
        if kind in ("start", "end", "page_views"):
            continue
        merged_visit[kind] = _merge_slot(kind, merged_visit.get(kind), value, offset)
    merged_visit["start"] = min(into["current"]["start"], other["current"]["start"])
    merged_visit["end"] = max(into["current"]["end"], other["current"]["end"])
    views = into["current"].get("page_views", 0) + other["current"].get("page_views", 0)
    if views:
        merged_visit["page_views"] = views
    previous = sorted(
        [*into["previous"], *other["previous"]], key=lambda visit: visit["start"], reverse=True
    )
    return {
        **into,
        "first": min(into["first"], other["first"]),
        "last": max(into["last"], other["last"]),
        "visits": max(into["visits"], other["visits"]),
        "seq": offset + other["seq"],
        "flushed": into["flushed"],
        "consent": into["consent"] if into["consent"] is not None else other["consent"],
        "current": merged_visit,
        "previous": previous[:KEPT_VISITS],
    }


def _merge_slot(kind: str, mine: Any, theirs: Any, offset: int) -> Any:
    def renumbered(item: dict[str, Any]) -> dict[str, Any]:
        return {**item, "seq": item["seq"] + offset}

    if kind == "custom_data":
        merged = dict(mine or {})
        for index, item in theirs.items():
            if index not in merged or merged[index]["time"] <= item["time"]:
                merged[index] = renumbered(item)
        return merged
    if kind in LISTED:
        joined = sorted([*(mine or []), *map(renumbered, theirs)], key=lambda i: i["time"])
        return joined[-LISTED[kind] :]
    if mine is None or mine["time"] <= theirs["time"]:
        return renumbered(theirs)
    return mine


# -- derived views ----------------------------------------------------------------------------


def attributes_of(record: Record, ttl: int) -> dict[str, Any]:
    """The targeting attributes of ``record`` (flat ``visitor.*`` names), with ``until``:
    when, in ms, the current visit's part of them expires."""
    visit = record["current"]
    found: dict[str, Any] = {UNTIL: record["last"] + ttl, CONSENT: record["consent"]}
    if browser := visit.get("browser"):
        found["visitor.browser"] = browser["browser"]
        if "version" in browser:
            found["visitor.browser_version"] = browser["version"]
    if device := visit.get("device"):
        found["visitor.device"] = device["device"]
    if system := visit.get("operating_system"):
        found["visitor.os"] = system["os"]
    if geo := visit.get("geolocation"):
        for name in ("country", "region", "city", "postal_code", "latitude", "longitude"):
            if name in geo:
                found[f"visitor.geo.{name}"] = geo[name]
    for index, custom in visit.get("custom_data", {}).items():
        found[f"visitor.custom.{index}"] = custom["values"]
    if pages := visit.get("page_view"):
        found["visitor.page.url"] = pages[-1]["url"]
        if "title" in pages[-1]:
            found["visitor.page.title"] = pages[-1]["title"]
        found["visitor.page_urls"] = [page["url"] for page in pages]
    found["visitor.page_views"] = visit.get("page_views", 0)
    if conversions := visit.get("conversion"):
        found["visitor.goals"] = list(
            dict.fromkeys(item["goal_id"] for item in conversions if not item.get("negative"))
        )
    if cookie := visit.get("cookie"):
        for name, value in cookie["cookies"].items():
            found[f"visitor.cookies.{name}"] = value
    if agent := visit.get("user_agent"):
        found["visitor.user_agent"] = agent["value"]
    found["visitor.visits"] = record["visits"]
    found["visitor.first_visit"] = record["first"] / 1000
    if previous := record["previous"]:
        found["visitor.last_visit"] = previous[0]["start"] / 1000
    return found


def targeting(stored: Mapping[str, Any], now: int) -> dict[str, Any]:
    """The attributes a decision at ``now`` (ms) sees: all of them while the visit lasts,
    only the visit history after it."""
    if now < stored[UNTIL]:
        return {name: value for name, value in stored.items() if name not in (UNTIL, CONSENT)}
    return {name: stored[name] for name in HISTORY if name in stored}


def recorded(stored: Mapping[str, Any], now: int) -> dict[str, Any]:
    """The stored attributes a decision record at ``now`` (ms) carries."""
    if now >= stored[UNTIL]:
        return {}
    return {
        name: value
        for name, value in stored.items()
        if name in RECORDED or name.startswith("visitor.custom.")
    }


def _items(kind: str, value: Any) -> Iterable[dict[str, Any]]:
    """The items a visit holds under ``kind``."""
    if kind == "custom_data":
        return value.values()  # type: ignore[no-any-return]
    return value if kind in LISTED else [value]


def _visits(record: Record, now: int, ttl: int) -> list[tuple[int, Record]]:
    """(number, visit): 0 is the current visit (absent when it has ended), 1 the one before."""
    current = record["current"]
    previous = record["previous"]
    if record["last"] + ttl <= now:  # the current visit has ended: it is the latest previous
        return [(number, visit) for number, visit in enumerate([current, *previous], 1)]
    return [(0, current), *((number, visit) for number, visit in enumerate(previous, 1))]


def view(
    record: Record | None,
    now: int,
    ttl: int,
    *,
    kinds: frozenset[str] | None = None,
    previous_visits: int = 0,
) -> dict[str, Any]:
    """What is stored, by type: the items of the current visit and of up to
    ``previous_visits`` earlier ones (each with ``time`` and ``visit``: 0 the current one)."""
    data: dict[str, list[dict[str, Any]]] = {}
    if record is None:
        return {"visits": None, "consent": None, "data": data}
    for number, visit in _visits(record, now, ttl):
        if number > previous_visits:
            break
        for kind, value in visit.items():
            if kind in ("start", "end", "page_views") or (kinds is not None and kind not in kinds):
                continue
            for item in _items(kind, value):
                shown = {name: field for name, field in item.items() if name not in ("seq", "type")}
                data.setdefault(kind, []).append({**shown, "visit": number})
    history = {"count": record["visits"], "first": record["first"], "last": record["last"]}
    return {"visits": history, "consent": record["consent"], "data": data}


def unflushed(record: Record) -> list[dict[str, Any]]:
    """The items not sent yet (numbered above ``flushed``), oldest first."""
    found: list[dict[str, Any]] = []
    for visit in (record["current"], *record["previous"]):
        for kind, value in visit.items():
            if kind in ("start", "end", "page_views"):
                continue
            found += (item for item in _items(kind, value) if item["seq"] > record["flushed"])
    return sorted(found, key=lambda item: item["seq"])
