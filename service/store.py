"""The ruleset being served, swapped atomically, with its status and change subscribers.

A request reads ``store.current`` once and uses that snapshot from start to end, so a swap
in the middle of a request never mixes two rulesets. Swapping is one attribute assignment.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rules
from service.errors import ApiError
from service.instants import iso, shown_error
from service.redaction import redact

__all__ = ["DROPPED", "DiskCache", "RulesStore", "Snapshot"]

#: Change events a subscriber may fall behind by before it is dropped.
SUBSCRIBER_BACKLOG = 16
#: The last event a dropped subscriber receives.
DROPPED: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded ruleset and where and when it came from."""

    ruleset: rules.Ruleset
    loaded_at: float
    origin: str  # "source" or "cache"
    #: Serialized decisions, by ``Decision.fingerprint``; lives with the ruleset.
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False)
    #: The same as ``"flag":{decision}`` object members, for responses over many flags.
    members: dict[str, bytes] = field(default_factory=dict, compare=False)
    #: Per (environment, active_only): the constant decisions' members and reason counts.
    constant_parts: dict[tuple[str | None, bool], tuple[bytes, Counter[str]]] = field(
        default_factory=dict, compare=False
    )
    #: Per (environment, active_only): the constant decisions that count as exposures.
    constant_exposures: dict[tuple[str | None, bool], tuple[rules.Decision, ...]] = field(
        default_factory=dict, compare=False
    )

    def change_event(self) -> dict[str, Any]:
        return {
            "revision": self.ruleset.revision,
            "flag_count": len(self.ruleset.flag_keys),
            "loaded_at": _iso(self.loaded_at),
            "origin": self.origin,
        }


class RulesStore:
    """Holds the current snapshot and what happened while keeping it fresh."""

    def __init__(self, source_description: str) -> None:
        self.source = source_description
        self.current: Snapshot | None = None
        #: The failure since the last success, if any, as (message, when).
        self.last_error: tuple[str, float] | None = None
        #: The failure a later success ended, if any: history, not the current state.
        self.previous_error: tuple[str, float] | None = None
        self.last_refresh_at: float | None = None
        #: Refresh attempts by result: a new ruleset loaded, nothing changed, failed.
        self.refreshes = {"loaded": 0, "unchanged": 0, "failed": 0}
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def served(self) -> Snapshot:
        """The current snapshot; 503 NOT_READY before any rules were loaded."""
        snapshot = self.current
        if snapshot is None:
            raise ApiError(503, "NOT_READY", "no rules have been loaded yet")
        return snapshot

    def swap(self, ruleset: rules.Ruleset, origin: str) -> Snapshot:
        """Serve ``ruleset`` from now on and tell every subscriber."""
        snapshot = Snapshot(ruleset, time.time(), origin)
        self.current = snapshot
        event = snapshot.change_event()
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # too slow to keep up: dropped, never waited for
                self._drop(queue)
        return snapshot

    def _drop(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Unsubscribe a subscriber and leave it only ``DROPPED``, so its stream ends."""
        self._subscribers.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(DROPPED)

    def record_success(self, changed: bool) -> None:
        """A refresh that worked: a new ruleset was loaded (``changed``), or none was needed."""
        self.refreshes["loaded" if changed else "unchanged"] += 1
        self.last_refresh_at = time.time()
        if self.last_error is not None:
            self.previous_error, self.last_error = self.last_error, None

    def record_failure(self, message: str) -> None:
        self.refreshes["failed"] += 1
        self.last_refresh_at = time.time()
        self.last_error = (redact(message), self.last_refresh_at)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def close_subscribers(self) -> None:
        """End every change stream (at shutdown)."""
        for queue in list(self._subscribers):
            self._drop(queue)

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/config`` reports about the rules."""
        snapshot = self.current
        return {
            "revision": snapshot.ruleset.revision if snapshot else None,
            "source": self.source,
            "origin": snapshot.origin if snapshot else None,
            "loaded_at": _iso(snapshot.loaded_at) if snapshot else None,
            "flag_count": len(snapshot.ruleset.flag_keys) if snapshot else 0,
            "last_refresh_at": _iso(self.last_refresh_at),
            "last_error": shown_error(self.last_error),
            "previous_error": shown_error(self.previous_error),
            "refreshes": dict(self.refreshes),
        }


class DiskCache:
    """The last good rules document on disk, so a restart while the source is down still serves."""

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / "rules.json"

    async def save(self, data: bytes) -> None:
        await asyncio.to_thread(self._write, data)

    async def load(self) -> bytes | None:
        try:
            return await asyncio.to_thread(self.path.read_bytes)
        except OSError:
            return None

    def _write(self, data: bytes) -> None:
        # Written beside the target and renamed over it, so a crash leaves the old file whole.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".rules-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _iso(moment: float | None) -> str | None:
    return None if moment is None else iso(moment)
