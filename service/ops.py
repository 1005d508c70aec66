"""Operations: health and readiness, metrics, configuration and its change stream, the refresh
webhook and the OpenAPI document."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import orjson
from aiohttp import web
from aiohttp_sse import sse_response
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import ApiError, json_response
from service.events.pipeline import Pipeline
from service.metrics import Metrics
from service.payloads import Limits, read_body
from service.refresher import Refresher
from service.replicas import RefreshBroadcast
from service.settings import Settings
from service.store import DROPPED, RulesStore
from service.visitors.stores import VisitorStore
from service.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, ReplayGuard, verify

if TYPE_CHECKING:
    from service.shell import Shell

__all__ = ["OPENAPI_PATH", "Operations"]

OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"
JSON = "application/json"
#: A change-stream subscriber whose socket takes longer than this to accept an event is dropped.
STREAM_SEND_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Operations:
    """The operations handlers, holding what they need."""

    settings: Settings
    store: RulesStore
    metrics: Metrics
    pipeline: Pipeline
    refresher: Refresher
    limits: Limits
    visitors: VisitorStore
    replays: ReplayGuard
    #: With a shared Redis: asks every replica to refresh (None: this process only).
    broadcast: RefreshBroadcast | None = None
    #: A worker of several: adds the other workers' metrics to this one's (None: one process).
    combine_metrics: Callable[[bytes], bytes] | None = None

    def add_routes(self, router: Shell) -> None:
        router.add("GET", "/healthz", self.healthz)
        router.add("GET", "/readyz", self.readyz)
        router.add("GET", "/metrics", self.metrics_text)
        router.add("GET", "/v1/config", self.config)
        router.add("GET", "/v1/config/stream", self.config_stream)
        router.add("POST", "/v1/webhooks/refresh", self.refresh_webhook)
        router.add("GET", "/openapi.json", openapi)

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        snapshot = self.store.served()
        return json_response({"status": "ready", "revision": snapshot.ruleset.revision})

    async def metrics_text(self, request: web.BaseRequest) -> web.Response:
        # The counts are plain dicts the loop changes: they are copied here, on the loop (tens
        # of microseconds), and rendered in a thread (milliseconds: too long for the loop).
        render, combine = self.metrics.snapshot(), self.combine_metrics
        body = await asyncio.to_thread(render if combine is None else lambda: combine(render()))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def config(self, request: web.BaseRequest) -> web.Response:
        store, settings = self.store, self.settings
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
                "events": self.pipeline.health(),
                "visitors": self.visitors.health(),
                "consent_required": settings.consent_required,
                "workers": settings.workers,
            }
        )

    async def config_stream(self, request: web.BaseRequest) -> web.StreamResponse:
        """Server-sent events: the current rules at once, then one event per change."""
        store = self.store
        queue = store.subscribe()
        try:
            # aiohttp-sse types its request as web.Request; it uses only what every request has.
            async with sse_response(
                cast(web.Request, request), send_timeout=STREAM_SEND_TIMEOUT
            ) as stream:
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

    async def refresh_webhook(self, request: web.BaseRequest) -> web.Response:
        """A signed request to refresh now (``service.webhooks``: signed with a timestamp,
        refused when stale or replayed)."""
        secret = self.settings.webhook_secret
        if secret is None:
            raise ApiError(404, "NOT_FOUND", "the refresh webhook is not enabled")
        body = await read_body(request, self.limits)
        headers = request.headers
        accepted = verify(
            secret.reveal(),
            headers.get(TIMESTAMP_HEADER),
            headers.get(SIGNATURE_HEADER),
            body,
            time.time(),
        )
        if not await self.replays.first_time(accepted):
            raise ApiError(401, "WEBHOOK_REPLAYED", "this signed request was already accepted")
        self.refresher.trigger()
        if self.broadcast is not None:
            await self.broadcast.publish()
        return json_response({"status": "refresh scheduled"}, status=202)


async def openapi(request: web.BaseRequest) -> web.Response:
    global _openapi_document  # noqa: PLW0603  # read once, off the loop, then kept
    if _openapi_document is None:
        _openapi_document = await asyncio.to_thread(OPENAPI_PATH.read_bytes)
    return web.Response(body=_openapi_document, content_type=JSON)


_openapi_document: bytes | None = None
