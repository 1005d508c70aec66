"""One way to write an instant for people: ISO 8601 in UTC, to the millisecond, with a Z."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso"]


def iso(seconds: float) -> str:
    """``seconds`` since the epoch as ``2026-12-01T23:43:52.677Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
