"""The events pipeline: the queue, the sessions, the flusher task and one worker per sink.

The flusher wakes when a batch is full or ``flush_interval`` has passed, turns what is queued
into records once, and hands the batch to every sink's worker. Stopping drains: the queue is
flushed, each worker gets ``drain_timeout`` seconds to deliver, the rest is spooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from service.events.delivery import SinkWorker
from service.events.queue import EventQueue, Recorder
from service.events.records import Batch, Item, batch_of
from service.events.sessions import Sessions
from service.events.sinks import Sink
from service.events.spool import Spool
from service.events.stats import EventStats
from service.logs import get_logger

__all__ = ["Pipeline"]

log = get_logger(__name__)


class Pipeline:
    def __init__(
        self,
        sinks: Iterable[Sink],
        registry: CollectorRegistry,
        *,
        spool_dir: Path,
        spool_max_bytes: int,
        batch_size: int,
        queue_size: int,
        flush_interval: float,
        session_ttl: float,
        session_limit: int,
        retry_timeout: float,
        drain_timeout: float,
    ) -> None:
        self.stats = EventStats(registry)
        self.sessions = Sessions(session_ttl, session_limit)
        self.queue = EventQueue(batch_size, queue_size, self.spill)
        self.recorder = Recorder(self.queue, self.sessions)
        self.workers = [
            SinkWorker(
                sink,
                Spool(spool_dir / _directory_name(sink.name), spool_max_bytes),
                self.stats,
                retry_timeout=retry_timeout,
            )
            for sink in sinks
        ]
        self.flush_interval = flush_interval
        self.drain_timeout = drain_timeout
        self.stats.watch_queue(lambda: len(self.queue))
        self._repeated_counted = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for worker in self.workers:
            await worker.start()
        self._task = asyncio.create_task(self._flush_forever(), name="flagpost-flusher")

    async def stop(self) -> None:
        """Flush what is queued, give the sinks ``drain_timeout`` to take it, spool the rest."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        await asyncio.gather(*(worker.drain(self.drain_timeout) for worker in self.workers))

    def accept(self, record: dict[str, Any]) -> None:
        """Queue a record built by a request handler (a conversion or an ODP event)."""
        self.queue.put(record)

    def flush(self) -> int:
        """Hand everything queued to the sinks now; returns how many events that was."""
        items = self.queue.take()
        if items:
            batch = self._batch(items)
            for worker in self.workers:
                worker.submit(batch)
        return len(items)

    def spill(self, items: list[Item]) -> None:
        """The queue is full: the flusher is not keeping up, so this batch goes to the
        workers now, and a worker whose outbox is long spools it (``SinkWorker.submit``)."""
        batch = self._batch(items)
        for worker in self.workers:
            worker.submit(batch)

    def health(self) -> dict[str, Any]:
        return {
            "queued": len(self.queue),
            "sessions": len(self.sessions),
            "sinks": [worker.health() for worker in self.workers],
        }

    def _batch(self, items: list[Item]) -> Batch:
        batch = batch_of(items, int(time.time() * 1000), self.sessions.prefix)
        EventStats.count(self.stats.accepted, batch)
        return batch

    async def _flush_forever(self) -> None:
        wake = self.queue.wake
        while True:
            # asyncio.timeout, not wait_for: on 3.11, cancelling a wait_for whose inner
            # wait has just been woken can leave the cancel hanging.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await wake.wait()
            wake.clear()
            self.flush()
            repeated = self.recorder.repeated
            self.stats.repeated.inc(repeated - self._repeated_counted)
            self._repeated_counted = repeated
            self.sessions.sweep(time.time())


def _directory_name(sink: str) -> str:
    """A spool directory per sink: readable, and distinct for distinct sinks."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", sink).strip("-")[:48]
    return f"{readable}-{hashlib.sha256(sink.encode()).hexdigest()[:8]}"
