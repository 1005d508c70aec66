"""Delivery to one sink: retries with backoff, the disk spool when the sink is down, replay in
order when it is back.

The worker takes batches from its outbox, oldest first, but only once the spool is empty: what
was spooled is older and goes first, so a sink sees batches in the order they were made. A batch
is retried with exponential backoff and full jitter (a collector's ``Retry-After`` wins) for up
to ``retry_timeout`` seconds; then the sink counts as down, the batch and everything behind it go
to the spool, and the head of the spool is tried again after a pause that doubles up to 30 s.

A batch counts as delivered only when the sink said so; if flagpost stops between the sink
taking a batch and hearing so, the batch is sent again: delivery is at least once, and every
record has a ``uuid`` for the consumer to de-duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from time import monotonic, perf_counter
from typing import Any, TypeVar

from service.events.records import Batch
from service.events.sinks import DeliveryError, Rejected, Sink
from service.events.spool import Spool
from service.events.stats import EventStats
from service.logs import get_logger

__all__ = ["SinkWorker"]

log = get_logger(__name__)
T = TypeVar("T")

FIRST_RETRY = 0.1
LONGEST_RETRY = 5.0
LONGEST_PAUSE = 30.0


class SinkWorker:
    """Delivers batches to one sink, spooling what it cannot deliver yet."""

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        stats: EventStats,
        *,
        retry_timeout: float,
        max_outbox: int = 64,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.stats = stats
        self.retry_timeout = retry_timeout
        self.max_outbox = max_outbox
        self.outbox: deque[Batch] = deque()
        self.wake = asyncio.Event()
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.delivered = 0
        self._sending: Batch | None = None  # an outbox batch being sent, not yet confirmed
        self._task: asyncio.Task[None] | None = None
        self._disk_work: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        return self.sink.name

    async def start(self) -> None:
        await asyncio.to_thread(self.spool.open)
        await self.sink.open()
        self._gauge()
        if len(self.spool):
            log.info("events_spool_found", sink=self.name, batches=len(self.spool))
        self._task = asyncio.create_task(self._run(), name=f"flagpost-sink-{self.name}")

    def submit(self, batch: Batch) -> None:
        """Queue a batch for the sink (never blocks; a long outbox overflows to the spool)."""
        batch = batch.only(self.sink.kinds)
        if not batch:
            return
        if len(self.outbox) >= self.max_outbox:
            self._to_spool(self.outbox.popleft())  # the loop waits on the disk, rarely
        self.outbox.append(batch)
        self.wake.set()

    def health(self) -> dict[str, object]:
        return {
            "sink": self.name,
            "healthy": self.down_since is None,
            "down_since": _iso(self.down_since) if self.down_since is not None else None,
            "last_error": self.last_error,
            "outbox_batches": len(self.outbox),
            "spool_batches": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "delivered": self.delivered,
        }

    async def drain(self, timeout: float) -> None:
        """Deliver the outbox within ``timeout`` seconds, spool whatever is left, close."""
        deadline = monotonic() + timeout
        while (self.outbox or self._sending) and self.down_since is None:
            if monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*self._disk_work)  # a spool write under way must finish
        leftovers = ([self._sending] if self._sending else []) + list(self.outbox)
        self._sending = None
        self.outbox.clear()
        for batch in leftovers:
            await asyncio.to_thread(self._to_spool, batch)
        if leftovers:
            log.warning("events_spooled_at_stop", sink=self.name, batches=len(leftovers))
        await self.sink.close()

    async def _run(self) -> None:
        pause = 1.0
        while True:
            if len(self.spool):
                head = await self._on_disk(self.spool.head)
                if head is None:
                    continue
                path, batch = head
                outcome = await self._deliver(batch)
                if outcome is not None:
                    await self._on_disk(self.spool.remove, path, rejected=outcome == "rejected")
                    self._gauge()
                    pause = 1.0
                    continue
            elif self.outbox:
                batch = self._sending = self.outbox.popleft()
                outcome = await self._deliver(batch)
                self._sending = None
                if outcome == "rejected":
                    await self._on_disk(self.spool.reject, batch)
                if outcome is not None:
                    pause = 1.0
                    continue
                await self._on_disk(self._to_spool, batch)
            else:
                self.wake.clear()
                await self.wake.wait()
                continue
            await self._wait_while_down(pause)
            pause = min(pause * 2, LONGEST_PAUSE)

    async def _wait_while_down(self, pause: float) -> None:
        """Sleep ``pause`` seconds, spooling whatever is submitted meanwhile."""
        deadline = monotonic() + pause
        while (remaining := deadline - monotonic()) > 0:
            while self.outbox:
                await self._on_disk(self._to_spool, self.outbox.popleft())
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.wake.wait()
        while self.outbox:
            await self._on_disk(self._to_spool, self.outbox.popleft())

    async def _deliver(self, batch: Batch) -> str | None:
        """ "delivered", "rejected", or None when the sink stayed down for the whole timeout."""
        started = perf_counter()
        deadline = monotonic() + self.retry_timeout
        delay = FIRST_RETRY
        attempt = 0
        while True:
            if attempt:
                EventStats.count(self.stats.retried, batch, self.name)
            attempt += 1
            try:
                await self.sink.send(batch)
            except (Rejected, TypeError, ValueError) as error:
                # A refusal, or records this sink cannot encode (a bug, but one batch must
                # not stop the ones behind it): kept aside, counted, logged.
                self.last_error = str(error)
                EventStats.count(self.stats.rejected, batch, self.name)
                log.error("events_rejected", sink=self.name, events=len(batch), error=str(error))
                return "rejected"
            except DeliveryError as error:
                self.last_error = str(error)
                wait = random.uniform(0, delay) if error.retry_after is None else error.retry_after
                delay = min(delay * 2, LONGEST_RETRY)
                if monotonic() + wait > deadline:
                    if self.down_since is None:
                        self.down_since = time.time()
                        log.warning("events_sink_down", sink=self.name, error=str(error))
                    return None
                await asyncio.sleep(wait)
                continue
            break
        self.stats.flush_seconds.labels(self.name).observe(perf_counter() - started)
        EventStats.count(self.stats.delivered, batch, self.name)
        self.delivered += len(batch)
        if self.down_since is not None:
            log.info("events_sink_recovered", sink=self.name)
            self.down_since = None
        return "delivered"

    async def _on_disk(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a spool operation in a thread, to its end even if this worker is cancelled:
        a batch half handed to the spool must not be lost to a shutdown."""
        work = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
        self._disk_work.add(work)
        work.add_done_callback(self._disk_work.discard)
        return await asyncio.shield(work)

    def _to_spool(self, batch: Batch) -> None:
        if self.spool.write(batch):
            EventStats.count(self.stats.spooled, batch, self.name)
        else:
            EventStats.count(self.stats.dropped, batch, self.name)
            log.error(
                "events_dropped_spool_full",
                sink=self.name,
                events=len(batch),
                spool_bytes=self.spool.bytes,
                max_bytes=self.spool.max_bytes,
            )
        self._gauge()

    def _gauge(self) -> None:
        self.stats.spool_batches.labels(self.name).set(len(self.spool))
        self.stats.spool_bytes.labels(self.name).set(self.spool.bytes)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
