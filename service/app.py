"""The aiohttp application: a factory that does no I/O, and the resources it starts and stops.

Long-lived resources each have one cleanup context, started in order and stopped in reverse:
the rules (first load, then the refresher task; the source is closed last).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter

from aiohttp import web
from aiohttp.typedefs import Middleware

import rules
from service import api, ofrep, ops
from service.errors import ApiError, error_response, from_rules_error
from service.keys import LIMITS, METRICS, REFRESHER, SETTINGS, STORE
from service.logs import REQUEST_ID, get_logger
from service.metrics import Metrics
from service.payloads import Limits
from service.refresher import Refresher
from service.settings import Settings
from service.sources import open_source
from service.store import DiskCache, RulesStore

__all__ = ["create_app"]


log = get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_PROCESS_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


def create_app(settings: Settings) -> web.Application:
    """Build the application; nothing is read, fetched or started until it runs."""
    app = web.Application(client_max_size=settings.max_body, middlewares=[_guard(settings)])
    store = RulesStore(_source_description(settings))
    metrics = Metrics(store)
    source = open_source(
        settings.rules, timeout=settings.rules_timeout, authorization=settings.rules_auth
    )
    app[SETTINGS] = settings
    app[STORE] = store
    app[METRICS] = metrics
    app[LIMITS] = Limits(settings.max_body, settings.max_attributes, settings.max_depth)
    app[REFRESHER] = Refresher(
        source,
        store,
        DiskCache(settings.cache_dir),
        interval=settings.refresh_interval,
        on_result=lambda result: metrics.refreshes.labels(result).inc(),
    )
    app.cleanup_ctx.append(_rules_context)
    app.on_shutdown.append(_end_streams)
    api.add_routes(app)
    ofrep.add_routes(app)
    ops.add_routes(app)
    return app


def _source_description(settings: Settings) -> str:
    return open_source(settings.rules, timeout=1, authorization=None).description


async def _rules_context(app: web.Application) -> AsyncIterator[None]:
    refresher = app[REFRESHER]
    await refresher.start()
    task = asyncio.create_task(refresher.run(), name="flagpost-refresher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await refresher.source.close()


async def _end_streams(app: web.Application) -> None:
    app[STORE].close_subscribers()


def _guard(settings: Settings) -> Middleware:
    """One middleware for every request: request id, API keys, errors as JSON, metrics.

    One rather than four, because each aiohttp middleware layer costs on every decision.
    """
    keys = tuple(key.encode() for key in settings.api_keys)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf_counter()
        request_id = request.headers.get("X-Request-Id")
        if request_id is None or not _ACCEPTABLE_REQUEST_ID.fullmatch(request_id):
            request_id = f"{_PROCESS_PREFIX}-{next(_COUNTER):x}"
        token = REQUEST_ID.set(request_id)
        try:
            if keys and _needs_key(request.path) and not _has_key(request, keys):
                raise ApiError(401, "UNAUTHORIZED", "a valid API key is required")
            response = await handler(request)
        except ApiError as error:
            response = error_response(error, _challenge(error))
        except rules.RulesError as error:
            response = error_response(from_rules_error(error))
        except web.HTTPException as error:  # routing: unknown path, wrong method
            if error.status < 400:
                raise
            code = _HTTP_CODES.get(error.status, "INVALID_REQUEST")
            response = error_response(ApiError(error.status, code, error.reason))
        except Exception:
            log.exception("request_failed", path=request.path, method=request.method)
            response = error_response(ApiError(500, "INTERNAL", "an internal error occurred"))
        finally:
            REQUEST_ID.reset(token)
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[METRICS]
        metrics.requests.labels(route, request.method, response.status).inc()
        metrics.latency.labels(route, request.method).observe(perf_counter() - started)
        return response

    return guard


def _needs_key(path: str) -> bool:
    # The webhook proves itself with its signature; health and metrics stay open for probes.
    return path.startswith(("/v1/", "/ofrep/")) and not path.startswith("/v1/webhooks/")


def _has_key(request: web.Request, keys: tuple[bytes, ...]) -> bool:
    presented = request.headers.get("X-API-Key")
    if presented is None:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        presented = credentials.strip() if scheme.lower() == "bearer" else ""
    offered = presented.encode()
    found = False
    for key in keys:  # every key is compared, so timing does not tell which one nearly matched
        found |= hmac.compare_digest(offered, key)
    return found


def _challenge(error: ApiError) -> dict[str, str] | None:
    return {"WWW-Authenticate": 'Bearer realm="flagpost"'} if error.status == 401 else None
