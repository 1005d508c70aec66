"""The decision API under ``/v1``: flags, variations, decisions, active state, variables.

Every handler reads the current snapshot once, so a request sees one ruleset throughout.
Decisions are shared, immutable values, so each is serialized once per snapshot and the
bytes are reused: a response over hundreds of flags is mostly a join of cached fragments.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

import rules
from service.errors import ApiError
from service.keys import LIMITS, METRICS, SETTINGS, STORE
from service.payloads import DecisionQuery, read_decision, read_json, read_query
from service.store import Snapshot

__all__ = ["add_routes", "current_snapshot", "encoded"]

JSON = "application/json"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/flags", list_flags)
    app.router.add_get("/v1/flags/{flag}/variations", list_variations)
    app.router.add_post("/v1/decide", decide_many)
    for method in ("GET", "POST"):
        app.router.add_route(method, "/v1/flags/{flag}/decision", decide_one)
        app.router.add_route(method, "/v1/flags/{flag}/active", is_active)
        app.router.add_route(method, "/v1/flags/{flag}/variables/{variable}", variable_value)


def current_snapshot(request: web.Request) -> Snapshot:
    snapshot = request.app[STORE].current
    if snapshot is None:
        raise ApiError(503, "NOT_READY", "no rules have been loaded yet")
    return snapshot


def encoded(snapshot: Snapshot, decision: rules.Decision) -> bytes:
    """The decision as JSON bytes, serialized once per snapshot."""
    key = id(decision)  # stable: every decision lives as long as its compiled ruleset
    data = snapshot.encoded.get(key)
    if data is None:
        data = snapshot.encoded[key] = orjson.dumps(decision.as_dict())
    return data


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


async def _query(request: web.Request, *, many: bool = False) -> DecisionQuery:
    if request.method == "GET":
        return read_query(request)
    limits = request.app[LIMITS]
    return read_decision(await read_json(request, limits), limits, many=many)


def _environment(request: web.Request, query: DecisionQuery) -> str | None:
    return query.environment or request.app[SETTINGS].environment


async def _decide(request: web.Request) -> tuple[Snapshot, rules.Decision]:
    query = await _query(request)
    snapshot = current_snapshot(request)
    decision = snapshot.ruleset.decide(
        request.match_info["flag"],
        query.visitor_code,
        query.context,
        _environment(request, query),
    )
    request.app[METRICS].count_decision(decision.reason)
    return snapshot, decision


async def list_flags(request: web.Request) -> web.Response:
    ruleset = current_snapshot(request).ruleset
    return _json({"revision": ruleset.revision, "flags": list(ruleset.flag_keys)})


async def list_variations(request: web.Request) -> web.Response:
    ruleset = current_snapshot(request).ruleset
    key = request.match_info["flag"]
    flag = ruleset.flag(key)
    variables = ruleset.variations(key)
    variations = {
        name: {
            "id": variation.id,
            "value": variation.value if variation.has_value else name != "off",
            "variables": variables[name],
        }
        for name, variation in flag.variations.items()
    }
    return _json(
        {
            "flag": key,
            "revision": ruleset.revision,
            "default": flag.default,
            "variations": variations,
        }
    )


async def decide_one(request: web.Request) -> web.Response:
    snapshot, decision = await _decide(request)
    return web.Response(body=encoded(snapshot, decision), content_type=JSON)


async def is_active(request: web.Request) -> web.Response:
    _, decision = await _decide(request)
    return _json(
        {"flag": decision.flag, "active": decision.active, "variation": decision.variation}
    )


async def variable_value(request: web.Request) -> web.Response:
    _, decision = await _decide_variable(request)
    name = request.match_info["variable"]
    return _json(
        {
            "flag": decision.flag,
            "variable": name,
            "value": decision.variables[name],
            "variation": decision.variation,
        }
    )


async def _decide_variable(request: web.Request) -> tuple[Snapshot, rules.Decision]:
    query = await _query(request)
    snapshot = current_snapshot(request)
    flag, name = request.match_info["flag"], request.match_info["variable"]
    if name not in snapshot.ruleset.flag(flag).variables:
        raise rules.VariableNotFound(flag, name)
    decision = snapshot.ruleset.decide(
        flag, query.visitor_code, query.context, _environment(request, query)
    )
    request.app[METRICS].count_decision(decision.reason)
    return snapshot, decision


async def decide_many(request: web.Request) -> web.Response:
    query = await _query(request, many=True)
    snapshot = current_snapshot(request)
    ruleset = snapshot.ruleset
    environment = _environment(request, query)
    errors: dict[str, Any] = {}
    if query.flags is None:
        decisions = ruleset.decide_all(query.visitor_code, query.context, environment)
    else:
        decisions = {}
        for key in query.flags:  # a flag removed from the rules must not fail the others
            try:
                decisions[key] = ruleset.decide(key, query.visitor_code, query.context, environment)
            except rules.FlagNotFound as error:
                errors[key] = {"code": "FLAG_NOT_FOUND", "message": str(error)}
    if query.active_only:
        decisions = {key: d for key, d in decisions.items() if d.active}
    request.app[METRICS].count_decisions(d.reason for d in decisions.values())
    members = b",".join(
        b'"' + key.encode() + b'":' + encoded(snapshot, decision)  # keys are JSON-safe
        for key, decision in decisions.items()
    )
    head = orjson.dumps({"visitor_code": query.visitor_code, "revision": ruleset.revision})
    tail = b',"errors":' + orjson.dumps(errors) if errors else b""
    body = head[:-1] + b',"decisions":{' + members + b"}" + tail + b"}"
    return web.Response(body=body, content_type=JSON)
