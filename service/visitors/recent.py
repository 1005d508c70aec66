"""The engine tracking code: a visitor's experiment assignments of the last few seconds, as
the JavaScript that hands them to Kameleoon's browser tag (``get_engine_tracking_code``).

Decisions note their experiment exposures here (a list append on the decision path). This
process answers from its own notes at once; with a shared store, the notes are also written
to it every ``WRITE_EVERY`` seconds in one pipeline, so another worker or replica sees them
within that delay plus a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from itertools import chain
from typing import Final, cast

import orjson

from rules import Decision
from service.logs import get_logger
from service.visitors.stores import StoreUnavailable, VisitorStore

__all__ = ["WINDOW", "WRITE_EVERY", "RecentExposures", "tracking_code"]

log = get_logger(__name__)

#: Seconds an exposure stays in the tracking code.
WINDOW: Final = 5.0
#: Seconds between writes of new notes to a shared store.
WRITE_EVERY: Final = 0.05
#: Visitors whose notes this process keeps (the oldest go first; notes expire anyway).
LIMIT: Final = 100_000
#: Notes kept per visitor (the newest).
KEPT: Final = 50
HEAD: Final = "window.kameleoonQueue=window.kameleoonQueue||[];"

#: (seconds since the epoch, experiment id, variation id): ids as records carry them.
Assignment = tuple[float, "int | str", "int | str"]
#: Values in a note.
NOTE: Final = 3


def assignment(decision: Decision, now: float) -> Assignment:
    experiment = decision.experiment_id if decision.experiment_id is not None else decision.rule
    variation = decision.variation_id if decision.variation_id is not None else decision.variation
    return (now, experiment or "", variation)


class RecentExposures:
    def __init__(self, store: VisitorStore | None) -> None:
        self.store = store if store is not None and store.kind != "memory" else None
        # A visitor's notes, oldest first, as one flat tuple of plain values (``NOTE`` a
        # note), replaced when it changes: the cyclic collector stops tracking such a tuple
        # the first time it sees it. Lists, one per visitor of the window (25,000 at 5,000
        # new visitors a second), made its full collections take 25-40 ms, each stalling
        # every request under way; a tuple of tuples it let go only a collection later.
        self.local: OrderedDict[str, tuple[float | int | str, ...]] = OrderedDict()
        self.pending: list[tuple[str, Assignment]] = []
        self.lost = 0

    def note(self, visitor: str, decisions: Iterable[Decision]) -> None:
        """Keep the experiment exposures among ``decisions`` (tracked ones: callers check)."""
        now = time.time()
        noted = [assignment(d, now) for d in decisions if d.rule_type == "experiment"]
        if noted:  # joined once per request, however many experiments it ran
            self._keep(visitor, tuple(chain.from_iterable(noted)), noted)

    def note_one(self, visitor: str, decision: Decision) -> None:
        """``note`` for the one decision of a single-flag route, an experiment's (callers
        check): 1 µs instead of 3, on the route a new visitor asks most."""
        noted = assignment(decision, time.time())
        self._keep(visitor, noted, (noted,))

    def _keep(
        self, visitor: str, values: tuple[float | int | str, ...], noted: Iterable[Assignment]
    ) -> None:
        """Add ``values`` (the flat ``noted``) to the visitor's notes, keeping the newest."""
        local = self.local
        kept = local.get(visitor)
        if kept is None:
            local[visitor] = values[-NOTE * KEPT :]
            if len(local) > LIMIT:
                local.popitem(last=False)
        else:
            local[visitor] = (*kept, *values)[-NOTE * KEPT :]
            local.move_to_end(visitor)  # the oldest notes stay first, for sweep()
        if self.store is not None:
            self.pending += ((visitor, note) for note in noted)

    async def assignments(self, visitor: str) -> list[Assignment]:
        """The visitor's experiment exposures of the last ``WINDOW`` seconds, oldest first,
        from this process and (with a shared store) every other."""
        since = time.time() - WINDOW
        notes = self.local.get(visitor, ())
        found = [
            cast(Assignment, notes[start : start + NOTE])
            for start in range(0, len(notes), NOTE)
            if notes[start] >= since  # type: ignore[operator]
        ]
        if self.store is not None:
            try:
                shared = await self.store.recent(visitor)
            except StoreUnavailable as error:  # this process's own notes, at least
                log.warning("tracking_notes_unread", error=error.message)
                shared = []
            found += (noted for noted in shared if noted[0] >= since)
        return sorted(set(found), key=lambda noted: noted[0])

    def sweep(self) -> None:
        """Forget the visitors whose newest note has left the window: they come first, so
        this stops at the first one still in it (never a walk over every visitor)."""
        since = time.time() - WINDOW
        local = self.local
        while local and next(iter(local.values()))[-NOTE] < since:  # type: ignore[operator]
            local.popitem(last=False)

    async def run(self) -> None:
        """Write new notes to the shared store and forget old ones, until cancelled."""
        while True:
            await asyncio.sleep(WRITE_EVERY)
            self.sweep()
            await self.write_pending()

    async def write_pending(self) -> None:
        if self.store is None or not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            await self.store.add_recent(pending, WINDOW)
        except StoreUnavailable as error:  # a tracking code elsewhere misses them: said, counted
            self.lost += len(pending)
            log.warning("tracking_notes_not_shared", count=len(pending), error=error.message)


async def run_recent(recent: RecentExposures) -> None:
    """``recent.run()``, stopped by cancellation (with a last write)."""
    try:
        await recent.run()
    finally:
        with contextlib.suppress(Exception):
            await recent.write_pending()


def tracking_code(assignments: Iterable[Assignment]) -> str:
    """The JavaScript that hands ``assignments`` to the browser tag."""
    parts = [HEAD]
    seen: set[tuple[int | str, int | str]] = set()
    for _, experiment, variation in assignments:
        if (experiment, variation) in seen:
            continue
        seen.add((experiment, variation))
        ids = orjson.dumps([experiment, variation]).decode()[1:-1]
        exp = orjson.dumps(experiment).decode()
        parts.append(f"window.kameleoonQueue.push(['Experiments.assignVariation',{ids}]);")
        parts.append(f"window.kameleoonQueue.push(['Experiments.trigger',{exp},true]);")
    return "".join(parts)
