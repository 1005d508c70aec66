"""The events pipeline: the queue, the sessions, the flusher task and one worker per sink.

The flusher wakes when a batch is full or ``flush_interval`` has passed, turns what is queued
into records once, and hands the batch to every sink's worker. It builds a batch in slices
(``service.sharing``), giving way to requests in between, so none waits behind a whole batch
or a backlog (500 single-decision rows take 2 to 4 ms on the benchmark machine). A flush asked
for meanwhile (``flush``: the flush endpoint, a full queue, stopping) first finishes the batch
being built, so batches keep their order and nothing taken from the queue is left behind.
Stopping drains: the queue is flushed, each worker gets ``drain_timeout`` seconds to deliver,
the rest is spooled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Iterable
from pathlib import Path
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from rules.steps import Steps, finish
from service.events.delivery import SinkWorker
from service.events.queue import EventQueue, Recorder
from service.events.records import Batch, Item, batch_steps, events_in
from service.events.sessions import Sessions
from service.events.sinks import Sink
from service.events.spool import Spool
from service.events.stats import EventStats
from service.logs import get_logger
from service.sharing import SLICE_SECONDS, give_way

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
        #: The batch the flusher is building in slices, if any.
        self._building: Steps[Batch] | None = None

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
        """Hand everything queued to the sinks now (after the batch the flusher may be
        building); returns how many queued events that was."""
        items = self.queue.take()
        self.spill(items)
        return sum(map(events_in, items))

    def spill(self, items: list[Item]) -> None:
        """Hand ``items`` to the workers now, after the batch the flusher may be building.
        The queue calls this when it is full: the flusher is not keeping up, and a worker
        whose outbox is long spools the batch (``SinkWorker.submit``)."""
        self._finish_building()
        if items:
            self._submit(finish(self._steps(items)))

    def health(self) -> dict[str, Any]:
        return {
            "queued": len(self.queue),
            "sessions": len(self.sessions),
            "sinks": [worker.health() for worker in self.workers],
        }

    def _steps(self, items: list[Item]) -> Steps[Batch]:
        return batch_steps(items, int(time.time() * 1000), self.sessions.prefix)

    def _submit(self, batch: Batch) -> None:
        if batch.unwritable:
            self.stats.dropped.labels("unwritable", "all").inc(batch.unwritable)
        EventStats.count(self.stats.accepted, batch)
        for worker in self.workers:
            worker.submit(batch)

    def _finish_building(self) -> None:
        building, self._building = self._building, None
        if building is not None:
            self._submit(finish(building))

    async def _flush_in_slices(self) -> None:
        items = self.queue.take()
        if not items:
            return
        self._building = steps = self._steps(items)
        deadline = perf_counter() + SLICE_SECONDS
        while self._building is steps:  # else a flush() finished and submitted it
            try:
                next(steps)
            except StopIteration as done:
                self._building = None
                self._submit(done.value)
                return
            if perf_counter() >= deadline:
                await give_way()
                deadline = perf_counter() + SLICE_SECONDS

    async def _flush_forever(self) -> None:
        wake = self.queue.wake
        while True:
            # asyncio.timeout, not wait_for: on 3.11, cancelling a wait_for whose inner
            # wait has just been woken can leave the cancel hanging.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await wake.wait()
            wake.clear()
            await self._flush_in_slices()
            repeated = self.recorder.repeated
            self.stats.repeated.inc(repeated - self._repeated_counted)
            self._repeated_counted = repeated
            self.sessions.sweep(time.time())


def _directory_name(sink: str) -> str:
    """A spool directory per sink: readable, and distinct for distinct sinks."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", sink).strip("-")[:48]
    return f"{readable}-{hashlib.sha256(sink.encode()).hexdigest()[:8]}"
