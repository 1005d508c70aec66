"""The aiohttp application: a factory that does no I/O, and the resources it starts and stops.

Long-lived resources each have one cleanup context, started in order and stopped in reverse:
the rules (first load, then the refresher task; the source is closed last), then the events
pipeline (its sinks opened and spools replayed; on stop, drained before the rules go).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from time import perf_counter

from aiohttp import web

import rules
from service import heap, ops, redaction
from service.api import Serving
from service.catalog import Catalog
from service.errors import ApiError, error_response, from_rules_error
from service.events.pipeline import Pipeline
from service.events.sinks import parse_sink
from service.keys import LIMITS, METRICS, PIPELINE, REFRESHER, SETTINGS, STORE
from service.logs import REQUEST_ID, get_logger
from service.metrics import Metrics, RequestStats
from service.ofrep import Ofrep
from service.payloads import Limits
from service.refresher import Refresher
from service.settings import Settings
from service.sources import open_source
from service.store import DiskCache, RulesStore
from service.tracking import Tracking

__all__ = ["GuardedRouter", "create_app"]


log = get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_PROCESS_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


def create_app(settings: Settings) -> web.Application:
    """Build the application; nothing is read, fetched or started until it runs."""
    redaction.register(settings.secrets())
    source = open_source(
        settings.rules,
        timeout=settings.rules_timeout,
        max_bytes=settings.max_rules_bytes,
        authorization=settings.rules_auth.reveal() if settings.rules_auth else None,
    )
    store = RulesStore(source.description)
    metrics = Metrics(store)
    app = web.Application(client_max_size=settings.max_body)
    router = GuardedRouter(app, settings, metrics.requests)
    app[SETTINGS] = settings
    app[STORE] = store
    app[METRICS] = metrics
    app[LIMITS] = Limits(
        settings.max_body, settings.max_attributes, settings.max_depth, settings.body_timeout
    )
    app[REFRESHER] = Refresher(
        source,
        store,
        DiskCache(settings.cache_dir),
        interval=settings.refresh_interval,
        max_flags=settings.max_flags,
        on_result=lambda result: metrics.refreshes.labels(result).inc(),
    )
    app[PIPELINE] = pipeline = _pipeline(settings, metrics)
    app.cleanup_ctx.append(_rules_context)
    app.cleanup_ctx.append(_events_context)
    app.on_shutdown.append(_end_streams)
    recorder = pipeline.recorder if pipeline.workers else None
    serving = Serving(store, metrics, app[LIMITS], settings.environment, recorder)
    serving.add_routes(router)
    Catalog(store).add_routes(router)
    Tracking(store, pipeline, app[LIMITS]).add_routes(router)
    Ofrep(serving, settings.refresh_interval).add_routes(router)
    ops.add_routes(router)
    router.add_fallback()
    return app


def _pipeline(settings: Settings, metrics: Metrics) -> Pipeline:
    sinks = [
        parse_sink(
            spec,
            file_max_bytes=settings.events_file_max_bytes,
            timeout=min(settings.sink_timeout, 5.0),
            authorization=settings.events_auth.reveal() if settings.events_auth else None,
            source_id=settings.tracker_source,
        )
        for spec in settings.events
    ]
    return Pipeline(
        sinks,
        metrics.registry,
        spool_dir=Path(settings.spool_dir),
        spool_max_bytes=settings.spool_max_bytes,
        batch_size=settings.batch_size,
        queue_size=settings.queue_size,
        flush_interval=settings.flush_interval,
        session_ttl=settings.session_ttl,
        session_limit=settings.session_limit,
        retry_timeout=settings.sink_timeout,
        drain_timeout=settings.drain_timeout,
    )


async def _events_context(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[PIPELINE]
    await pipeline.start()
    yield
    await pipeline.stop()


async def _rules_context(app: web.Application) -> AsyncIterator[None]:
    refresher = app[REFRESHER]
    await refresher.start()
    # Everything made so far (modules, the compiled rules, the sessions table) lives as long
    # as the process: keep the cyclic collector from walking it again and again.
    heap.freeze_start_up(app[PIPELINE].sessions.shards)
    task = asyncio.create_task(refresher.run(), name="flagpost-refresher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await refresher.source.close()


async def _end_streams(app: web.Application) -> None:
    app[STORE].close_subscribers()


class GuardedRouter:
    """Adds routes whose handlers are wrapped in the guard: request id, API keys, errors as
    JSON, metrics.

    A wrapper per route rather than an aiohttp middleware: middlewares add two coroutine
    layers and a route lookup to every request, which cost more than a decision does.
    """

    def __init__(self, app: web.Application, settings: Settings, stats: RequestStats) -> None:
        self.app = app
        self.keys = tuple(key.reveal().encode() for key in settings.api_keys)
        self.stats = stats

    def add(self, method: str, path: str, handler: Handler) -> None:
        needs_key = bool(self.keys) and _needs_key(path)
        self.app.router.add_route(method, path, self._guard(path, handler, needs_key))

    def add_fallback(self) -> None:
        """Answer unknown paths (404) and unknown methods (405) with the JSON error body."""
        router = self.app.router
        known = list(router.resources())

        async def unmatched(request: web.Request) -> web.StreamResponse:
            allowed: set[str] = set()
            for resource in known:
                match, methods = await resource.resolve(request)
                allowed |= methods if match is None else set()
            if allowed:
                raise ApiError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"{request.method} is not allowed here",
                    headers={"Allow": ", ".join(sorted(allowed))},
                )
            raise ApiError(404, "NOT_FOUND", f"no such resource: {request.path}")

        router.add_route("*", "/{unmatched:.*}", self._guard("unmatched", unmatched, False))

    def _guard(self, route: str, handler: Handler, needs_key: bool) -> Handler:
        keys, stats = self.keys, self.stats

        async def guarded(request: web.Request) -> web.StreamResponse:
            started = perf_counter()
            request_id = request.headers.get("X-Request-Id")
            if request_id is None or not _ACCEPTABLE_REQUEST_ID.fullmatch(request_id):
                request_id = f"{_PROCESS_PREFIX}-{next(_COUNTER):x}"
            # Not reset afterwards: aiohttp writes the access log line (when enabled) after the
            # handler returns, and it should carry the id too. The next request overwrites it.
            REQUEST_ID.set(request_id)
            try:
                if needs_key and not _has_key(request, keys):
                    raise ApiError(401, "UNAUTHORIZED", "a valid API key is required")
                response = await handler(request)
            except ApiError as error:
                response = error_response(error, _headers_for(error, request))
            except rules.RulesError as error:
                response = error_response(from_rules_error(error))
            except web.HTTPException as error:
                if error.status < 400:
                    raise
                code = _HTTP_CODES.get(error.status, "INVALID_REQUEST")
                response = error_response(ApiError(error.status, code, error.reason))
            except Exception:
                log.exception("request_failed", path=request.path, method=request.method)
                response = error_response(ApiError(500, "INTERNAL", "an internal error occurred"))
            if not response.prepared:
                response.headers["X-Request-Id"] = request_id
            stats.record(route, request.method, response.status, perf_counter() - started)
            return response

        return guarded


def _needs_key(path: str) -> bool:
    # The webhook proves itself with its signature; health and metrics stay open for probes.
    return path.startswith(("/v1/", "/ofrep/")) and not path.startswith("/v1/webhooks/")


def _has_key(request: web.Request, keys: tuple[bytes, ...]) -> bool:
    presented = request.headers.get("X-API-Key")
    if presented is None:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        presented = credentials.strip() if scheme.lower() == "bearer" else ""
    # Header bytes that are not UTF-8 arrive as surrogates: they match no key, never crash.
    offered = presented.encode(errors="replace")
    found = False
    for key in keys:  # every key is compared, so timing does not tell which one nearly matched
        found |= hmac.compare_digest(offered, key)
    return found


def _headers_for(error: ApiError, request: web.Request) -> dict[str, str] | None:
    if error.status == 401:
        return {"WWW-Authenticate": 'Bearer realm="flagpost"', **error.headers}
    return error.headers or None
