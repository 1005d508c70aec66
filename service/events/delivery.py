"""Delivery to one sink: retries with backoff, the disk spool when the sink is down or slow,
replay in order when it is back.

The worker takes batches from its outbox, oldest first, but only once the spool is empty: what
was spooled is older and goes first, so a sink sees batches in the order they were made. A batch
is retried with exponential backoff and full jitter (a collector's ``Retry-After`` wins) for up
to ``retry_timeout`` seconds; then the sink counts as down, the batch and everything behind it go
to the spool, and the head of the spool is tried again after a pause that doubles up to 30 s.

Nothing unacknowledged stays in memory alone for longer than ``ack_bound`` (1 s): a batch the
sink has not taken by then, whether it is being sent to a collector that hangs or waits behind
it, is written to the spool while the worker keeps waiting, and removed from it when the sink
takes it. A process crash loses no written data (an fsync guards against power loss only), so
a crash loses at most what was queued in the last flush interval and the last ``ack_bound``.
A sink that has not answered within ``ack_bound`` is reported unhealthy.

The disk can fail too (a full disk, say). A batch that cannot be spooled stays in memory and is
tried again, both ways, until the sink or the disk takes it; past ``memory_events`` such events,
the oldest are dropped, counted and logged. No error of a sink, the spool or the worker itself
stops the worker: each is logged, counted and retried.

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
from pathlib import Path
from time import monotonic, perf_counter
from typing import Any, TypeVar

from service.events.records import Batch
from service.events.sinks import DeliveryError, Rejected, Sink
from service.events.spool import Spool
from service.events.stats import EventStats
from service.instants import iso, shown_error
from service.logs import get_logger
from service.redaction import redact

__all__ = ["ACK_BOUND", "SinkWorker"]

log = get_logger(__name__)
T = TypeVar("T")

FIRST_RETRY = 0.1
LONGEST_RETRY = 5.0
LONGEST_PAUSE = 30.0
#: Seconds an unacknowledged batch is kept in memory alone before it is also written to disk.
ACK_BOUND = 1.0
#: What ``SinkWorker._spool`` answers when the spool is at its cap.
FULL = "full"


class SinkWorker:
    """Delivers batches to one sink, spooling what it cannot deliver yet."""

    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        stats: EventStats,
        *,
        retry_timeout: float,
        ack_bound: float = ACK_BOUND,
        memory_events: int = 100_000,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.stats = stats
        self.retry_timeout = retry_timeout
        self.ack_bound = ack_bound
        self.memory_events = memory_events
        #: Batches waiting for the sink, oldest first, each with when it was submitted.
        self.outbox: deque[tuple[float, Batch]] = deque()
        self.wake = asyncio.Event()
        self.down_since: float | None = None
        #: The failure since the last success, if any, as (message, when).
        self.last_error: tuple[str, float] | None = None
        #: The failure a later success ended, if any: history, not the current state.
        self.previous_error: tuple[str, float] | None = None
        self.delivered = 0
        self._sending: Batch | None = None  # an outbox batch being sent, not yet confirmed
        self._sending_since = 0.0  # (monotonic)
        self._sending_spooled: Path | None = None  # its copy in the spool, once written
        self._task: asyncio.Task[None] | None = None
        self._disk_work: set[asyncio.Future[Any]] = set()
        self._disk_failing = False

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
        """Queue a batch for the sink. Never blocks, never touches the disk: the worker
        spools what waits too long."""
        batch = batch.only(self.sink.kinds)
        if batch:
            self.outbox.append((monotonic(), batch))
            self.wake.set()

    def stalled(self) -> bool:
        """Whether a batch has been waiting for the sink's answer longer than ``ack_bound``."""
        return self._sending is not None and monotonic() - self._sending_since > self.ack_bound

    def health(self) -> dict[str, object]:
        stalled = self.stalled()
        last_error = self.last_error
        if stalled:
            waited = monotonic() - self._sending_since
            last_error = (f"no answer from the sink for {waited:.1f} s", time.time())
        return {
            "sink": self.name,
            "healthy": self.down_since is None and not stalled and not self._disk_failing,
            "down_since": iso(self.down_since) if self.down_since is not None else None,
            "last_error": shown_error(last_error),
            "previous_error": shown_error(self.previous_error),
            "outbox_batches": len(self.outbox) + (self._sending is not None),
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
        await asyncio.gather(*self._disk_work, return_exceptions=True)
        if self._sending is not None and self._sending_spooled is None:
            self.outbox.appendleft((0.0, self._sending))
        self._sending = None
        leftovers = len(self.outbox)
        await self._spool_waiting(everything=True)
        if leftovers:
            log.warning("events_spooled_at_stop", sink=self.name, batches=leftovers)
        if self.outbox:  # the disk would not take them either: said, counted, gone
            self._drop_oldest(len(self.outbox), "the disk refused them at stop")
        try:
            await self.sink.close()
        except DeliveryError as error:
            self._note_error(f"closing the sink: {error}")
            log.error("events_sink_close_failed", sink=self.name, error=redact(str(error)))

    async def _run(self) -> None:
        pause = 1.0
        while True:
            try:
                if await self._step():
                    pause = 1.0
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of flagpost's own: logged, and the worker goes on
                log.exception("events_worker_failed", sink=self.name)
            await self._wait_while_down(pause)
            pause = min(pause * 2, LONGEST_PAUSE)

    async def _step(self) -> bool:
        """Deliver one batch, from the spool first; whether to go straight on (False: the
        sink or the disk is failing, so pause first)."""
        if len(self.spool):
            return await self._deliver_spooled()
        if not self.outbox:
            self.wake.clear()
            await self.wake.wait()
            return True
        since, batch = self.outbox.popleft()
        self._sending, self._sending_since, self._sending_spooled = batch, since, None
        try:
            outcome = await self._deliver_watched(batch)
        except asyncio.CancelledError:
            raise  # stopping: drain() finds the batch in self._sending
        except Exception:
            if self._sending_spooled is None:
                self.outbox.appendleft((since, batch))  # a bug must not lose it either
            self._sending = None
            raise
        spooled, self._sending = self._sending_spooled, None
        if outcome == "delivered":
            if spooled is not None:
                await self._on_disk(self.spool.remove, spooled)
                self._gauge()
            return True
        if outcome == "rejected":
            if spooled is not None:
                await self._on_disk(self.spool.remove, spooled, aside="rejected")
            else:
                await self._keep_rejected(batch)
            return True
        if spooled is None:  # the sink is down: to the spool with it, or back to the front
            self.outbox.appendleft((since, batch))
        return False

    async def _deliver_spooled(self) -> bool:
        try:
            head = await self._on_disk(self.spool.head)
        except OSError as error:
            self._disk_error("reading the spool", error)
            return False
        if head is None:
            return True
        path, batch = head
        if batch is None:
            log.error("events_spool_unreadable", sink=self.name, file=str(path))
            await self._on_disk(self.spool.remove, path, aside="unreadable")
            return True
        outcome = await self._deliver(batch)
        if outcome is None:
            return False
        aside = "rejected" if outcome == "rejected" else None
        await self._on_disk(self.spool.remove, path, aside=aside)
        self._gauge()
        return True

    async def _deliver_watched(self, batch: Batch) -> str | None:
        """``_deliver``, spooling what waits too long (this batch, those behind it) meanwhile."""
        sending = asyncio.ensure_future(self._deliver(batch))
        try:
            while not sending.done():
                overdue = self._sending_since + self.ack_bound - monotonic()
                await asyncio.wait({sending}, timeout=max(overdue, self.ack_bound / 4))
                if not sending.done():
                    await self._spool_waiting()
        finally:
            if not sending.done():  # cancelled (stopping): the send ends with the worker
                sending.cancel()
        return sending.result()

    async def _spool_waiting(self, *, everything: bool = False) -> None:
        """Write to the spool what has waited ``ack_bound`` or more (``everything``: all),
        in order: the batch being sent first, then the outbox."""
        now = monotonic()
        if (
            self._sending is not None
            and self._sending_spooled is None
            and now - self._sending_since >= self.ack_bound
        ):
            path = await self._spool(self._sending, in_flight=True)
            if path is None:
                return
            if isinstance(path, Path):  # a full spool leaves it to its send: if the sink is
                self._sending_spooled = path  # down, it comes back to the outbox, dropped there
        while self.outbox and (everything or now - self.outbox[0][0] >= self.ack_bound):
            if await self._spool(self.outbox[0][1]) is None:
                return
            self.outbox.popleft()

    async def _spool(self, batch: Batch, *, in_flight: bool = False) -> Path | str | None:
        """Write ``batch`` to the spool; its path, or None if the disk failed (the batch
        stays where it is, and is tried again), or ``FULL`` past the spool's cap: then a
        waiting batch is dropped, counted and logged, and one being sent is left alone."""
        try:
            path = await self._on_disk(self.spool.append, batch)
        except OSError as error:
            self._disk_error("writing the spool", error)
            self._limit_memory()
            return None
        if self._disk_failing:
            self._disk_failing = False
            self._error_ended()
            log.info("events_disk_recovered", sink=self.name)
        if path is None:
            if in_flight:
                return FULL
            EventStats.count(self.stats.dropped, batch, self.name)
            log.error(
                "events_dropped_spool_full",
                sink=self.name,
                events=len(batch),
                spool_bytes=self.spool.bytes,
                max_bytes=self.spool.max_bytes,
            )
            return FULL
        EventStats.count(self.stats.spooled, batch, self.name)
        self._gauge()
        return path

    async def _keep_rejected(self, batch: Batch) -> None:
        try:
            await self._on_disk(self.spool.reject, batch)
        except OSError as error:
            self._disk_error("keeping a rejected batch", error)

    async def _wait_while_down(self, pause: float) -> None:
        """Sleep ``pause`` seconds, spooling what waits too long meanwhile."""
        deadline = monotonic() + pause
        while (remaining := deadline - monotonic()) > 0:
            await self._spool_waiting()
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, self.ack_bound / 2)):
                    await self.wake.wait()
        await self._spool_waiting()

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
            except Rejected as error:  # the collector refused it: kept aside, counted, logged
                self._note_error(str(error))
                EventStats.count(self.stats.rejected, batch, self.name)
                log.error("events_rejected", sink=self.name, events=len(batch), error=str(error))
                return "rejected"
            except Exception as error:  # down, or a bug of flagpost's own: retried either way
                if not isinstance(error, DeliveryError):
                    log.exception("events_send_failed", sink=self.name)
                self._note_error(str(error))
                retry_after = getattr(error, "retry_after", None)
                wait = random.uniform(0, delay) if retry_after is None else retry_after
                delay = min(delay * 2, LONGEST_RETRY)
                if monotonic() + wait > deadline:
                    if self.down_since is None:
                        self.down_since = time.time()
                        log.warning("events_sink_down", sink=self.name, error=redact(str(error)))
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
        self._disk_failing = False  # what waited for the disk has gone where it belongs
        self._error_ended()
        return "delivered"

    async def _on_disk(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a spool operation in a thread, to its end even if this worker is cancelled:
        a batch half handed to the spool must not be lost to a shutdown."""
        work = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
        self._disk_work.add(work)
        work.add_done_callback(self._disk_work.discard)
        return await asyncio.shield(work)

    def _note_error(self, message: str) -> None:
        self.last_error = (redact(message), time.time())

    def _error_ended(self) -> None:
        if self.last_error is not None:
            self.previous_error, self.last_error = self.last_error, None

    def _disk_error(self, doing: str, error: OSError) -> None:
        self.stats.io_errors.labels(self.name).inc()
        self._note_error(f"{doing}: {error}")
        if not self._disk_failing:  # logged when it starts, and when it ends
            self._disk_failing = True
            log.error("events_disk_failed", sink=self.name, doing=doing, error=str(error))

    def _limit_memory(self) -> None:
        """Past ``memory_events`` events held in memory while the disk refuses them, drop
        the oldest: said and counted, never silent."""
        held = sum(len(batch) for _, batch in self.outbox)
        over = 0
        for _, batch in self.outbox:
            if held <= self.memory_events:
                break
            held -= len(batch)
            over += 1
        if over:
            self._drop_oldest(over, f"{self.memory_events} events wait in memory, none on disk")

    def _drop_oldest(self, batches: int, why: str) -> None:
        events = 0
        for _ in range(batches):
            _, batch = self.outbox.popleft()
            events += len(batch)
            EventStats.count(self.stats.dropped, batch, self.name)
        log.error("events_dropped", sink=self.name, events=events, why=why)

    def _gauge(self) -> None:
        self.stats.spool_batches.labels(self.name).set(len(self.spool))
        self.stats.spool_bytes.labels(self.name).set(self.spool.bytes)
