"""The hot path of event recording: a bounded in-memory queue and the recorder that fills it.

Nothing here awaits or does I/O. Recording an exposure is a session lookup, a membership test
and a list append; the record itself is built later by the flusher. What is queued holds no
object the cyclic collector tracks (``records.Exposure``): a context with nested attributes
(a dict the collector tracks) is queued as its JSON, 0.3 µs, so a backlog of a hundred
thousand exposures adds nothing to the collector's full passes (it added 20 to 40 ms each).
The exposures one request makes of one visitor are queued as one item; the queue counts
events, not items. When the
queue reaches its capacity (the flusher is starved), its content is handed synchronously to
``on_full``, which spills it to the spools instead of blocking or dropping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from gc import is_tracked
from time import time
from typing import Any

import orjson

from rules import Decision
from service.events.records import Item
from service.events.sessions import SHARDS, Sessions

__all__ = ["EventQueue", "Item", "Recorder"]


class EventQueue:
    """Items waiting for the flusher; it is woken when a batch's worth of events is queued."""

    def __init__(
        self, batch_size: int, capacity: int, on_full: Callable[[list[Item], int], None]
    ) -> None:
        self.items: list[Item] = []
        self.events = 0
        self.batch_size = batch_size
        self.capacity = max(capacity, batch_size)
        self.on_full = on_full
        self.wake = asyncio.Event()

    def put(self, item: Item, events: int = 1) -> None:
        """Queue an item that stands for ``events`` events."""
        self.items.append(item)
        self.events += events
        if self.events >= self.batch_size:
            self.filled()

    def filled(self) -> None:
        """A batch's worth is queued: wake the flusher, or hand everything over at capacity."""
        if self.events >= self.capacity:
            self.on_full(*self.take())
        else:
            self.wake.set()

    def take(self) -> tuple[list[Item], int]:
        """Everything queued and how many events it is, leaving the queue empty."""
        items, events = self.items, self.events
        self.items, self.events = [], 0
        return items, events

    def __len__(self) -> int:
        """How many events are queued."""
        return self.events


class Recorder:
    """Turns decisions into queued exposures, once per session for each flag, rule and
    variation. It takes plain values (no request): the pipeline runs without HTTP."""

    def __init__(self, queue: EventQueue, sessions: Sessions) -> None:
        self.queue = queue
        self.sessions = sessions
        #: Exposures not queued because the session had already recorded them.
        self.repeated = 0

    def expose(
        self,
        visitor: str,
        decision: Decision,
        context: Mapping[str, Any],
        user_agent: str | None,
        referer: str | None,
        revision: str,
    ) -> None:
        """Record that ``visitor`` was shown ``decision`` (it has a rule: callers check)."""
        now = time()
        sessions = self.sessions
        shard = sessions.shards[hash(visitor) & (SHARDS - 1)]
        if visitor not in shard and len(shard) < sessions.shard_limit:
            # A visitor with no session, the commonest case where a flag is asked once per
            # visit: what Sessions.expose does for one, inlined, as a call is a tenth of the
            # cost (a test holds the two to the same session).
            number = next(sessions.numbers)
            shard[visitor] = (number, now + sessions.ttl, decision.outcome)
        else:
            found = sessions.expose(visitor, now, decision.outcome, shard)
            if found is None:
                self.repeated += 1
                return
            number = found
        # EventQueue.put, inlined for the same reason.
        queue = self.queue
        if is_tracked(context):  # nested attributes: queued as JSON, out of the collector's way
            context = orjson.dumps(context)  # type: ignore[assignment]
        item = (now, visitor, number, decision.outcome, context, user_agent, referer, revision)
        queue.items.append(item)
        queue.events += 1
        if queue.events >= queue.batch_size:
            queue.filled()

    def expose_all(
        self,
        visitor: str,
        decisions: Iterable[Decision],
        context: Mapping[str, Any],
        user_agent: str | None,
        referer: str | None,
        revision: str,
    ) -> None:
        """``expose`` for many decisions of one visitor; those without a rule are skipped."""
        now = time()
        number, fresh, repeated = self.sessions.expose_all(visitor, now, decisions)
        self.repeated += repeated
        if fresh:
            if is_tracked(context):
                context = orjson.dumps(context)  # type: ignore[assignment]
            item = (now, visitor, number, fresh, context, user_agent, referer, revision)
            self.queue.put(item, len(fresh))
