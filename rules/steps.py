"""Work done in steps: a generator that yields between small pieces of work and returns its
result, so that whoever drives it decides when to pause (the service hands control back to
its event loop between steps; ``finish`` just runs them all)."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

__all__ = ["Steps", "finish"]

T = TypeVar("T")
Steps = Generator[None, None, T]


def finish(steps: Steps[T]) -> T:
    """Run every step and return the result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
