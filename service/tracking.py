"""The events API: ``/v1/track``, goal conversions, ODP events and a visitor's flush.

Every body is checked whole before anything is queued: an invalid event gets 400 naming the
field (or 404 EVENT_NOT_FOUND for an event the rules do not declare) and none of it reaches a
sink. Accepted events answer 202 with the record's ``uuid``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, TypeGuard

from aiohttp import web

from rules.model import Event
from service.errors import ApiError, invalid, json_response
from service.events.pipeline import Pipeline
from service.events.records import (
    conversion_record,
    events_in,
    new_uuids,
    odp_record,
    visitor_data_record,
)
from service.events.sessions import NUMBER, outcomes_of
from service.payloads import Limits, check_context, check_visitor_code, read_json, refuse_unknown
from service.store import RulesStore
from service.visitors.changes import take_unflushed
from service.visitors.stores import VisitorStore

if TYPE_CHECKING:
    from service.shell import Shell

__all__ = ["Tracking"]

_SCALARS = (str, int, float, bool)


def _accepted(uuid: str, recorded: bool) -> web.Response:
    body = {"status": "accepted" if recorded else "discarded", "uuid": uuid}
    return json_response(body, 202)


def _text(body: Mapping[str, Any], name: str, *, default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None:
        raise invalid(f"{name} is required", field=name)
    if not isinstance(value, str) or not value:
        raise invalid(f"{name} must be a non-empty string", field=name)
    return value


def _is_integer(value: object) -> TypeGuard[int]:
    """A JSON integer that fits a signed 64-bit field (as the export's ``long`` does)."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _is_amount(value: object) -> bool:
    """A finite JSON number whose cents fit a signed 64-bit field."""
    return _is_number(value) and math.isfinite(value) and abs(value) < 2**53 / 100


def to_cents(amount: float) -> int:
    """Currency units to cents, rounded half up (away from zero): 19.99 -> 1999, 0.125 -> 13.
    Taken from the number's shortest decimal text, so 19.99 is not 1998.9999..."""
    cents = (Decimal(repr(amount)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(cents)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flat_object(
    value: object, name: str, limits: Limits, allowed: tuple[type, ...], expects: str
) -> dict[str, Any]:
    """An object of scalar values (``None`` reads as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{name} must be a JSON object", field=name)
    if len(value) > limits.max_attributes:
        raise invalid(f"{name} has more than {limits.max_attributes} entries", field=name)
    for key, item in value.items():
        if item is None and type(None) in allowed:
            continue
        if not isinstance(item, allowed):
            raise invalid(f"{name}.{key} must be {expects}", field=f"{name}.{key}")
    return value


class Tracking:
    def __init__(
        self,
        store: RulesStore,
        pipeline: Pipeline,
        limits: Limits,
        visitors: VisitorStore | None = None,
    ) -> None:
        self.store = store
        self.visitors = visitors
        self.pipeline = pipeline
        self.limits = limits
        self.recording = bool(pipeline.workers)

    def add_routes(self, router: Shell) -> None:
        router.add("POST", "/v1/track", self.track)
        router.add("POST", "/v1/visitors/{visitor_code}/conversions", self.convert)
        router.add("POST", "/v1/visitors/{visitor_code}/flush", self.flush)
        router.add("POST", "/v1/odp/events", self.odp_event)

    def _declared(self) -> tuple[Mapping[str, Event], str]:
        snapshot = self.store.served()
        return snapshot.ruleset.events, snapshot.ruleset.revision

    def _record(self, record: dict[str, Any]) -> web.Response:
        return _accepted(record["uuid"], self.accept(record))

    async def track(self, request: web.BaseRequest) -> web.Response:
        body = await read_json(request, self.limits)
        refuse_unknown(body, frozenset({"event_key", "user_id", "attributes", "event_tags"}))
        event_key = _text(body, "event_key")
        visitor = check_visitor_code(body.get("user_id"), "user_id")
        attributes = check_context(body.get("attributes"), self.limits, "attributes")
        tags = dict(
            _flat_object(
                body.get("event_tags"),
                "event_tags",
                self.limits,
                _SCALARS,
                "a string, number or boolean",
            )
        )
        revenue = tags.pop("revenue", None)
        if revenue is not None and not _is_integer(revenue):
            raise invalid(
                "event_tags.revenue must be an integer (cents)", field="event_tags.revenue"
            )
        value = tags.pop("value", None)
        if value is not None and not _is_number(value):
            raise invalid("event_tags.value must be a number", field="event_tags.value")
        events, revision = self._declared()
        event = events.get(event_key)
        if event is None:
            raise ApiError(
                404, "EVENT_NOT_FOUND", f"no event {event_key!r} in the rules", "event_key"
            )
        return self._record(
            self._conversion_record(
                request, visitor, event, attributes, revenue, value, 1, tags, revision
            )
        )

    async def convert(self, request: web.BaseRequest, visitor_code: str) -> web.Response:
        visitor = check_visitor_code(visitor_code)
        body = await read_json(request, self.limits)
        refuse_unknown(body, frozenset({"goal_id", "revenue", "negative"}))
        goal = body.get("goal_id")
        if not _is_integer(goal):
            raise invalid("goal_id must be an integer", field="goal_id")
        revenue = body.get("revenue")
        if revenue is not None and not _is_amount(revenue):
            raise invalid("revenue must be a number (currency units)", field="revenue")
        negative = body.get("negative", False)
        if not isinstance(negative, bool):
            raise invalid("negative must be true or false", field="negative")
        event, revision = self.goal(goal)
        return self._record(self.goal_record(request, visitor, event, revision, revenue, negative))

    def goal(self, goal_id: int, field: str = "goal_id") -> tuple[Event, str]:
        """The event the rules declare with ``goal_id``, and the rules' revision; 404
        EVENT_NOT_FOUND naming ``field`` when there is none."""
        events, revision = self._declared()
        event = next((event for event in events.values() if event.id == goal_id), None)
        if event is None:
            raise ApiError(
                404, "EVENT_NOT_FOUND", f"no event with id {goal_id} in the rules", field
            )
        return event, revision

    def goal_record(
        self,
        request: web.BaseRequest,
        visitor: str,
        event: Event,
        revision: str,
        revenue: float | None,
        negative: bool,
    ) -> dict[str, Any]:
        """The conversion record of a goal reached, as Kameleoon's ``track_conversion``
        sends it: ``revenue`` in currency units (kept in cents, rounded half up), and a
        ``negative`` conversion taking one (and its revenue) back."""
        cents = to_cents(revenue) if revenue is not None else None
        if negative and cents is not None:
            cents = -cents
        quantity = -1 if negative else 1
        return self._conversion_record(
            request, visitor, event, {}, cents, None, quantity, {}, revision
        )

    def accept(self, record: dict[str, Any]) -> bool:
        """Queue a record built here; False when events are off."""
        if self.recording:
            self.pipeline.accept(record)
        return self.recording

    def _conversion_record(
        self,
        request: web.BaseRequest,
        visitor: str,
        event: Event,
        attributes: Mapping[str, Any],
        revenue: int | None,
        value: float | None,
        quantity: int,
        tags: Mapping[str, Any],
        revision: str,
    ) -> dict[str, Any]:
        now = time.time()
        session = self.pipeline.sessions.touch(visitor, now)
        record = conversion_record(
            uuid=new_uuids(1)[0],
            seconds=now,
            visitor=visitor,
            session=self.pipeline.sessions.id_of(session[NUMBER]),
            exposures=outcomes_of(session),
            event_key=event.key,
            event_id=event.id,
            attributes=attributes,
            user_agent=request.headers.get("User-Agent"),
            referer=request.headers.get("Referer"),
            revenue=revenue,
            value=float(value) if value is not None else None,
            quantity=quantity,
            tags=tags,
            revision=revision,
        )
        return record

    async def odp_event(self, request: web.BaseRequest) -> web.Response:
        body = await read_json(request, self.limits)
        refuse_unknown(body, frozenset({"action", "identifiers", "type", "data"}))
        action = _text(body, "action")
        kind = _text(body, "type", default="fullstack")
        identifiers = _flat_object(
            body.get("identifiers"), "identifiers", self.limits, (str,), "a string"
        )
        if not identifiers:
            raise invalid("identifiers needs at least one identifier", field="identifiers")
        data = _flat_object(
            body.get("data"),
            "data",
            self.limits,
            (*_SCALARS, type(None)),
            "a string, number, boolean or null",
        )
        record = odp_record(
            uuid=new_uuids(1)[0],
            seconds=time.time(),
            type=kind,
            action=action,
            identifiers=identifiers,
            data=data,
        )
        return self._record(record)

    async def flush(self, request: web.BaseRequest, visitor_code: str) -> web.Response:
        """Send what is queued now, and the visitor data added since the visitor's last
        flush (conversion items are not sent again: they were recorded when added)."""
        visitor = check_visitor_code(visitor_code)
        await read_json(request, self.limits)  # a body, if any, must still be valid JSON
        pending = sum(
            events_in(item) for item in self.pipeline.queue.items if _visitor_of(item) == visitor
        )
        try:
            sent = await self._send_visitor_data(visitor)
        finally:
            self.pipeline.flush()
        body = {"visitor_code": visitor, "flushed": pending + sent, "data": sent}
        return json_response(body, 202)

    async def _send_visitor_data(self, visitor: str) -> int:
        if self.visitors is None or not self.recording:
            return 0
        taken = (await self.visitors.write(visitor, take_unflushed())).result
        items = [item for item in taken if item["type"] != "conversion"]
        now = time.time()
        session = self.pipeline.sessions.id_of(self.pipeline.sessions.touch(visitor, now)[NUMBER])
        for uuid, item in zip(new_uuids(len(items)), items, strict=True):
            self.pipeline.accept(
                visitor_data_record(
                    uuid=uuid, seconds=now, visitor=visitor, session=session, item=item
                )
            )
        return len(items)


def _visitor_of(item: object) -> str | None:
    if isinstance(item, dict):
        visitor = item.get("visitor_id")
        return visitor if isinstance(visitor, str) else None
    return item[1] if isinstance(item, tuple) else None
