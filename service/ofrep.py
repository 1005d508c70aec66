"""The OpenFeature Remote Evaluation Protocol (OFREP), so every OpenFeature SDK can ask flagpost.

``targetingKey`` is the visitor code; the other context keys are targeting attributes. The
environment is the service's default, or ``?environment=`` on the URL. Every success has a
``variant`` and an OpenFeature reason; every failure an ``errorCode`` and ``errorDetails``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.hdrs import REFERER, USER_AGENT
from xxhash import xxh3_64_hexdigest

import rules
from service.api import Serving
from service.errors import ApiError, json_response
from service.payloads import MAX_VISITOR_CODE, Limits, check_context, read_json

if TYPE_CHECKING:
    from service.shell import Shell

__all__ = ["Ofrep"]

JSON = "application/json"


def _failure(error: ApiError, flag: str | None = None) -> web.Response:
    """An OFREP failure: the error's status, and the body OFREP prescribes (its codes)."""
    body = {"errorCode": error.code, "errorDetails": error.message}
    return json_response(body if flag is None else {"key": flag, **body}, error.status)


async def _read_context(request: web.BaseRequest, limits: Limits) -> tuple[str, dict[str, Any]]:
    """The targeting key and the attributes of an OFREP request."""
    try:
        body = await read_json(request, limits)
    except ApiError as error:
        status = 413 if error.status == 413 else 400
        code = "PARSE_ERROR" if status == 400 else "GENERAL"
        raise ApiError(status, code, error.message) from None
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise ApiError(400, "INVALID_CONTEXT", "context must be a JSON object")
    attributes = dict(context)
    key = attributes.pop("targetingKey", None)
    if key is None or key == "":
        raise ApiError(400, "TARGETING_KEY_MISSING", "context.targetingKey is required")
    if not isinstance(key, str) or len(key) > MAX_VISITOR_CODE:
        raise ApiError(
            400,
            "INVALID_CONTEXT",
            f"targetingKey must be a string of 1 to {MAX_VISITOR_CODE} characters",
        )
    try:
        check_context(attributes, limits)
    except ApiError as error:
        raise ApiError(400, "INVALID_CONTEXT", error.message) from None
    return key, attributes


def _success(decision: rules.Decision, revision: str) -> dict[str, Any]:
    metadata = {
        "flagId": decision.flag_id,
        "rule": decision.rule,
        "ruleType": decision.rule_type,
        "experimentId": decision.experiment_id,
        "variationId": decision.variation_id,
        "revision": revision,
    }
    return {
        "key": decision.flag,
        "value": decision.value,
        "reason": decision.reason.value,
        "variant": decision.variation,
        "metadata": {name: value for name, value in metadata.items() if value is not None},
    }


class Ofrep:
    """The OFREP handlers, sharing ``Serving`` with the decision API."""

    def __init__(self, serving: Serving, refresh_interval: float) -> None:
        self.serving = serving
        self.refresh_interval = refresh_interval

    def add_routes(self, router: Shell) -> None:
        router.add("POST", "/ofrep/v1/evaluate/flags/{key}", self.evaluate_one)
        router.add("POST", "/ofrep/v1/evaluate/flags", self.evaluate_all)
        router.add("GET", "/ofrep/v1/configuration", self.configuration)

    def _environment(self, request: web.BaseRequest) -> str | None:
        return request.query.get("environment") or self.serving.environment

    async def evaluate_one(self, request: web.BaseRequest, flag: str) -> web.Response:
        try:
            visitor, attributes = await _read_context(request, self.serving.limits)
        except ApiError as error:
            return _failure(error, flag)
        try:
            ruleset = self.serving.snapshot().ruleset
        except ApiError as error:  # not ready yet: OFREP's general error
            return json_response({"errorDetails": error.message}, error.status)
        environment = self._environment(request)
        try:
            context = await self.serving.context_for(
                ruleset, (flag,), visitor, attributes, environment
            )
            decision = ruleset.decide(flag, visitor, context, environment)
        except rules.FlagNotFound as error:
            return _failure(ApiError(404, "FLAG_NOT_FOUND", str(error)), flag)
        except rules.UnknownEnvironment as error:
            return _failure(ApiError(400, "GENERAL", str(error)), flag)
        self.serving.tally[decision.reason] += 1
        recorder = self.serving.recorder
        if decision.rule is not None and recorder is not None:
            headers = request.headers
            recorder.expose(
                visitor,
                decision,
                attributes,
                headers.get(USER_AGENT),
                headers.get(REFERER),
                ruleset.revision,
            )
        if decision.rule_type == "experiment" and self.serving.recent is not None:
            self.serving.recent.note_one(visitor, decision)
        return json_response(_success(decision, ruleset.revision))

    async def evaluate_all(self, request: web.BaseRequest) -> web.Response:
        try:
            visitor, attributes = await _read_context(request, self.serving.limits)
        except ApiError as error:
            return _failure(error)
        try:
            ruleset = self.serving.snapshot().ruleset
        except ApiError as error:  # not ready yet: OFREP's general error
            return json_response({"errorDetails": error.message}, error.status)
        environment = self._environment(request)
        try:
            context = await self.serving.context_for(
                ruleset, None, visitor, attributes, environment
            )
            decisions = ruleset.decide_all(visitor, context, environment)
        except rules.UnknownEnvironment as error:
            return _failure(ApiError(400, "GENERAL", str(error)))
        self.serving.metrics.count_decisions(decisions.values())
        if self.serving.recorder is not None:
            self.serving.recorder.expose_all(
                visitor,
                decisions.values(),
                attributes,
                request.headers.get(USER_AGENT),
                request.headers.get(REFERER),
                ruleset.revision,
            )
        if self.serving.recent is not None:
            self.serving.recent.note(visitor, decisions.values())
        flags = [_success(decisions[key], ruleset.revision) for key in ruleset.flag_keys]
        body = orjson.dumps({"flags": flags})
        # The tag is the content's own hash: equal answers (same rules, same context) match.
        etag = f'"{xxh3_64_hexdigest(body)}"'
        if etag in _entity_tags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type=JSON, headers={"ETag": etag})

    async def configuration(self, request: web.BaseRequest) -> web.Response:
        interval_ms = int(self.refresh_interval * 1000)
        return json_response(
            {
                "name": "flagpost",
                "capabilities": {
                    "cacheInvalidation": {
                        "polling": {
                            "enabled": True,
                            "minPollingIntervalMs": min(interval_ms, 60_000),
                        }
                    },
                    "flagEvaluation": {
                        "supportedTypes": ["boolean", "string", "int", "float", "object"]
                    },
                },
            }
        )


def _entity_tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
