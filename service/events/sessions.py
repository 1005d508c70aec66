"""Visitor sessions: the window in which an exposure is recorded once, and conversions are
attributed to what the visitor was exposed to.

A session lasts ``ttl`` seconds after the visitor's last exposure or conversion. Sessions are
kept in plain dicts in order of last activity (a touched session is taken out and put back
at the end: cheaper than an OrderedDict's bookkeeping), so expired ones are swept from the
front, and when there are more than ``limit`` the least recently active go first, a hundredth
of the limit at a time (their visitors may then be recorded once more: a duplicate, never a
loss).

The table is ``SHARDS`` dicts, a visitor's chosen by the hash of its code: a dict that grows
is copied whole into a bigger one, on the request that makes it grow, and one dict of
350,000 sessions took 26 ms to grow. A shard grows a sixty-fourth of that. The limit and the
order of activity hold per shard: the least recently active of the visitor's shard go first.

A session is made for every new visitor, on the decision path, where the cyclic garbage
collector's work is what costs most once there are many sessions. So a session is one flat
tuple ``(number, expires, *outcomes)`` of plain values (an outcome is a decision's
``Decision.outcome`` text), replaced whenever it changes: the collector stops tracking such a
tuple the first time it sees it, and the table itself is frozen at start-up
(``service.heap.freeze_start_up``: an empty dict is not tracked, so a plain ``gc.freeze()``
would miss it), so it is never walked either. A session's id is only spelled out
(``id_of``) when a record is built in the background.

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

__all__ = ["NUMBER", "SHARDS", "Session", "Sessions", "outcomes_of"]

#: Dicts the table is split into (a power of two: a visitor's is ``hash & (SHARDS - 1)``).
SHARDS: Final = 64

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
        self.shard_limit = max(1, limit // SHARDS)  # never more than limit, from 64 on
        self.shards: tuple[dict[str, Session], ...] = tuple({} for _ in range(SHARDS))
        # A session whose expiry is further away than this was active within the last
        # hundredth of the window: a repeat exposure leaves it as it is.
        self._recent = ttl - ttl / 100
        # Unique across processes and restarts without a uuid per session: a random prefix
        # per process and a counter.
        self.prefix = os.urandom(6).hex()
        self.numbers = itertools.count(1)

    def _current(self, shard: dict[str, Session], visitor: str, now: float) -> Session:
        """The visitor's live session, or a new one with no outcomes, taken out of its
        ``shard``: the caller puts it back, at the end of the activity order."""
        session = shard.pop(visitor, None)
        if session is not None and session[EXPIRES] > now:
            return session
        limit = self.shard_limit
        if len(shard) >= limit:
            for old in list(islice(shard, len(shard) - limit + 1 + limit // 100)):
                del shard[old]  # the least recently active, from the front
        return (next(self.numbers), 0.0)

    def shard(self, visitor: str) -> dict[str, Session]:
        """The dict that holds the visitor's session, if it has one."""
        return self.shards[hash(visitor) & (SHARDS - 1)]

    def get(self, visitor: str) -> Session | None:
        return self.shard(visitor).get(visitor)

    def touch(self, visitor: str, now: float) -> Session:
        """The visitor's current session, extended; a new one if it expired or never was."""
        shard = self.shard(visitor)
        number, _, *outcomes = self._current(shard, visitor, now)
        session = shard[visitor] = (number, now + self.ttl, *outcomes)
        return session

    def expose(
        self, visitor: str, now: float, outcome: str, shard: dict[str, Session] | None = None
    ) -> int | None:
        """Note an exposure in the visitor's session: the session's number if the outcome is
        new to it, None if the session already had it. (``shard``: the visitor's, when the
        caller has it at hand.)"""
        if shard is None:
            shard = self.shard(visitor)
        session = shard.get(visitor)
        # A number or an expiry never equals a text, so the whole tuple can be searched.
        if session is not None and outcome in session and session[EXPIRES] - now > self._recent:
            return None
        session = self._current(shard, visitor, now)
        number: int = session[NUMBER]
        if outcome in session:
            shard[visitor] = (number, now + self.ttl, *session[FIRST_OUTCOME:])
            return None
        shard[visitor] = (number, now + self.ttl, *session[FIRST_OUTCOME:], outcome)
        return number

    def expose_all(
        self, visitor: str, now: float, decisions: Iterable[Decision]
    ) -> tuple[int, tuple[str, ...], int]:
        """Note many exposures of one visitor (decisions without a rule are not exposures):
        the session number, the outcomes new to the session, and how many were repeats.

        Written for ``/v1/decide`` over hundreds of flags, where nearly every call repeats
        what the session already has: the comparison is one set operation in C."""
        outcomes = [decision.outcome for decision in decisions if decision.rule is not None]
        shard = self.shard(visitor)
        session = shard.get(visitor)
        if (
            session is not None
            and session[EXPIRES] - now > self._recent
            and set(session).issuperset(outcomes)
        ):
            return session[NUMBER], (), len(outcomes)
        session = self._current(shard, visitor, now)
        number: int = session[NUMBER]
        known = set(session)
        added: list[str] = []
        for outcome in outcomes:
            if outcome not in known:
                known.add(outcome)
                added.append(outcome)
        shard[visitor] = (number, now + self.ttl, *session[FIRST_OUTCOME:], *added)
        return number, tuple(added), len(outcomes) - len(added)

    def id_of(self, number: int) -> str:
        return f"{self.prefix}-{number:x}"

    def sweep(self, now: float) -> int:
        """Forget sessions that expired; returns how many."""
        swept = 0
        for shard in self.shards:
            expired = []
            for visitor, session in shard.items():  # one pass from the front
                if session[EXPIRES] > now:
                    break
                expired.append(visitor)
            for visitor in expired:
                del shard[visitor]
            swept += len(expired)
        return swept

    def __len__(self) -> int:
        return sum(map(len, self.shards))
