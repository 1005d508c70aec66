"""One way to write an instant for people: ISO 8601 in UTC, to the millisecond, with a Z."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso", "shown_error"]

#: A failure and when it happened (seconds since the epoch).
ErrorAt = tuple[str, float]


def iso(seconds: float) -> str:
    """``seconds`` since the epoch as ``2026-12-01T23:43:52.677Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def shown_error(error: ErrorAt | None) -> dict[str, str] | None:
    """A failure as ``/v1/config`` shows it: ``{"message", "at"}``, or None."""
    return None if error is None else {"message": error[0], "at": iso(error[1])}
