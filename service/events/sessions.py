"""Visitor sessions: the window in which an exposure is recorded once, and conversions are
attributed to what the visitor was exposed to.

A session lasts ``ttl`` seconds after the visitor's last exposure or conversion. Sessions are
kept in a plain dict in order of last activity (a touched session is taken out and put back
at the end: cheaper than an OrderedDict's bookkeeping), so expired ones are swept from the
front, and when there are more than ``limit`` the least recently active go first, a hundredth
of the limit at a time (their visitors may then be recorded once more: a duplicate, never a
loss).

A session is made for every new visitor, on the decision path, where the cyclic garbage
collector's work is what costs most once there are many sessions. So a session is one flat
tuple ``(number, expires, *outcomes)`` of plain values (an outcome is a decision's
``Decision.outcome`` text), replaced whenever it changes: the collector stops tracking such a
tuple the first time it sees it, and the table itself, made with the app before start-up's
``gc.freeze()``, is never walked either. A session's id is only spelled out (``id_of``) when
a record is built in the background.

A returning visitor is the common case, so a session active within the last hundredth of the
window is not touched again for an exposure it already holds: no write, no allocation. A
session therefore ends between 99% and 100% of ``ttl`` after the visitor's last activity.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from itertools import islice
from typing import Any, Final

from rules import Decision

__all__ = ["NUMBER", "Session", "Sessions", "outcomes_of"]

#: (number, expires, *outcomes): the outcomes in the order they were first seen.
Session = tuple[Any, ...]
NUMBER: Final = 0
EXPIRES: Final = 1
FIRST_OUTCOME: Final = 2


def outcomes_of(session: Session) -> tuple[str, ...]:
    """The outcomes (``Decision.outcome``) a session was exposed to, oldest first."""
    outcomes: tuple[str, ...] = session[FIRST_OUTCOME:]
    return outcomes


class Sessions:
    """Sessions by visitor code."""

    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl = ttl
        self.limit = limit
        self.by_visitor: dict[str, Session] = {}
        # A session whose expiry is further away than this was active within the last
        # hundredth of the window: a repeat exposure leaves it as it is.
        self._recent = ttl - ttl / 100
        # Unique across processes and restarts without a uuid per session: a random prefix
        # per process and a counter.
        self.prefix = os.urandom(6).hex()
        self.numbers = itertools.count(1)

    def _current(self, visitor: str, now: float) -> Session:
        """The visitor's live session, or a new one with no outcomes, taken out of the
        table: the caller puts it back, at the end of the activity order."""
        by_visitor = self.by_visitor
        session = by_visitor.pop(visitor, None)
        if session is not None and session[EXPIRES] > now:
            return session
        if len(by_visitor) >= self.limit:
            self._evict(len(by_visitor) - self.limit + 1 + self.limit // 100)
        return (next(self.numbers), 0.0)

    def _evict(self, count: int) -> None:
        by_visitor = self.by_visitor
        for visitor in list(islice(by_visitor, count)):  # one pass from the front
            del by_visitor[visitor]

    def touch(self, visitor: str, now: float) -> Session:
        """The visitor's current session, extended; a new one if it expired or never was."""
        number, _, *outcomes = self._current(visitor, now)
        session = self.by_visitor[visitor] = (number, now + self.ttl, *outcomes)
        return session

    def expose(self, visitor: str, now: float, outcome: str) -> int | None:
        """Note an exposure in the visitor's session: the session's number if the outcome is
        new to it, None if the session already had it."""
        session = self.by_visitor.get(visitor)
        # A number or an expiry never equals a text, so the whole tuple can be searched.
        if session is not None and outcome in session and session[EXPIRES] - now > self._recent:
            return None
        session = self._current(visitor, now)
        number: int = session[NUMBER]
        if outcome in session:
            self.by_visitor[visitor] = (number, now + self.ttl, *session[FIRST_OUTCOME:])
            return None
        self.by_visitor[visitor] = (number, now + self.ttl, *session[FIRST_OUTCOME:], outcome)
        return number

    def expose_all(
        self, visitor: str, now: float, decisions: Iterable[Decision]
    ) -> tuple[int, tuple[str, ...], int]:
        """Note many exposures of one visitor (decisions without a rule are not exposures):
        the session number, the outcomes new to the session, and how many were repeats.

        Written for ``/v1/decide`` over hundreds of flags, where nearly every call repeats
        what the session already has: the comparison is one set operation in C."""
        outcomes = [decision.outcome for decision in decisions if decision.rule is not None]
        session = self.by_visitor.get(visitor)
        if (
            session is not None
            and session[EXPIRES] - now > self._recent
            and set(session).issuperset(outcomes)
        ):
            return session[NUMBER], (), len(outcomes)
        session = self._current(visitor, now)
        number: int = session[NUMBER]
        known = set(session)
        added: list[str] = []
        for outcome in outcomes:
            if outcome not in known:
                known.add(outcome)
                added.append(outcome)
        self.by_visitor[visitor] = (number, now + self.ttl, *session[FIRST_OUTCOME:], *added)
        return number, tuple(added), len(outcomes) - len(added)

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
