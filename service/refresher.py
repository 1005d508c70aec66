"""Keeping the rules fresh: on a timer with jitter, on a webhook's word, with backoff on failure.

A new document is decoded, validated and compiled on the event loop in small steps (a
10,000-flag document takes about a second), handing the loop back about every
millisecond so requests keep being answered, then swapped in whole. The ruleset it replaces
is taken apart the same way once nothing uses it: freed at once, a large one would hold the
loop for tens of milliseconds. A worker thread would not do: it holds the GIL for as long as
it likes, and decisions would wait on it. Whatever goes wrong, the last good ruleset keeps
being served: the failure is logged, counted, shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import sys
from collections.abc import Callable
from time import perf_counter
from typing import TypeVar

import rules
from service import heap
from service.logs import get_logger
from service.sharing import SLICE_SECONDS, give_way
from service.sources import RulesSource, SourceError
from service.store import DiskCache, RulesStore

__all__ = ["Refresher"]

log = get_logger(__name__)

#: After a webhook wakes the refresher, how long it waits for the rest of a burst.
DEBOUNCE_SECONDS = 0.05
#: The first retry after a failure; each further failure doubles it, up to the interval.
FIRST_RETRY_SECONDS = 1.0
#: The most errors of an invalid document that are logged and shown.
SHOWN_PROBLEMS = 5
T = TypeVar("T")


class Refresher:
    """Fetches, validates and swaps in the rules; one per running service."""

    def __init__(
        self,
        source: RulesSource,
        store: RulesStore,
        cache: DiskCache,
        *,
        interval: float,
        max_flags: int | None = None,
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.source = source
        self.store = store
        self.cache = cache
        self.interval = interval
        self.max_flags = max_flags
        self._on_result = on_result  # told "updated", "unchanged" or "failed" (metrics)
        self._wake = asyncio.Event()
        self._failures_in_a_row = 0

    def trigger(self) -> None:
        """Refresh soon; any number of calls before the refresh starts cause one fetch."""
        self._wake.set()

    async def start(self) -> None:
        """Load the rules once before serving; fall back to the disk cache if that fails."""
        await self.refresh()
        if self.store.current is None:
            data = await self.cache.load()
            if data is not None:
                await self._install(data, origin="cache")

    async def run(self) -> None:
        """Refresh forever: each interval (with jitter), sooner when triggered."""
        while True:
            # asyncio.timeout, not wait_for: on 3.11, cancelling a wait_for whose inner wait
            # has just been woken can leave the cancel hanging (and the shutdown with it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_delay()):
                    await self._wake.wait()
                await asyncio.sleep(DEBOUNCE_SECONDS)  # let the rest of a webhook burst arrive
            self._wake.clear()
            await self.refresh()

    def _next_delay(self) -> float:
        if self._failures_in_a_row:
            delay = min(self.interval, FIRST_RETRY_SECONDS * 2 ** (self._failures_in_a_row - 1))
            return float(delay * random.uniform(0.8, 1.2))
        base = min(self.interval, self.source.poll_interval or self.interval)
        return base * random.uniform(0.9, 1.1)

    async def refresh(self) -> str:
        """Fetch once; returns "updated", "unchanged" or "failed"."""
        try:
            data = await self.source.fetch()
            if data is None:
                result = "unchanged"
                self._succeeded(changed=False)
            else:
                await self._install(data, origin="source")  # the success is noted at the swap
                await self._save(data)
                result = "updated"
        except (SourceError, rules.InvalidRuleset) as error:
            result = "failed"
            self._fail(_describe(error))
        except Exception as error:  # a bug must not stop refreshing or take down serving
            result = "failed"
            log.exception("refresh_crashed")
            self._fail(f"internal error: {type(error).__name__}")
        self._on_result(result)
        return result

    def _succeeded(self, *, changed: bool) -> None:
        self._failures_in_a_row = 0
        self.store.record_success(changed=changed)

    async def _install(self, data: bytes, origin: str) -> None:
        ruleset = await load_cooperatively(data, self.max_flags)
        previous = self.store.current
        self.store.swap(ruleset, origin)
        if origin == "source":  # in the same step as the swap: /v1/config never shows the
            self._succeeded(changed=True)  # new revision beside the error it ended
        log.info(
            "rules_loaded",
            revision=ruleset.revision,
            flags=len(ruleset.flag_keys),
            origin=origin,
            previous=previous.ruleset.revision if previous else None,
        )
        if previous is not None:
            replaced = [previous.ruleset]
            del previous  # the only references left are ours, unless a request still has one
            await release_cooperatively(replaced)

    async def _save(self, data: bytes) -> None:
        try:
            await self.cache.save(data)
        except OSError as error:  # serving goes on; only a cold restart loses the fallback
            log.warning("rules_cache_write_failed", path=str(self.cache.path), error=str(error))

    def _fail(self, message: str) -> None:
        self._failures_in_a_row += 1
        self.store.record_failure(message)
        log.warning(
            "rules_refresh_failed",
            source=self.store.source,
            error=message,
            serving=self.store.current.ruleset.revision if self.store.current else None,
            failures_in_a_row=self._failures_in_a_row,
        )


async def load_cooperatively(data: bytes, max_flags: int | None = None) -> rules.Ruleset:
    """``rules.load``, yielding to the event loop every ``SLICE_SECONDS`` (the longest single
    step of a 10,000-flag load measured under 2 ms).

    The cyclic garbage collector's own runs are paused meanwhile: building a ruleset makes
    hundreds of thousands of objects, which would set off full collections of the whole heap,
    each a pause of a hundred milliseconds or more. Instead each slice's objects are swept
    and frozen as they are built (``service.heap``), the garbage left before the load first.
    """
    heap.sweep()
    collecting = gc.isenabled()
    gc.disable()
    try:
        steps = rules.load_steps(data, max_flags=max_flags)
        return await run_cooperatively(steps, between_slices=heap.keep_built)
    finally:
        if collecting:
            gc.enable()


async def release_cooperatively(holder: list[rules.Ruleset]) -> bool:
    """Take apart the ruleset ``holder`` alone refers to (it is emptied), in steps; whether
    it was. One still referred to elsewhere, say by a request that has yet to finish with it,
    is left to reference counting, which frees it in one piece once that is done."""
    ruleset = holder.pop()
    await asyncio.sleep(0)  # requests that read the old snapshot finish first
    if sys.getrefcount(ruleset) > 2:  # this name, and getrefcount's own argument
        return False
    await run_cooperatively(ruleset.release_steps())
    await give_way()
    heap.give_back()
    return True


async def run_cooperatively(
    steps: rules.steps.Steps[T], between_slices: Callable[[], None] | None = None
) -> T:
    """Run ``steps`` to the end, handing the loop back every ``SLICE_SECONDS``; call
    ``between_slices`` after each slice, the last one too, in a turn of its own (it takes
    up to a couple of milliseconds: a slice and it together would be a stall of three)."""
    deadline = perf_counter() + SLICE_SECONDS
    while True:
        try:
            next(steps)
        except StopIteration as done:
            if between_slices is not None:
                await give_way()
                between_slices()
            result: T = done.value
            return result
        if perf_counter() >= deadline:
            await give_way()
            if between_slices is not None:
                between_slices()
                await give_way()
            deadline = perf_counter() + SLICE_SECONDS


def _describe(error: Exception) -> str:
    if isinstance(error, rules.InvalidRuleset):
        shown = "; ".join(map(str, error.errors[:SHOWN_PROBLEMS]))
        more = len(error.errors) - SHOWN_PROBLEMS
        return f"invalid rules: {shown}" + (f" (and {more} more)" if more > 0 else "")
    return str(error)
