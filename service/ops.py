"""Operations: health and readiness, metrics, configuration and its change stream, the refresh
webhook and the OpenAPI document."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp_sse import sse_response
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import ApiError, json_response
from service.keys import LIMITS, METRICS, PIPELINE, REFRESHER, SETTINGS, STORE
from service.payloads import read_body
from service.store import DROPPED

if TYPE_CHECKING:
    from service.app import GuardedRouter

__all__ = ["OPENAPI_PATH", "add_routes"]

OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"
JSON = "application/json"
#: A change-stream subscriber whose socket takes longer than this to accept an event is dropped.
STREAM_SEND_TIMEOUT = 5.0
SIGNATURE_HEADER = "X-Flagpost-Signature"


def add_routes(router: GuardedRouter) -> None:
    router.add("GET", "/healthz", healthz)
    router.add("GET", "/readyz", readyz)
    router.add("GET", "/metrics", metrics)
    router.add("GET", "/v1/config", config)
    router.add("GET", "/v1/config/stream", config_stream)
    router.add("POST", "/v1/webhooks/refresh", refresh_webhook)
    router.add("GET", "/openapi.json", openapi)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    snapshot = request.app[STORE].served()
    return json_response({"status": "ready", "revision": snapshot.ruleset.revision})


async def metrics(request: web.Request) -> web.Response:
    # The counts are plain dicts the loop changes: they are copied here, on the loop (tens of
    # microseconds), and rendered in a thread (milliseconds: too long for the loop).
    body = await asyncio.to_thread(request.app[METRICS].snapshot())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def config(request: web.Request) -> web.Response:
    store, settings = request.app[STORE], request.app[SETTINGS]
    snapshot = store.current
    environments = list(snapshot.ruleset.environments) if snapshot else []
    default = settings.environment or (environments[0] if environments else None)
    return json_response(
        {
            **store.status(),
            "environment": default,
            "environments": environments,
            "refresh_interval": settings.refresh_interval,
            "webhook": settings.webhook_secret is not None,
            "events": request.app[PIPELINE].health(),
        }
    )


async def config_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the current rules at once, then one event per change."""
    store = request.app[STORE]
    queue = store.subscribe()
    try:
        async with sse_response(request, send_timeout=STREAM_SEND_TIMEOUT) as stream:
            if store.current is not None:
                await stream.send(
                    orjson.dumps(store.current.change_event()).decode(), event="rules"
                )
            while stream.is_connected():
                event = await queue.get()
                if event is DROPPED:
                    break
                await stream.send(orjson.dumps(event).decode(), event="rules")
            return stream
    except (ConnectionResetError, TimeoutError):  # a dead or stuck subscriber: let it go
        return web.StreamResponse()
    finally:
        store.unsubscribe(queue)


async def refresh_webhook(request: web.Request) -> web.Response:
    """A signed request to refresh now: HMAC-SHA256 of the raw body with the shared secret."""
    secret = request.app[SETTINGS].webhook_secret
    if secret is None:
        raise ApiError(404, "NOT_FOUND", "the refresh webhook is not enabled")
    body = await read_body(request, request.app[LIMITS])
    digest = hmac.new(secret.reveal().encode(), body, hashlib.sha256).hexdigest()
    offered = request.headers.get(SIGNATURE_HEADER, "")
    # A header of bytes that are not UTF-8 arrives with surrogates: no signature, not a crash.
    if not hmac.compare_digest(offered.encode(errors="replace"), f"sha256={digest}".encode()):
        raise ApiError(401, "UNAUTHORIZED", f"missing or invalid {SIGNATURE_HEADER}")
    request.app[REFRESHER].trigger()
    return json_response({"status": "refresh scheduled"}, status=202)


async def openapi(request: web.Request) -> web.Response:
    global _openapi_document  # noqa: PLW0603  # read once, off the loop, then kept
    if _openapi_document is None:
        _openapi_document = await asyncio.to_thread(OPENAPI_PATH.read_bytes)
    return web.Response(body=_openapi_document, content_type=JSON)


_openapi_document: bytes | None = None
