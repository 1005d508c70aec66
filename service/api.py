"""The decision API under ``/v1``: flags, variations, decisions, active state, variables.

Every handler reads the current snapshot once, so a request sees one ruleset throughout.
Decisions are shared, immutable values, so each is serialized once per snapshot and the
bytes are reused: a response over hundreds of flags is mostly a join of cached fragments.

Handlers are methods of ``Serving``, which holds what they need directly: looking things up
on the application per request costs more than a decision does.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.hdrs import REFERER, USER_AGENT  # istr: looked up without case folding

import rules
from service.errors import ApiError, json_response
from service.events.queue import Recorder
from service.metrics import Metrics
from service.payloads import (
    DecisionQuery,
    Limits,
    parse_json,
    read_body,
    read_decision,
    read_query,
)
from service.store import RulesStore, Snapshot

if TYPE_CHECKING:
    from service.app import GuardedRouter

__all__ = ["Serving", "encoded"]

JSON = "application/json"


def encoded(snapshot: Snapshot, decision: rules.Decision) -> bytes:
    """The decision as JSON bytes, serialized once per snapshot."""
    key = id(decision)  # stable: every decision lives as long as its compiled ruleset
    data = snapshot.encoded.get(key)
    if data is None:
        data = snapshot.encoded[key] = orjson.dumps(decision.as_dict())
    return data


class Serving:
    """What every decision handler needs, held directly; its methods are the handlers."""

    def __init__(
        self,
        store: RulesStore,
        metrics: Metrics,
        limits: Limits,
        environment: str | None,
        recorder: Recorder | None = None,
    ) -> None:
        self.store = store
        self.recorder = recorder  # None when events are off
        self.limits = limits
        self.environment = environment  # the default; None means the rules' first
        self.metrics = metrics
        self.tally = metrics.decision_tally

    def add_routes(self, router: GuardedRouter) -> None:
        # The router tries dynamic routes in order: the busiest go first, and each path's
        # methods are added together so they share one resource.
        for path, handler in (
            ("/v1/flags/{flag}/decision", self.decide_one),
            ("/v1/flags/{flag}/active", self.is_active),
            ("/v1/flags/{flag}/variables/{variable}", self.variable_value),
        ):
            router.add("POST", path, handler)
            router.add("GET", path, handler)
        router.add("POST", "/v1/decide", self.decide_many)
        router.add("GET", "/v1/flags", self.list_flags)
        router.add("GET", "/v1/flags/{flag}/variations", self.list_variations)

    def snapshot(self) -> Snapshot:
        snapshot = self.store.current
        if snapshot is None:
            raise ApiError(503, "NOT_READY", "no rules have been loaded yet")
        return snapshot

    async def query(self, request: web.Request, *, many: bool = False) -> DecisionQuery:
        if request.method == "GET":
            return read_query(request)
        return read_decision(
            parse_json(await read_body(request, self.limits)), self.limits, many=many
        )

    async def decide_one(self, request: web.Request) -> web.Response:
        # What self.query does, inline: each coroutine layer costs on the hottest route.
        if request.method == "GET":
            query = read_query(request)
        else:
            query = read_decision(parse_json(await read_body(request, self.limits)), self.limits)
        snapshot = self.snapshot()
        decision = snapshot.ruleset.decide(
            request.match_info["flag"],
            query.visitor_code,
            query.context,
            query.environment or self.environment,
        )
        self.tally[decision.reason] += 1
        if query.track and decision.rule is not None and self.recorder is not None:
            headers = request.headers
            self.recorder.expose(
                query.visitor_code,
                decision,
                query.context,
                headers.get(USER_AGENT),
                headers.get(REFERER),
                snapshot.ruleset.revision,
            )
        return web.Response(body=encoded(snapshot, decision), content_type=JSON)

    async def _decision(self, request: web.Request, variable: str | None = None) -> rules.Decision:
        """The visitor's counted decision for the flag in the path (``decide_one`` does the
        same inline: it is the hottest route). ``variable`` must be one of the flag's."""
        query = await self.query(request)
        ruleset = self.snapshot().ruleset
        flag = request.match_info["flag"]
        if variable is not None and variable not in ruleset.flag(flag).variables:
            raise rules.VariableNotFound(flag, variable)
        decision = ruleset.decide(
            flag, query.visitor_code, query.context, query.environment or self.environment
        )
        self.tally[decision.reason] += 1
        if query.track and decision.rule is not None and self.recorder is not None:
            headers = request.headers
            self.recorder.expose(
                query.visitor_code,
                decision,
                query.context,
                headers.get(USER_AGENT),
                headers.get(REFERER),
                ruleset.revision,
            )
        return decision

    async def is_active(self, request: web.Request) -> web.Response:
        decision = await self._decision(request)
        return json_response(
            {"flag": decision.flag, "active": decision.active, "variation": decision.variation}
        )

    async def variable_value(self, request: web.Request) -> web.Response:
        name = request.match_info["variable"]
        decision = await self._decision(request, variable=name)
        value = decision.variables[name]
        return json_response(
            {
                "flag": decision.flag,
                "variable": name,
                "value": value,
                "variation": decision.variation,
            }
        )

    async def decide_many(self, request: web.Request) -> web.Response:
        query = await self.query(request, many=True)
        snapshot = self.snapshot()
        ruleset = snapshot.ruleset
        environment = query.environment or self.environment
        errors: dict[str, Any] = {}
        if query.flags is None:  # every flag: the part that is the same for all is ready-made
            constant, reasons = self._constant_part(snapshot, environment, query.active_only)
            decisions = ruleset.decide_varying(query.visitor_code, query.context, environment)
            if query.active_only:
                decisions = {key: d for key, d in decisions.items() if d.active}
            self.tally.update(reasons)
            self.metrics.count_decisions(decisions.values())
            if query.track and self.recorder is not None:
                exposed = self._constant_exposures(snapshot, environment, query.active_only)
                self.recorder.expose_all(
                    query.visitor_code,
                    (*exposed, *decisions.values()),
                    query.context,
                    request.headers.get(USER_AGENT),
                    request.headers.get(REFERER),
                    ruleset.revision,
                )
            parts = members(snapshot, decisions)
            if constant:  # not first or last: those get the head and tail (_decide_response)
                parts.insert(1, constant)
            return self._decide_response(query, ruleset.revision, parts, errors)
        else:
            decisions = {}
            for key in query.flags:  # a flag removed from the rules must not fail the others
                try:
                    decisions[key] = ruleset.decide(
                        key, query.visitor_code, query.context, environment
                    )
                except rules.FlagNotFound as error:
                    errors[key] = {"code": "FLAG_NOT_FOUND", "message": str(error)}
        if query.active_only:
            decisions = {key: d for key, d in decisions.items() if d.active}
        self.metrics.count_decisions(decisions.values())
        if query.track and self.recorder is not None:
            self.recorder.expose_all(
                query.visitor_code,
                decisions.values(),
                query.context,
                request.headers.get(USER_AGENT),
                request.headers.get(REFERER),
                ruleset.revision,
            )
        return self._decide_response(query, ruleset.revision, members(snapshot, decisions), errors)

    @staticmethod
    def _decide_response(
        query: DecisionQuery, revision: str, parts: list[bytes], errors: dict[str, Any]
    ) -> web.Response:
        """The body from ``"flag":{decision}`` members (``parts``, each one or more of them),
        copied once: a body over hundreds of flags is tens of KiB, and every ``+`` or join
        of the whole would copy all of it again."""
        head = orjson.dumps({"visitor_code": query.visitor_code, "revision": revision})
        head = head[:-1] + b',"decisions":{'
        tail = b'},"errors":' + orjson.dumps(errors) + b"}" if errors else b"}}"
        if not parts:
            body = head + tail
        else:  # the head and tail join the first and last parts, which are small
            parts[0] = head + parts[0]
            parts[-1] = parts[-1] + tail
            body = b",".join(parts)
        return web.Response(body=body, content_type=JSON)

    @staticmethod
    def _constant_part(
        snapshot: Snapshot, environment: str | None, active_only: bool
    ) -> tuple[bytes, Counter[str]]:
        """The encoded members and reason counts of the flags that answer everyone alike,
        built once per snapshot, environment and active_only."""
        key = (environment, active_only)
        part = snapshot.constant_parts.get(key)
        if part is None:
            constants = {
                flag: decision
                for flag, decision in snapshot.ruleset.constant_decisions(environment).items()
                if decision.active or not active_only
            }
            reasons = Counter(str(decision.reason) for decision in constants.values())
            part = (b",".join(members(snapshot, constants)), reasons)
            snapshot.constant_parts[key] = part
        return part

    @staticmethod
    def _constant_exposures(
        snapshot: Snapshot, environment: str | None, active_only: bool
    ) -> tuple[rules.Decision, ...]:
        """The constant decisions that are exposures (they have a rule), once per snapshot."""
        key = (environment, active_only)
        exposed = snapshot.constant_exposures.get(key)
        if exposed is None:
            exposed = snapshot.constant_exposures[key] = tuple(
                decision
                for decision in snapshot.ruleset.constant_decisions(environment).values()
                if decision.rule is not None and (decision.active or not active_only)
            )
        return exposed

    async def list_flags(self, request: web.Request) -> web.Response:
        ruleset = self.snapshot().ruleset
        return json_response({"revision": ruleset.revision, "flags": list(ruleset.flag_keys)})

    async def list_variations(self, request: web.Request) -> web.Response:
        ruleset = self.snapshot().ruleset
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
        return json_response(
            {
                "flag": key,
                "revision": ruleset.revision,
                "default": flag.default,
                "variations": variations,
            }
        )


def members(snapshot: Snapshot, decisions: dict[str, rules.Decision]) -> list[bytes]:
    """The ``"key":{decision}`` members of ``decisions``, each built once per snapshot."""
    cache = snapshot.members
    try:  # (a comprehension: a tenth faster here than map over cache.__getitem__)
        return [cache[id(decision)] for decision in decisions.values()]
    except KeyError:  # some not built yet: build them, once
        for decision in decisions.values():
            if id(decision) not in cache:  # keys are JSON-safe (the format's key pattern)
                cache[id(decision)] = (
                    b'"' + decision.flag.encode() + b'":' + encoded(snapshot, decision)
                )
        return [cache[id(decision)] for decision in decisions.values()]
