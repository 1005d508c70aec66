"""Visitor sessions: the window in which an exposure is recorded once, and conversions are
attributed to what the visitor was exposed to.

A session lasts ``ttl`` seconds after the visitor's last exposure or conversion. Sessions are
kept in a plain dict in order of last activity (a touched session is taken out and put back
at the end: cheaper than an OrderedDict's bookkeeping), so expired ones are swept from the
front, and when there are more than ``limit`` the least recently active go first, a hundredth
of the limit at a time (their visitors may then be recorded once more: a duplicate, never a
loss).

A session is made for every new visitor, on the decision path, where the cyclic garbage
collector's work is what costs most once there are many sessions. So a session is a tuple
``(number, expires, seen)`` of plain values (``seen``: a tuple of exposure keys, themselves
tuples of strings and numbers), replaced whenever it changes. The collector stops tracking such
tuples the first time it sees them; and the table itself, made with the app before start-up's
``gc.freeze()``, is never walked by the collector either. A session's id is only
spelled out (``id_of``) when a record is built in the background.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from itertools import islice
from operator import attrgetter
from typing import Final

from rules import Decision

__all__ = ["NUMBER", "SEEN", "ExposureKey", "Session", "Sessions", "exposure_key"]

#: (flag, rule, variation, flag id, experiment id, variation id): what makes an exposure new
#: within a session (the ids come along for attribution; they follow from the keys).
ExposureKey = tuple[str, "str | None", str, "int | None", "int | None", "int | None"]
#: (number, expires, seen): seen holds the session's exposure keys in the order they happened.
Session = tuple[int, float, tuple[ExposureKey, ...]]
NUMBER: Final = 0
EXPIRES: Final = 1
SEEN: Final = 2


#: The exposure key of a decision, made in C.
exposure_key: Callable[[Decision], ExposureKey] = attrgetter(
    "flag", "rule", "variation", "flag_id", "experiment_id", "variation_id"
)


class Sessions:
    """Sessions by visitor code."""

    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl = ttl
        self.limit = limit
        self.by_visitor: dict[str, Session] = {}
        # Unique across processes and restarts without a uuid per session: a random prefix
        # per process and a counter.
        self.prefix = os.urandom(6).hex()
        self._numbers = itertools.count(1)

    def _current(self, visitor: str, now: float) -> tuple[int, tuple[ExposureKey, ...]]:
        """The number and exposures of the visitor's live session (a new one if none), taken
        out of the table: the caller puts it back, at the end of the activity order."""
        by_visitor = self.by_visitor
        session = by_visitor.pop(visitor, None)
        if session is not None and session[EXPIRES] > now:
            return session[NUMBER], session[SEEN]
        if len(by_visitor) >= self.limit:
            self._evict(len(by_visitor) - self.limit + 1 + self.limit // 100)
        return next(self._numbers), ()

    def _evict(self, count: int) -> None:
        by_visitor = self.by_visitor
        for visitor in list(islice(by_visitor, count)):  # one pass from the front
            del by_visitor[visitor]

    def touch(self, visitor: str, now: float) -> Session:
        """The visitor's current session, extended; a new one if it expired or never was."""
        number, seen = self._current(visitor, now)
        session = self.by_visitor[visitor] = (number, now + self.ttl, seen)
        return session

    def expose(self, visitor: str, now: float, key: ExposureKey) -> int | None:
        """Note an exposure in the visitor's session: its number if the exposure is new to
        the session, None if the session already had it."""
        number, seen = self._current(visitor, now)
        if key in seen:
            self.by_visitor[visitor] = (number, now + self.ttl, seen)
            return None
        self.by_visitor[visitor] = (number, now + self.ttl, (*seen, key))
        return number

    def expose_all(
        self, visitor: str, now: float, decisions: Iterable[Decision]
    ) -> tuple[int, list[Decision], int]:
        """Note many exposures of one visitor (decisions without a rule are not exposures):
        the session number, the decisions new to the session, and how many were repeats.

        Written for ``/v1/decide`` over hundreds of flags, where nearly every call repeats
        what the session already has: keys are made and compared in C (attrgetter, sets)."""
        number, seen = self._current(visitor, now)
        ruled = [decision for decision in decisions if decision.rule is not None]
        keys = list(map(exposure_key, ruled))
        known = set(seen)
        if known.issuperset(keys):  # the common case: nothing new
            self.by_visitor[visitor] = (number, now + self.ttl, seen)
            return number, [], len(keys)
        fresh: list[Decision] = []
        added: list[ExposureKey] = []
        for decision, key in zip(ruled, keys, strict=True):
            if key not in known:
                known.add(key)
                added.append(key)
                fresh.append(decision)
        self.by_visitor[visitor] = (number, now + self.ttl, (*seen, *added))
        return number, fresh, len(keys) - len(fresh)

    def id_of(self, number: int) -> str:
        return f"{self.prefix}-{number:x}"

    def sweep(self, now: float) -> int:
        """Forget sessions that expired; returns how many."""
        by_visitor = self.by_visitor
        expired = []
        for visitor, session in by_visitor.items():  # one pass from the front
            if session[EXPIRES] > now:
                break
            expired.append(visitor)
        for visitor in expired:
            del by_visitor[visitor]
        return len(expired)

    def __len__(self) -> int:
        return len(self.by_visitor)
