"""Reading requests: every body and query is hostile until checked here.

Each problem becomes an ``ApiError`` naming the field: a body that is too large (413), one
that does not arrive within the body timeout (408), one that cannot be decoded (a bogus
``Content-Encoding``), malformed JSON, a wrong type, an unknown field, a bad visitor code, or
a context with too many or too deeply nested attributes (400).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from aiohttp.hdrs import EXPECT

from service.errors import ApiError, invalid

__all__ = ["DecisionQuery", "Limits", "parse_json", "read_body", "read_json", "read_query"]

MAX_VISITOR_CODE = 255
MAX_FLAGS_PER_REQUEST = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int
    max_attributes: int
    max_depth: int
    #: Seconds a client has to send a whole body: one that announces 100 bytes and sends 5
    #: must not keep its connection (and a handler) for ever.
    body_timeout: float = 10.0


class DecisionQuery(NamedTuple):
    """What a decision request asks, checked. (A named tuple: built on every request.)"""

    visitor_code: str
    context: dict[str, Any]
    environment: str | None
    track: bool
    flags: tuple[str, ...] | None = None
    active_only: bool = False


async def read_body(request: web.BaseRequest, limits: Limits) -> bytes:
    """The raw body, refused with 413 above the limit (declared or streamed), 408 when it is
    not all there in time, 400 when it cannot be decoded. (One coroutine, on purpose: this
    runs on every decision.)

    The body is taken from ``request.content`` with the limit applied here, not by
    ``request.read()``, whose limit is the request's ``client_max_size`` (1 MiB on aiohttp's
    low-level server, whatever ``FLAGPOST_MAX_BODY`` says)."""
    content = request.content
    try:
        if content.is_eof():  # all of it has arrived (the common case): no timer, no await
            body = content.read_nowait()
            if len(body) > limits.max_body:
                raise _too_large(limits)
            return body
        if (request.content_length or 0) > limits.max_body:  # refused before it is read
            raise _too_large(limits)
        if request.headers.get(EXPECT, "").lower() == "100-continue":
            # The client waits to be told to send the body (curl does, for bodies over 1 KiB):
            # what aiohttp's application router did for every route, flagpost's shell does here.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp does: the answer has not begun
        async with asyncio.timeout(limits.body_timeout):
            parts: list[bytes] = []
            size = 0
            while chunk := await content.readany():
                size += len(chunk)
                if size > limits.max_body:  # the rest is not read: the connection must go
                    error = _too_large(limits)
                    error.closes = True
                    raise error
                parts.append(chunk)
            return b"".join(parts)
    except web.RequestPayloadError:  # e.g. a Content-Encoding the body is not in
        raise ApiError(
            400, "INVALID_REQUEST", "the body cannot be decoded as sent", closes=True
        ) from None
    except TimeoutError:
        raise ApiError(
            408,
            "REQUEST_TIMEOUT",
            f"the body did not arrive within {limits.body_timeout:g} seconds",
            closes=True,
        ) from None


async def read_json(request: web.BaseRequest, limits: Limits) -> dict[str, Any]:
    """The request body as a JSON object (an empty body reads as ``{}``)."""
    return parse_json(await read_body(request, limits))


def parse_json(raw: bytes) -> dict[str, Any]:
    """A body as a JSON object (an empty body reads as ``{}``)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if not raw.strip():
            return {}
        raise invalid(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def _too_large(limits: Limits) -> ApiError:
    return ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is larger than {limits.max_body} bytes")


def refuse_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in body:
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            raise invalid(f"unknown field {name!r} (expected: {known})", field=name)


_DECISION_FIELDS = frozenset({"visitor_code", "context", "environment", "track"})
_DECIDE_FIELDS = _DECISION_FIELDS | {"flags", "active_only"}


def read_decision(body: Mapping[str, Any], limits: Limits, *, many: bool = False) -> DecisionQuery:
    """A decision request from a JSON body (``many``: the ``/v1/decide`` form).

    Written flat, with the common case first: it runs on every decision.
    """
    allowed = _DECIDE_FIELDS if many else _DECISION_FIELDS
    for name in body:
        if name not in allowed:
            refuse_unknown(body, allowed)
    context = body.get("context")
    if context is None:
        context = {}
    elif context.__class__ is not dict:
        raise invalid("context must be a JSON object of attributes", field="context")
    elif context:
        check_context(context, limits)
    environment = body.get("environment")
    if environment is not None and environment.__class__ is not str:
        raise invalid("environment must be a string", field="environment")
    track = body.get("track", True)
    if track.__class__ is not bool:
        raise invalid("track must be true or false", field="track")
    if not many:
        return DecisionQuery(
            check_visitor_code(body.get("visitor_code")), context, environment or None, track
        )
    return DecisionQuery(
        check_visitor_code(body.get("visitor_code")),
        context,
        environment or None,
        track,
        _flag_list(body.get("flags")),
        _boolean(body, "active_only", default=False),
    )


_QUERY_FIELDS = frozenset({"visitor_code", "environment", "track"})


def read_query(request: web.BaseRequest) -> DecisionQuery:
    """A decision request from query parameters (GET)."""
    query: Mapping[str, str] | None = query_values(request.raw_path)
    if query is None:
        query = request.query
    refuse_unknown(query, _QUERY_FIELDS)
    track = query.get("track", "true").lower()
    if track not in ("true", "false"):
        raise invalid("track must be true or false", field="track")
    environment = query.get("environment")
    return DecisionQuery(
        visitor_code=check_visitor_code(query.get("visitor_code")),
        context={},
        environment=environment or None,
        track=track == "true",
    )


def query_values(target: str) -> dict[str, str] | None:
    """The query parameters of a request target (``request.raw_path``), each name's first
    value, as ``request.query.get`` finds them; None for a target yarl must decode (an
    absolute URL, a fragment, a percent-escape).

    ``request.query`` costs 9.5 µs on a target yarl has not seen yet (each request of a new
    visitor), and yarl's cache then keeps the parsed query alive with the URL: five more
    objects per request for the cyclic collector to walk. This is 1 µs. (The split is
    yarl's own for a query without escapes: ``+`` is a space, empty pairs are skipped.)"""
    if target[:1] != "/" or "%" in target or "#" in target:
        return None
    values: dict[str, str] = {}
    _, mark, query = target.partition("?")
    if mark:
        for pair in query.replace("+", " ").split("&"):
            if pair:
                name, _, value = pair.partition("=")
                if name not in values:
                    values[name] = value
    return values


def check_visitor_code(value: object, field: str = "visitor_code") -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_VISITOR_CODE:
        return value
    if value is None:
        raise ApiError(400, "INVALID_VISITOR_CODE", f"{field} is required", field)
    if not isinstance(value, str):
        raise ApiError(400, "INVALID_VISITOR_CODE", f"{field} must be a string", field)
    if not 0 < len(value) <= MAX_VISITOR_CODE:
        raise ApiError(
            400,
            "INVALID_VISITOR_CODE",
            f"{field} must be 1 to {MAX_VISITOR_CODE} characters, not {len(value)}",
            field,
        )
    return value


def check_context(value: object, limits: Limits, field: str = "context") -> dict[str, Any]:
    """Targeting attributes: an object within the attribute-count and nesting limits."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{field} must be a JSON object of attributes", field=field)
    for name in value:
        if name.startswith("visitor") and (name == "visitor" or name.startswith("visitor.")):
            raise invalid(
                f"{field}.{name}: attributes under 'visitor' are the visitor's stored data; "
                "add them with POST /v1/visitors/{visitor_code}/data",
                field=f"{field}.{name}",
            )
    count = _count_attributes(value, 1, limits.max_depth, field)
    if count > limits.max_attributes:
        raise invalid(
            f"{field} has {count} attributes; the limit is {limits.max_attributes}", field=field
        )
    return value


def _count_attributes(
    value: dict[str, Any] | list[Any], depth: int, max_depth: int, field: str
) -> int:
    """Attributes and list items at every level; refuses nesting deeper than ``max_depth``."""
    count = len(value)
    for item in value.values() if value.__class__ is dict else value:
        if item.__class__ is dict or item.__class__ is list:  # scalars, the common case, skip
            if depth >= max_depth:
                raise invalid(f"{field} nests deeper than {max_depth} levels", field=field)
            count += _count_attributes(item, depth + 1, max_depth, field)
    return count


def _boolean(body: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false", field=name)
    return value


def _flag_list(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise invalid("flags must be a list of flag keys", field="flags")
    if len(value) > MAX_FLAGS_PER_REQUEST:
        raise invalid(f"flags lists more than {MAX_FLAGS_PER_REQUEST} keys", field="flags")
    return tuple(dict.fromkeys(value))
