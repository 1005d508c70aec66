"""Where visitor data lives: the ``VisitorStore`` interface and the in-memory store.

``attributes`` is what decisions call (never raises: a store that cannot answer in time
answers "no data" and counts it); the writes raise ``StoreUnavailable`` (503) when the
store cannot take them, with nothing half-written. ``service.visitors.redis_store`` is the
shared implementation.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.errors import ApiError
from service.visitors.changes import KEEP, Change, Write
from service.visitors.records import (
    CONSENT,
    UNTIL,
    Record,
    attributes_of,
    recorded,
    targeting,
)

__all__ = [
    "MemoryVisitors",
    "Profile",
    "StoreUnavailable",
    "VisitorStore",
    "VisitorStoreCollector",
    "now_ms",
]


class StoreUnavailable(ApiError):
    """The visitor store did not take a write (503 STORE_UNAVAILABLE)."""

    def __init__(self, why: str) -> None:
        super().__init__(503, "STORE_UNAVAILABLE", f"the visitor store is unavailable: {why}")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Profile:
    """What the events pipeline needs of a stored visitor: who they are (the user id their
    code links to), whether they consented, the user agent stored for them, and the stored
    attributes their decision records carry."""

    user_id: str | None
    consent: bool | None
    user_agent: str | None
    attributes: Mapping[str, Any]


def profile_of(code: str, identity: str, stored: Mapping[str, Any], now: int) -> Profile:
    return Profile(
        identity if identity != code else None,
        stored.get(CONSENT),
        stored.get("visitor.user_agent"),
        recorded(stored, now),
    )


class VisitorStore(Protocol):
    """Visitor records keyed by visitor code; a code may link to a signed-in user's record."""

    #: ``memory`` or ``redis``: what ``/v1/config`` and the metrics show.
    kind: str
    #: Reads that failed or timed out (answered as "no data").
    read_errors: int
    #: Writes that failed or timed out (answered 503).
    write_errors: int

    def health(self) -> dict[str, Any]:
        """What ``/v1/config`` shows of the store."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def attributes(self, code: str) -> Mapping[str, Any] | None:
        """The targeting attributes a decision for ``code`` sees now (None: no data)."""
        ...

    async def profiles(self, codes: Iterable[str]) -> dict[str, Profile]:
        """The profiles of those of ``codes`` that have a record (one round trip); raises
        ``StoreUnavailable`` when the store cannot answer."""
        ...

    def local_profiles(self, codes: Iterable[str]) -> dict[str, Profile] | None:
        """``profiles`` without I/O, or None when this store cannot answer so."""
        ...

    def holds_visitors(self) -> bool:
        """False only when the store certainly holds no visitor (no profile to look up)."""
        ...

    def sweep(self) -> int:
        """Forget some of what has expired (a bounded amount: called every second on the
        loop); how many entries went."""
        ...

    async def add_recent(self, notes: list[tuple[str, Any]], window: float) -> None:
        """Share recent experiment assignments (visitor, JSON-able note) for ``window`` s."""
        ...

    async def recent(self, code: str) -> list[Any]:
        """The shared recent assignments of ``code`` (tuples), oldest first."""
        ...

    async def read(self, code: str) -> tuple[str, str | None, Record | None]:
        """(the code, the user id it links to or None, the record it resolves to or None)."""
        ...

    async def write(self, code: str, write: Write) -> Change:
        """Apply ``write`` to ``code``'s records, wholly or not at all."""
        ...


#: Expired entries the memory store drops per sweep (a few hundred microseconds of work).
SWEPT = 1000


