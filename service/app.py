"""The application: a factory that does no I/O, and the resources it starts and stops.

The ``web.Application`` holds flagpost's parts under typed keys and their lifecycle; requests
are answered by its ``Shell`` (``app[SHELL].handle``), which aiohttp's low-level server calls
(``service.server``): the application's own router is not used.

Long-lived resources each have one cleanup context, started in order and stopped in reverse:
the rules (first load, then the refresher task; the source is closed last), then the events
pipeline (its sinks opened and spools replayed; on stop, drained before the rules go).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from service import heap, redaction
from service.api import Serving
from service.catalog import Catalog
from service.events.pipeline import Pipeline
from service.events.sinks import parse_sink
from service.keys import (
    BROADCAST,
    LIMITS,
    METRICS,
    PIPELINE,
    RECENT,
    REFRESHER,
    REPLAYS,
    SETTINGS,
    SHELL,
    STORE,
    VISITORS,
)
from service.metrics import Metrics
from service.ofrep import Ofrep
from service.ops import Operations
from service.payloads import Limits
from service.refresher import Refresher
from service.replicas import RefreshBroadcast
from service.settings import Settings
from service.shell import Shell
from service.sources import open_source
from service.store import DiskCache, RulesStore
from service.tracking import Tracking
from service.visitors.bots import BotJudge
from service.visitors.codes import CookiePolicy
from service.visitors.items import ItemLimits
from service.visitors.recent import RecentExposures, run_recent
from service.visitors.redis_store import RedisVisitors
from service.visitors.routes import VisitorData, VisitorIdentity
from service.visitors.screening import VisitorScreen
from service.visitors.stores import MemoryVisitors, VisitorStore, VisitorStoreCollector
from service.webhooks import MemoryReplayGuard, RedisReplayGuard, ReplayGuard

__all__ = ["create_app"]


def create_app(
    settings: Settings,
    *,
    spool_dir: Path | None = None,
    combine_metrics: Callable[[bytes], bytes] | None = None,
) -> web.Application:
    """Build the application; nothing is read, fetched or started until it runs.

    A worker of several (``service.workers``) passes the spool directory of its slot, and
    what adds the other workers' metrics to its own."""
    redaction.register(settings.secrets())
    source = open_source(
        settings.rules,
        timeout=settings.rules_timeout,
        max_bytes=settings.max_rules_bytes,
        authorization=settings.rules_auth.reveal() if settings.rules_auth else None,
    )
    store = RulesStore(source.description)
    metrics = Metrics(store)
    app = web.Application()
    shell = Shell(tuple(key.reveal().encode() for key in settings.api_keys), metrics.requests)
    app[SHELL] = shell
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
    app[VISITORS] = visitors = _visitor_store(settings)
    screen = VisitorScreen(
        visitors, BotJudge(), metrics.registry, consent_required=settings.consent_required
    )
    spool_dir = Path(settings.spool_dir) if spool_dir is None else spool_dir
    app[PIPELINE] = pipeline = _pipeline(settings, metrics, screen, spool_dir)
    app.cleanup_ctx.append(_visitors_context)
    app.cleanup_ctx.append(_rules_context)
    app.cleanup_ctx.append(_events_context)
    app.on_shutdown.append(_end_streams)
    recorder = pipeline.recorder if pipeline.workers else None
    app[RECENT] = recent = RecentExposures(visitors)
    serving = Serving(store, metrics, app[LIMITS], settings.environment, recorder, visitors, recent)
    serving.add_routes(shell)
    Catalog(store).add_routes(shell)
    tracking = Tracking(store, pipeline, app[LIMITS], visitors)
    tracking.add_routes(shell)
    Ofrep(serving, settings.refresh_interval).add_routes(shell)
    item_limits = ItemLimits(
        settings.visitor_max_items, settings.visitor_max_url, settings.visitor_max_cookies
    )
    VisitorData(visitors, app[LIMITS], item_limits, settings.session_ttl, tracking).add_routes(
        shell
    )
    VisitorIdentity(
        visitors,
        app[LIMITS],
        CookiePolicy(settings.visitor_cookie, settings.cookie_domain),
        recent,
        consent_required=settings.consent_required,
    ).add_routes(shell)
    app[REPLAYS] = replays = _replay_guard(settings)
    app.cleanup_ctx.append(_replays_context)
    broadcast = None
    if settings.redis_url is not None:
        broadcast = RefreshBroadcast(
            settings.redis_url, settings.visitor_write_timeout, app[REFRESHER].trigger
        )
        app[BROADCAST] = broadcast
        app.cleanup_ctx.append(_broadcast_context)
    Operations(
        settings,
        store,
        metrics,
        pipeline,
        app[REFRESHER],
        app[LIMITS],
        visitors,
        replays,
        broadcast,
        combine_metrics,
    ).add_routes(shell)
    metrics.registry.register(VisitorStoreCollector(visitors))
    return app


def _visitor_store(settings: Settings) -> VisitorStore:
    if settings.visitors == "memory":
        return MemoryVisitors(
            ttl=settings.session_ttl,
            retention=settings.visitor_retention,
            limit=settings.visitor_limit,
        )
    return RedisVisitors(
        settings.visitors,
        ttl=settings.session_ttl,
        retention=settings.visitor_retention,
        read_timeout=settings.visitor_timeout,
        write_timeout=settings.visitor_write_timeout,
    )


def _replay_guard(settings: Settings) -> ReplayGuard:
    if settings.redis_url is None:
        return MemoryReplayGuard()
    return RedisReplayGuard(settings.redis_url, settings.visitor_write_timeout)


async def _broadcast_context(app: web.Application) -> AsyncIterator[None]:
    broadcast = app[BROADCAST]
    task = asyncio.create_task(broadcast.listen(), name="flagpost-refresh-channel")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await broadcast.close()


async def _replays_context(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[REPLAYS].close()


async def _visitors_context(app: web.Application) -> AsyncIterator[None]:
    visitors = app[VISITORS]
    await visitors.start()
    tasks = [
        asyncio.create_task(run_recent(app[RECENT]), name="flagpost-tracking-notes"),
        asyncio.create_task(_sweep_forever(visitors), name="flagpost-visitor-sweep"),
    ]
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await visitors.close()


async def _sweep_forever(visitors: VisitorStore) -> None:
    """Forget expired visitors, a bounded amount each second."""
    while True:
        await asyncio.sleep(1.0)
        visitors.sweep()


def _pipeline(
    settings: Settings, metrics: Metrics, screen: VisitorScreen, spool_dir: Path
) -> Pipeline:
    sinks = [
        parse_sink(
            spec,
            file_max_bytes=settings.events_file_max_bytes,
            file_max_age=settings.events_file_max_age,
            timeout=min(settings.sink_timeout, 5.0),
            authorization=settings.events_auth.reveal() if settings.events_auth else None,
            source_id=settings.tracker_source,
        )
        for spec in settings.events
    ]
    return Pipeline(
        sinks,
        metrics.registry,
        spool_dir=spool_dir,
        spool_max_bytes=settings.spool_max_bytes,
        batch_size=settings.batch_size,
        queue_size=settings.queue_size,
        flush_interval=settings.flush_interval,
        session_ttl=settings.session_ttl,
        session_limit=settings.session_limit,
        retry_timeout=settings.sink_timeout,
        drain_timeout=settings.drain_timeout,
        screen=screen,
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
