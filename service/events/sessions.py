"""Visitor sessions: the window in which an exposure is recorded once, and conversions are
attributed to what the visitor was exposed to.

A session lasts ``ttl`` seconds after the visitor's last exposure or conversion. Sessions are
kept in order of last activity, so expired ones are swept from the front in O(expired), and the
least recently active go first when there are more than ``limit`` (their visitor may then be
recorded once more: a duplicate, never a loss).
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from rules import Decision

__all__ = ["ExposureKey", "Session", "Sessions"]

#: (flag, rule, variation): what makes an exposure new within a session.
ExposureKey = tuple[str, "str | None", str]


@dataclass(slots=True)
class Session:
    id: str
    expires: float
    #: The session's exposures, in the order they happened, for attribution.
    seen: dict[ExposureKey, Decision] = field(default_factory=dict)


class Sessions:
    """Sessions by visitor code."""

    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl = ttl
        self.limit = limit
        self.by_visitor: OrderedDict[str, Session] = OrderedDict()
        # Unique across processes and restarts without a uuid per session (which would cost
        # more than the decision): a random prefix per process and a counter.
        self._prefix = os.urandom(6).hex()
        self._numbers = itertools.count(1)

    def touch(self, visitor: str, now: float) -> Session:
        """The visitor's current session, extended; a new one if it expired or never was."""
        by_visitor = self.by_visitor
        session = by_visitor.get(visitor)
        if session is not None:
            by_visitor.move_to_end(visitor)
            if session.expires > now:
                session.expires = now + self.ttl
                return session
        session = by_visitor[visitor] = Session(
            f"{self._prefix}-{next(self._numbers):x}", now + self.ttl
        )
        if len(by_visitor) > self.limit:
            by_visitor.popitem(last=False)
        return session

    def sweep(self, now: float) -> int:
        """Forget sessions that expired; returns how many."""
        by_visitor = self.by_visitor
        swept = 0
        while by_visitor:
            visitor, session = next(iter(by_visitor.items()))
            if session.expires > now:
                break
            del by_visitor[visitor]
            swept += 1
        return swept

    def __len__(self) -> int:
        return len(self.by_visitor)