class MemoryVisitors:
    """One process's visitor records, bounded: the least recently active is evicted.

    A record is kept zlib-compressed (it is read back only by the data routes and flushes),
    its attributes as a dict ready to merge into a decision's context.
    """

    kind = "memory"

    def __init__(self, *, ttl: float, retention: float, limit: int) -> None:
        self.ttl = int(ttl * 1000)
        self.retention = int(max(retention, ttl) * 1000)
        self.limit = limit
        #: id -> (compressed record, attributes, expiry in ms)
        self.entries: OrderedDict[str, tuple[bytes, dict[str, Any], int]] = OrderedDict()
        #: visitor code -> (user id, expiry in ms)
        self.links: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.read_errors = 0
        self.write_errors = 0
        self.evicted = 0

    def health(self) -> dict[str, Any]:
        return {
            "store": self.kind,
            "visitors": len(self.entries),
            "limit": self.limit,
            "evicted": self.evicted,
        }

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _link(self, code: str, now: float) -> str | None:
        found = self.links.get(code)
        if found is None:
            return None
        if found[1] <= now:
            del self.links[code]
            return None
        return found[0]

    def _entry(self, identity: str, now: int) -> tuple[bytes, dict[str, Any], int] | None:
        entry = self.entries.get(identity)
        if entry is not None and entry[2] <= now:
            del self.entries[identity]
            return None
        return entry

    async def attributes(self, code: str) -> Mapping[str, Any] | None:
        now = time.time() * 1000  # (not now_ms(): a decision need not pay for int())
        links = self.links
        identity = code if not links or code not in links else self._link(code, now) or code
        entry = self.entries.get(identity)
        if entry is None or entry[2] <= now:
            return None
        self.entries.move_to_end(identity)  # a decision is activity too
        stored = entry[1]
        # While the visit lasts (the common case) the stored dict is answered as it is: the
        # caller merges it into a new context and never changes it.
        return stored if now < stored[UNTIL] else targeting(stored, int(now))

    async def profiles(self, codes: Iterable[str]) -> dict[str, Profile]:
        return self.local_profiles(codes)

    def holds_visitors(self) -> bool:
        return bool(self.entries)  # (a link without a record has no profile either)

    def sweep(self) -> int:
        """Drop expired entries and links from the least recently active end, at most
        ``SWEPT`` a call. (Those a decision read since, moved to the other end, go when next
        asked for, or when the limit evicts them.)"""
        now = time.time() * 1000
        swept = 0
        while self.entries and swept < SWEPT:
            identity, entry = next(iter(self.entries.items()))
            if entry[2] > now:
                break
            del self.entries[identity]
            swept += 1
        while self.links and swept < SWEPT:
            code, (_, until) = next(iter(self.links.items()))
            if until > now:
                break
            del self.links[code]
            swept += 1
        return swept

    def local_profiles(self, codes: Iterable[str]) -> dict[str, Profile]:
        now = now_ms()
        found = {}
        for code in codes:
            identity = self._link(code, now) or code
            entry = self._entry(identity, now)
            if entry is not None:
                found[code] = profile_of(code, identity, entry[1], now)
        return found

    async def add_recent(self, notes: list[tuple[str, Any]], window: float) -> None:
        return None  # one process: its own notes are all there is

    async def recent(self, code: str) -> list[Any]:
        return []

    async def read(self, code: str) -> tuple[str, str | None, Record | None]:
        now = now_ms()
        link = self._link(code, now)
        entry = self._entry(link or code, now)
        record = orjson.loads(zlib.decompress(entry[0])) if entry is not None else None
        return code, link, record

    async def write(self, code: str, write: Write) -> Change:
        now = now_ms()
        link = self._link(code, now)
        records: dict[str, Record | None] = {}
        for identity in write.needed(code, link):
            entry = self._entry(identity, now)
            records[identity] = orjson.loads(zlib.decompress(entry[0])) if entry else None
        change = write.apply(code, link, records, now, self.ttl)
        for identity, record in change.records.items():
            if record is None:
                self.entries.pop(identity, None)
            else:
                packed = zlib.compress(orjson.dumps(record))
                attributes = attributes_of(record, self.ttl)
                self.entries[identity] = (packed, attributes, now + self.retention)
                self.entries.move_to_end(identity)
        if change.link is None:
            self.links.pop(code, None)
        elif change.link is not KEEP:
            self.links[code] = (str(change.link), now + self.retention)
            self.links.move_to_end(code)
        self._evict()
        return change

    def _evict(self) -> None:
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)
            self.evicted += 1
        while len(self.links) > self.limit:
            self.links.popitem(last=False)


class VisitorStoreCollector(Collector):
    """The store's error counts (and, in memory, its size) as metrics, read when scraped."""

    def __init__(self, store: VisitorStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "flagpost_visitor_store_errors",
            "Visitor store operations that failed or timed out: reads (decided without the "
            "data) and writes (answered 503).",
            labels=["store", "operation"],
        )
        errors.add_metric([self.store.kind, "read"], self.store.read_errors)
        errors.add_metric([self.store.kind, "write"], self.store.write_errors)
        yield errors
        if isinstance(self.store, MemoryVisitors):
            yield GaugeMetricFamily(
                "flagpost_visitors_stored",
                "Visitors the memory store holds.",
                len(self.store.entries),
            )
