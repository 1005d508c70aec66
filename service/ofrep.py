"""The OpenFeature Remote Evaluation Protocol (OFREP), so every OpenFeature SDK can ask flagpost.

``targetingKey`` is the visitor code; the other context keys are targeting attributes. The
environment is the service's default, or ``?environment=`` on the URL. Every success has a
``variant`` and an OpenFeature reason; every failure an ``errorCode`` and ``errorDetails``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from xxhash import xxh3_64_hexdigest

import rules
from service.api import current_snapshot
from service.errors import ApiError
from service.keys import LIMITS, METRICS, SETTINGS
from service.payloads import MAX_VISITOR_CODE, check_context, read_json

__all__ = ["add_routes"]

JSON = "application/json"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/ofrep/v1/evaluate/flags/{key}", evaluate_one)
    app.router.add_post("/ofrep/v1/evaluate/flags", evaluate_all)
    app.router.add_get("/ofrep/v1/configuration", configuration)


class _Failure(Exception):
    """An OFREP failure: a status and the body OFREP prescribes for it."""

    def __init__(self, status: int, code: str, details: str) -> None:
        super().__init__(details)
        self.status, self.code, self.details = status, code, details


def _reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON, headers=headers)


async def _read_context(request: web.Request) -> tuple[str, dict[str, Any]]:
    """The targeting key and the attributes of an OFREP request."""
    limits = request.app[LIMITS]
    try:
        body = await read_json(request, limits)
    except ApiError as error:
        status = 413 if error.status == 413 else 400
        raise _Failure(
            status, "PARSE_ERROR" if status == 400 else "GENERAL", error.message
        ) from None
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise _Failure(400, "INVALID_CONTEXT", "context must be a JSON object")
    attributes = dict(context)
    key = attributes.pop("targetingKey", None)
    if key is None or key == "":
        raise _Failure(400, "TARGETING_KEY_MISSING", "context.targetingKey is required")
    if not isinstance(key, str) or len(key) > MAX_VISITOR_CODE:
        raise _Failure(
            400,
            "INVALID_CONTEXT",
            f"targetingKey must be a string of 1 to {MAX_VISITOR_CODE} characters",
        )
    try:
        check_context(attributes, limits)
    except ApiError as error:
        raise _Failure(400, "INVALID_CONTEXT", error.message) from None
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


def _environment(request: web.Request) -> str | None:
    return request.query.get("environment") or request.app[SETTINGS].environment


async def evaluate_one(request: web.Request) -> web.Response:
    flag = request.match_info["key"]
    try:
        visitor, attributes = await _read_context(request)
        ruleset = current_snapshot(request).ruleset
        decision = ruleset.decide(flag, visitor, attributes, _environment(request))
    except _Failure as failure:
        return _reply(
            {"key": flag, "errorCode": failure.code, "errorDetails": failure.details},
            failure.status,
        )
    except rules.FlagNotFound as error:
        return _reply({"key": flag, "errorCode": "FLAG_NOT_FOUND", "errorDetails": str(error)}, 404)
    except rules.UnknownEnvironment as error:
        return _reply({"key": flag, "errorCode": "GENERAL", "errorDetails": str(error)}, 400)
    except ApiError as error:  # not ready yet
        return _reply({"errorDetails": error.message}, error.status)
    request.app[METRICS].count_decision(decision.reason)
    return _reply(_success(decision, ruleset.revision))


async def evaluate_all(request: web.Request) -> web.Response:
    try:
        visitor, attributes = await _read_context(request)
        ruleset = current_snapshot(request).ruleset
        decisions = ruleset.decide_all(visitor, attributes, _environment(request))
    except _Failure as failure:
        return _reply({"errorCode": failure.code, "errorDetails": failure.details}, failure.status)
    except rules.UnknownEnvironment as error:
        return _reply({"errorCode": "GENERAL", "errorDetails": str(error)}, 400)
    except ApiError as error:  # not ready yet
        return _reply({"errorDetails": error.message}, error.status)
    request.app[METRICS].count_decisions(d.reason for d in decisions.values())
    flags = [_success(decisions[key], ruleset.revision) for key in ruleset.flag_keys]
    body = orjson.dumps({"flags": flags})
    # The tag is the content's own hash: equal answers (same rules, same context) match.
    etag = f'"{xxh3_64_hexdigest(body)}"'
    if etag in _entity_tags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type=JSON, headers={"ETag": etag})


def _entity_tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


async def configuration(request: web.Request) -> web.Response:
    interval_ms = int(request.app[SETTINGS].refresh_interval * 1000)
    return _reply(
        {
            "name": "flagpost",
            "capabilities": {
                "cacheInvalidation": {
                    "polling": {"enabled": True, "minPollingIntervalMs": min(interval_ms, 60_000)}
                },
                "flagEvaluation": {
                    "supportedTypes": ["boolean", "string", "int", "float", "object"]
                },
            },
        }
    )
