"""Visitor records in Redis, shared by every worker and replica (redis-py's asyncio client).

Keys, each expiring after the retention (refreshed on every write)::

    flagpost:visitor:r:{id}    the record (JSON)
    flagpost:visitor:a:{id}    its targeting attributes (JSON): what decisions read
    flagpost:visitor:l:{code}  the user id a visitor code links to

A decision reads in one round trip (a Lua script resolves the link and returns the
attributes), shared with the other decisions of the same turn of the event loop: their reads
go out together as one script call, which under load costs each far less than a call of its
own (the client's work per command, not Redis's, is most of it). Each read is bounded by
``read_timeout``: a store that is slow or down answers "no data",
counted in ``read_errors``, and for ``BACKOFF`` seconds after a failure decisions do not wait
for it at all. A write watches what it reads and commits in one MULTI/EXEC, retried (after a
short random pause) when another process changed those keys in between: it is applied wholly
or not at all. Within one process, writes to one visitor wait for each other rather than collide.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final
from weakref import WeakValueDictionary

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from service.redaction import public_url
from service.visitors.changes import KEEP, Change, Write
from service.visitors.records import UNTIL, Record, attributes_of, targeting
from service.visitors.stores import Profile, StoreUnavailable, now_ms, profile_of

__all__ = ["BACKOFF", "RedisVisitors"]

PREFIX: Final = "flagpost:visitor:"
RECORD: Final = PREFIX + "r:"
ATTRIBUTES: Final = PREFIX + "a:"
LINK: Final = PREFIX + "l:"
RECENT: Final = PREFIX + "x:"
#: Recent assignments kept per visitor (the newest).
KEPT_RECENT: Final = 50
#: Seconds during which decisions skip a store that just failed (then one tries again).
BACKOFF: Final = 1.0
#: Times a write is retried when other processes keep changing the same visitor.
ATTEMPTS: Final = 20

#: For each code in ARGV (after the two prefixes): the id it resolves to (through its link,
#: if any) and that id's attributes (false when there are none).
_READ: Final = """
local found = {}
for index = 3, #ARGV do
  local code = ARGV[index]
  local id = redis.call('GET', ARGV[1] .. code) or code
  found[#found + 1] = id
  found[#found + 1] = redis.call('GET', ARGV[2] .. id) or false
end
return found
"""


class RedisVisitors:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        retention: float,
        read_timeout: float,
        write_timeout: float,
    ) -> None:
        self.url = url
        self.ttl = int(ttl * 1000)
        self.retention = int(max(retention, ttl) * 1000)
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.read_errors = 0
        self.write_errors = 0
        self._down_until = 0.0
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=write_timeout,
            socket_timeout=write_timeout,
            health_check_interval=30,
        )
        self._read = self.client.register_script(_READ)
        #: Reads of this turn of the loop, by visitor code, waiting to be sent together.
        self._waiting: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._batch_due = False
        self._batches: set[asyncio.Task[None]] = set()
        #: Per visitor code, the lock this process's writes take turns on; held only as long
        #: as a write holds or awaits it.
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    def health(self) -> dict[str, Any]:
        return {
            "store": self.kind,
            "url": public_url(self.url),
            "read_errors": self.read_errors,
            "write_errors": self.write_errors,
        }

    async def start(self) -> None:
        """Nothing to do: the client connects on first use and reconnects by itself (a
        replica must start, and answer decisions, while Redis is still coming up)."""

    async def close(self) -> None:
        await self.client.aclose()

    async def attributes(self, code: str) -> Mapping[str, Any] | None:
        if self._down_until and time.monotonic() < self._down_until:
            self.read_errors += 1
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.setdefault(code, []).append(waiter)
        if not self._batch_due:  # the first read of this turn sends them all, after it
            self._batch_due = True
            loop.call_soon(self._send_reads)
        try:
            async with asyncio.timeout(self.read_timeout):
                raw = await waiter
        except (RedisError, OSError, TimeoutError):
            self.read_errors += 1
            self._down_until = time.monotonic() + BACKOFF
            return None
        self._down_until = 0.0
        if raw is None:
            return None
        stored: dict[str, Any] = orjson.loads(raw)
        return stored if now_ms() < stored[UNTIL] else targeting(stored, now_ms())

    def _send_reads(self) -> None:
        self._batch_due = False
        waiting, self._waiting = self._waiting, {}
        task = asyncio.create_task(self._read_batch(waiting))
        self._batches.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._batches.discard)

    async def _read_batch(self, waiting: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        codes = list(waiting)
        try:
            answer = await self._read(keys=[], args=[LINK, ATTRIBUTES, *codes])
        except (RedisError, OSError) as error:
            for waiters in waiting.values():
                for waiter in waiters:
                    if not waiter.done():  # (one that timed out is cancelled already)
                        waiter.set_exception(error)
            return
        for code, raw in zip(codes, answer[1::2], strict=True):
            for waiter in waiting[code]:
                if not waiter.done():
                    waiter.set_result(raw or None)

    async def profiles(self, codes: Iterable[str]) -> dict[str, Profile]:
        wanted = list(codes)
        if not wanted:
            return {}
        try:
            async with asyncio.timeout(self.write_timeout):
                answer = await self._read(keys=[], args=[LINK, ATTRIBUTES, *wanted])
        except (RedisError, OSError, TimeoutError) as error:
            self.read_errors += 1
            raise StoreUnavailable(_why(error)) from None
        now = now_ms()
        found = {}
        for code, identity, raw in zip(wanted, answer[::2], answer[1::2], strict=True):
            if raw:
                found[code] = profile_of(code, _text(identity) or code, orjson.loads(raw), now)
        return found

    def local_profiles(self, codes: Iterable[str]) -> dict[str, Profile] | None:
        return None  # everything is in Redis

    def holds_visitors(self) -> bool:
        return True  # (only Redis knows)

    def sweep(self) -> int:
        return 0  # Redis expires the keys itself

    async def add_recent(self, notes: list[tuple[str, Any]], window: float) -> None:
        try:
            async with asyncio.timeout(self.write_timeout):
                pipe = self.client.pipeline(transaction=False)
                for visitor, noted in notes:
                    pipe.rpush(RECENT + visitor, orjson.dumps(noted))
                for visitor in {visitor for visitor, _ in notes}:
                    pipe.ltrim(RECENT + visitor, -KEPT_RECENT, -1)
                    pipe.pexpire(RECENT + visitor, int(window * 1000))
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as error:
            self.write_errors += 1
            raise StoreUnavailable(_why(error)) from None

    async def recent(self, code: str) -> list[Any]:
        try:
            async with asyncio.timeout(self.write_timeout):
                raws = await self.client.lrange(RECENT + code, 0, -1)
        except (RedisError, OSError, TimeoutError) as error:
            self.read_errors += 1
            raise StoreUnavailable(_why(error)) from None
        return [tuple(orjson.loads(raw)) for raw in raws]

    async def read(self, code: str) -> tuple[str, str | None, Record | None]:
        try:
            async with asyncio.timeout(self.write_timeout):
                link = _text(await self.client.get(LINK + code))
                raw = await self.client.get(RECORD + (link or code))
        except (RedisError, OSError, TimeoutError) as error:
            raise StoreUnavailable(_why(error)) from None
        return code, link, orjson.loads(raw) if raw else None

    async def write(self, code: str, write: Write) -> Change:
        lock = self._locks.get(code)
        if lock is None:
            lock = self._locks[code] = asyncio.Lock()
        try:
            async with asyncio.timeout(self.write_timeout), lock:
                return await self._write(code, write)
        except (RedisError, OSError, TimeoutError) as error:
            self.write_errors += 1
            raise StoreUnavailable(_why(error)) from None

    async def _write(self, code: str, write: Write) -> Change:
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(ATTEMPTS):
                try:
                    await pipe.watch(LINK + code)
                    link = _text(await pipe.get(LINK + code))
                    needed = write.needed(code, link)
                    keys = [RECORD + identity for identity in needed]
                    await pipe.watch(*keys)
                    raws = await pipe.mget(keys)
                    records = {
                        identity: orjson.loads(raw) if raw else None
                        for identity, raw in zip(needed, raws, strict=True)
                    }
                    now = now_ms()
                    change = write.apply(code, link, records, now, self.ttl)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._queue(pipe, code, change)
                    await pipe.execute()
                    return change
                except WatchError:
                    await asyncio.sleep(random.uniform(0, 0.005))  # out of step with the other
                    continue
        raise StoreUnavailable("the visitor changed too often to be written; try again")

    def _queue(self, pipe: Any, code: str, change: Change) -> None:
        retention = self.retention
        for identity, record in change.records.items():
            if record is None:
                pipe.delete(RECORD + identity, ATTRIBUTES + identity)
            else:
                pipe.set(RECORD + identity, orjson.dumps(record), px=retention)
                attributes = orjson.dumps(attributes_of(record, self.ttl))
                pipe.set(ATTRIBUTES + identity, attributes, px=retention)
        if change.link is None:
            pipe.delete(LINK + code)
        elif change.link is not KEEP:
            pipe.set(LINK + code, str(change.link), px=retention)


def _text(raw: bytes | str | None) -> str | None:
    """A stored text as ``str`` (the client answers bytes)."""
    return raw.decode() if isinstance(raw, bytes) else raw


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "it did not answer in time"
    return type(error).__name__
