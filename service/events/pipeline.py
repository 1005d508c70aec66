"""The events pipeline: the queue, the sessions, the flusher task and one worker per sink.

The flusher wakes when a batch is full or ``flush_interval`` has passed, turns what is queued
into records once, and hands the batch to every sink's worker. It builds batches in slices
(``service.sharing``), giving way to requests in between, so none waits behind a whole batch
or a backlog (500 single-decision rows take 2 to 4 ms on the benchmark machine). A flush asked
for (the flush endpoint, a full queue) hands what is queued to the flusher, behind what it is
building, so batches keep their order and no request builds a backlog. Only when more than
``queue_size`` events wait to be built does a request that adds to them build a slice itself:
requests then slow down to what the pipeline keeps up with, instead of memory growing.
Stopping drains: everything is built, each worker gets ``drain_timeout`` seconds to deliver,
the rest is spooled. The spool directory is locked for this process (``SpoolLock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from rules.steps import Steps
from service.events.delivery import SinkWorker
from service.events.queue import EventQueue, Recorder
from service.events.records import (
    AttributeCache,
    Batch,
    Item,
    batch_steps,
    events_in,
    take_batch,
)
from service.events.sessions import Sessions
from service.events.sinks import Sink
from service.events.spool import WORKER_PREFIX, Spool, SpoolLock, adopt_spools
from service.events.stats import EventStats
from service.logs import get_logger
from service.sharing import SLICE_SECONDS, give_way

__all__ = ["Pipeline", "Screen"]

log = get_logger(__name__)


class Screen(Protocol):
    """Decides what of the queued items is recorded (dropping, trimming or relabelling
    them), before they are built: ``screen`` may do I/O, ``screen_now`` may not."""

    async def screen(self, items: list[Item]) -> list[Item]: ...

    def screen_now(self, items: list[Item]) -> list[Item]: ...


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
        screen: Screen | None = None,
    ) -> None:
        self.stats = EventStats(registry)
        self.screen = screen
        #: Items handed over (a full queue, a flush) and not screened yet, with their events.
        self._unscreened: list[Item] = []
        self._unscreened_events = 0
        self.sessions = Sessions(session_ttl, session_limit)
        self.queue = EventQueue(batch_size, queue_size, self.spill)
        self.recorder = Recorder(self.queue, self.sessions)
        self.workers = [
            SinkWorker(
                sink,
                Spool(spool_dir / _directory_name(sink.name), spool_max_bytes),
                self.stats,
                retry_timeout=retry_timeout,
                memory_events=queue_size,
            )
            for sink in sinks
        ]
        self.spool_lock = SpoolLock(spool_dir)
        self.batch_size = batch_size
        self.backlog_limit = queue_size
        self.flush_interval = flush_interval
        self.drain_timeout = drain_timeout
        self.stats.watch_queue(
            lambda: len(self.queue) + self._unscreened_events + self._backlog_events
        )
        self._repeated_counted = 0
        self._task: asyncio.Task[None] | None = None
        #: Items taken from the queue and waiting to be built into batches, oldest first.
        self._backlog: deque[Item] = deque()
        self._backlog_events = 0
        #: The batch being built in slices, if any (the flusher's or an overloaded request's).
        self._building: Steps[Batch] | None = None
        self._building_events = 0
        self._attributes = AttributeCache()

    async def start(self) -> None:
        """Lock the spool directory (``SpoolLocked`` if another process has it), open the
        sinks, replay their spools, start the flusher."""
        if self.workers:
            await asyncio.to_thread(self.spool_lock.acquire)
            await asyncio.to_thread(self._adopt_worker_spools)
        for worker in self.workers:
            await worker.start()
        self._task = asyncio.create_task(self._flush_forever(), name="flagpost-flusher")

    def _adopt_worker_spools(self) -> None:
        # Spools worker processes left here (a server run with --workers before): one process
        # holds the whole directory now, so it replays them.
        root = self.spool_lock.path.parent
        moved = adopt_spools(sorted(root.glob(f"{WORKER_PREFIX}*")), root)
        if moved:
            log.warning("spools_adopted", batches=moved, spool_dir=str(root))

    async def stop(self) -> None:
        """Build what is queued, give the sinks ``drain_timeout`` to take it, spool the rest."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        await self._screen_pending()
        while self._building is not None or self._backlog:
            await self._build_slice()
            await give_way()
        await asyncio.gather(*(worker.drain(self.drain_timeout) for worker in self.workers))
        self.spool_lock.release()

    def accept(self, record: dict[str, Any]) -> None:
        """Queue a record built by a request handler (a conversion or an ODP event)."""
        self.queue.put(record)

    def flush(self) -> int:
        """Have everything queued built and handed to the sinks now, behind what is already
        being built; returns how many queued events that was."""
        items, events = self.queue.take()
        self.spill(items, events)
        return events

    def spill(self, items: list[Item], events: int) -> None:
        """Hand ``items`` (``events`` events) to the flusher, behind what it is building
        (and, with a screen, behind what it is screening). The queue calls this when it is
        full: when the backlog is then over its limit too, this request builds one slice of
        it itself (``SLICE_SECONDS``), and so slows to the pipeline's pace; items the
        flusher has not screened by then are screened here, without I/O."""
        if self.screen is None:
            self._to_backlog(items, events)
            return
        if items:
            self._unscreened += items
            self._unscreened_events += events
            self.queue.wake.set()
        if self._unscreened_events > self.backlog_limit:  # one batch's worth, as a slice
            chunk = self._unscreened[: self.batch_size]
            del self._unscreened[: self.batch_size]
            self._unscreened_events -= sum(map(events_in, chunk))
            screened = self.screen.screen_now(chunk)
            self._to_backlog(screened, sum(map(events_in, screened)))

    async def _screen_pending(self) -> None:
        """Screen what was handed over, a batch's worth of items at a time (a backlog screened
        in one piece held the loop for 15 ms), passing each on to be built."""
        if self.screen is None:
            return
        while self._unscreened:
            chunk = self._unscreened[: self.batch_size]
            del self._unscreened[: self.batch_size]
            self._unscreened_events -= sum(map(events_in, chunk))
            screened = await self.screen.screen(chunk)  # (which may trim an item's events)
            self._to_backlog(screened, sum(map(events_in, screened)))
            if self._unscreened:
                await give_way()

    def _to_backlog(self, items: list[Item], events: int) -> None:
        if items:
            self._backlog.extend(items)
            self._backlog_events += events
            self.queue.wake.set()
        if self._backlog_events > self.backlog_limit:
            self._build_slice_now()

    def health(self) -> dict[str, Any]:
        return {
            "queued": len(self.queue),
            "sessions": len(self.sessions),
            "sinks": [worker.health() for worker in self.workers],
        }

    def _steps(self, items: list[Item]) -> Steps[Batch]:
        milliseconds = int(time.time() * 1000)
        return batch_steps(items, milliseconds, self.sessions.prefix, self._attributes)

    def _submit(self, batch: Batch) -> None:
        if batch.unwritable:
            self.stats.dropped.labels("unwritable", "all").inc(batch.unwritable)
        EventStats.count(self.stats.accepted, batch)
        for worker in self.workers:
            worker.submit(batch)

    def _build_slice_now(self) -> None:
        """Build for one slice (``SLICE_SECONDS``), submitting each batch that is done."""
        deadline = perf_counter() + SLICE_SECONDS
        while perf_counter() < deadline:
            if self._building is None:
                if not self._backlog:
                    return
                items, events = take_batch(self._backlog, self.batch_size)  # a cap
                self._building_events = events
                self._backlog_events -= events
                self._building = self._steps(items)
            try:
                next(self._building)
            except StopIteration as done:
                self._building = None
                self._submit(done.value)

    async def _build_slice(self) -> None:
        try:
            self._build_slice_now()
        except Exception:  # a bug: the batch is lost, said and counted; the flusher goes on
            self._building = None
            log.exception("events_batch_failed", events=self._building_events)
            self.stats.dropped.labels("unknown", "all").inc(self._building_events)

    async def _flush_in_slices(self) -> None:
        """Build everything queued and in the backlog, a slice at a time."""
        self.spill(*self.queue.take())
        await self._screen_pending()
        while self._building is not None or self._backlog:
            await self._build_slice()
            if self._building is not None or self._backlog:
                await give_way()

    async def _flush_forever(self) -> None:
        wake = self.queue.wake
        while True:
            # asyncio.timeout, not wait_for: on 3.11, cancelling a wait_for whose inner
            # wait has just been woken can leave the cancel hanging.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await wake.wait()
            wake.clear()
            try:
                await self._flush_in_slices()
                repeated = self.recorder.repeated
                self.stats.repeated.inc(repeated - self._repeated_counted)
                self._repeated_counted = repeated
                self.sessions.sweep(time.time())
            except Exception:  # never the end of flushing: logged, and on the next turn
                log.exception("events_flusher_failed")


def _directory_name(sink: str) -> str:
    """A spool directory per sink: readable, and distinct for distinct sinks."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", sink).strip("-")[:48]
    return f"{readable}-{hashlib.sha256(sink.encode()).hexdigest()[:8]}"
