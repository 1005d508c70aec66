"""The decision API under ``/v1``: decisions, active state, variables.

Every handler reads the current snapshot once, so a request sees one ruleset throughout.
Answers are pasted from decisions serialized once per snapshot (``service.bodies``).

Handlers are methods of ``Serving``, which holds what they need directly: looking things up
on the application per request costs more than a decision does.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from itertools import chain
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.hdrs import REFERER, USER_AGENT  # istr: looked up without case folding

import rules
from service.bodies import constant_exposures, constant_part, decide_body, encoded, members
from service.errors import json_response
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
from service.visitors.recent import RecentExposures
from service.visitors.stores import VisitorStore

if TYPE_CHECKING:
    from service.shell import Shell

__all__ = ["Serving"]

JSON = "application/json"


class Serving:
    """What every decision handler needs, held directly; its methods are the handlers."""

    def __init__(
        self,
        store: RulesStore,
        metrics: Metrics,
        limits: Limits,
        environment: str | None,
        recorder: Recorder | None = None,
        visitors: VisitorStore | None = None,
        recent: RecentExposures | None = None,
    ) -> None:
        self.store = store
        self.visitors = visitors
        self.recent = recent  # experiment assignments for the tracking code
        self.recorder = recorder  # None when events are off
        self.limits = limits
        self.environment = environment  # the default; None means the rules' first
        self.metrics = metrics
        self.tally = metrics.decision_tally

    def add_routes(self, router: Shell) -> None:
        for path, handler in (
            ("/v1/flags/{flag}/decision", self.decide_one),
            ("/v1/flags/{flag}/active", self.is_active),
            ("/v1/flags/{flag}/variables/{variable}", self.variable_value),
        ):
            router.add("POST", path, handler)
            router.add("GET", path, handler)
        router.add("POST", "/v1/decide", self.decide_many)

    def snapshot(self) -> Snapshot:
        return self.store.served()

    async def visited(
        self, visitor_code: str, context: dict[str, Any], names: frozenset[str]
    ) -> dict[str, Any]:
        """``context`` with the visitor's stored data the rules read (``names``: the
        ``visitor.*`` attributes they read; copying only those is cheaper than all)."""
        assert self.visitors is not None
        stored = await self.visitors.attributes(visitor_code)
        if not stored:
            return context
        merged = dict(context)
        for name in names:
            if name in stored:
                merged[name] = stored[name]
        return merged

    async def context_for(
        self,
        ruleset: rules.Ruleset,
        flags: tuple[str, ...] | None,
        visitor_code: str,
        context: dict[str, Any],
        environment: str | None,
    ) -> dict[str, Any]:
        """``context`` with the visitor's stored data when one of ``flags`` (None: every
        flag) reads it: one store read for the whole request, none when no flag needs it."""
        if self.visitors is None:
            return context
        readers = ruleset.visitor_readers(environment)
        if not readers or (flags is not None and readers.isdisjoint(flags)):
            return context
        return await self.visited(visitor_code, context, ruleset.visitor_attributes(environment))

    async def query(self, request: web.BaseRequest, *, many: bool = False) -> DecisionQuery:
        if request.method == "GET":
            return read_query(request)
        return read_decision(
            parse_json(await read_body(request, self.limits)), self.limits, many=many
        )

    async def decide_one(self, request: web.BaseRequest, flag: str) -> web.Response:
        # What self.query does, inline: each coroutine layer costs on the hottest route.
        if request.method == "GET":
            query = read_query(request)
        else:
            query = read_decision(parse_json(await read_body(request, self.limits)), self.limits)
        snapshot = self.store.served()
        environment = query.environment or self.environment
        context = query.context
        if self.visitors is not None and flag in snapshot.ruleset.visitor_readers(environment):
            names = snapshot.ruleset.visitor_attributes(environment)
            context = await self.visited(query.visitor_code, context, names)
        decision = snapshot.ruleset.decide(flag, query.visitor_code, context, environment)
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
        if query.track and decision.rule_type == "experiment" and self.recent is not None:
            self.recent.note_one(query.visitor_code, decision)
        return web.Response(body=encoded(snapshot, decision), content_type=JSON)

    async def _decision(
        self, request: web.BaseRequest, flag: str, variable: str | None = None
    ) -> rules.Decision:
        """The visitor's counted decision for the flag in the path (``decide_one`` does the
        same inline: it is the hottest route). ``variable`` must be one of the flag's."""
        query = await self.query(request)
        ruleset = self.snapshot().ruleset
        if variable is not None and variable not in ruleset.flag(flag).variables:
            raise rules.VariableNotFound(flag, variable)
        environment = query.environment or self.environment
        context = await self.context_for(
            ruleset, (flag,), query.visitor_code, query.context, environment
        )
        decision = ruleset.decide(flag, query.visitor_code, context, environment)
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
        if query.track and decision.rule_type == "experiment" and self.recent is not None:
            self.recent.note_one(query.visitor_code, decision)
        return decision

    async def is_active(self, request: web.BaseRequest, flag: str) -> web.Response:
        decision = await self._decision(request, flag)
        return json_response(
            {"flag": decision.flag, "active": decision.active, "variation": decision.variation}
        )

    async def variable_value(self, request: web.BaseRequest, flag: str, name: str) -> web.Response:
        decision = await self._decision(request, flag, variable=name)
        value = decision.variables[name]
        return json_response(
            {
                "flag": decision.flag,
                "variable": name,
                "value": value,
                "variation": decision.variation,
            }
        )

    async def decide_many(self, request: web.BaseRequest) -> web.Response:
        query = await self.query(request, many=True)
        snapshot = self.snapshot()
        ruleset = snapshot.ruleset
        environment = query.environment or self.environment
        errors: dict[str, Any] = {}
        context = await self.context_for(
            ruleset, query.flags, query.visitor_code, query.context, environment
        )
        if query.flags is None:  # every flag: the part that is the same for all is ready-made
            constant, reasons = constant_part(snapshot, environment, query.active_only)
            decisions = ruleset.decide_varying(query.visitor_code, context, environment)
            if query.active_only:
                decisions = {key: d for key, d in decisions.items() if d.active}
            self.tally.update(reasons)
            self.metrics.count_decisions(decisions.values())
            if query.track:
                constants = constant_exposures(snapshot, environment, query.active_only)
                exposed = chain(constants, decisions.values())  # (read only if recording)
                self._record_all(request, query, exposed, ruleset.revision)
                if self.recent is not None:  # only flags with an experiment rule can be noted
                    experiments = ruleset.experiment_flags(environment)
                    noted = [decisions[key] for key in experiments if key in decisions]
                    self.recent.note(query.visitor_code, (*constants, *noted))
            parts = members(snapshot, decisions)
            if constant:  # not first or last: those are copied again for the head and tail
                parts.insert(1, constant)
            return decide_body(query, ruleset.revision, parts, errors)
        else:
            decisions = {}
            for key in query.flags:  # a flag removed from the rules must not fail the others
                try:
                    decisions[key] = ruleset.decide(key, query.visitor_code, context, environment)
                except rules.FlagNotFound as error:
                    errors[key] = {"code": "FLAG_NOT_FOUND", "message": str(error)}
        if query.active_only:
            decisions = {key: d for key, d in decisions.items() if d.active}
        self.metrics.count_decisions(decisions.values())
        if query.track:
            self._expose_all(request, query, decisions.values(), ruleset.revision)
        return decide_body(query, ruleset.revision, members(snapshot, decisions), errors)

    def _expose_all(
        self,
        request: web.BaseRequest,
        query: DecisionQuery,
        decisions: Collection[rules.Decision],
        revision: str,
    ) -> None:
        """Record a tracked request's exposures, and note its experiments for the tracking
        code."""
        self._record_all(request, query, decisions, revision)
        if self.recent is not None:
            self.recent.note(query.visitor_code, decisions)

    def _record_all(
        self,
        request: web.BaseRequest,
        query: DecisionQuery,
        decisions: Iterable[rules.Decision],
        revision: str,
    ) -> None:
        """Record a tracked request's exposures (when events are on)."""
        if self.recorder is not None:
            self.recorder.expose_all(
                query.visitor_code,
                decisions,
                query.context,
                request.headers.get(USER_AGENT),
                request.headers.get(REFERER),
                revision,
            )
