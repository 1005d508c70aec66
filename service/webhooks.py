"""Signed refresh webhooks that cannot be replayed.

A sender signs ``"<timestamp>.<raw body>"`` with HMAC-SHA256 and the shared secret, and sends
``X-Flagpost-Timestamp: <Unix seconds>`` and ``X-Flagpost-Signature: sha256=<hex>``. A request
is refused (401) when its signature is wrong (``UNAUTHORIZED``), its timestamp is more than
``WINDOW`` seconds from the clock (``WEBHOOK_EXPIRED``), or its signature was already accepted
(``WEBHOOK_REPLAYED``): accepted signatures are remembered for twice the window, by this
process or, with Redis, by every replica (one ``SET NX``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.errors import ApiError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WINDOW",
    "MemoryReplayGuard",
    "RedisReplayGuard",
    "ReplayGuard",
    "verify",
]

SIGNATURE_HEADER: Final = "X-Flagpost-Signature"
TIMESTAMP_HEADER: Final = "X-Flagpost-Timestamp"
#: Seconds a signed request stays valid either side of the clock.
WINDOW: Final = 300
#: Signatures remembered per process at most (a burst beyond it forgets the oldest first,
#: which only the timestamp window then covers).
REMEMBERED: Final = 100_000
REDIS_KEY: Final = "flagpost:webhook:"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of ``"<timestamp>.<body>"``: what a sender puts in the header."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, timestamp: str | None, offered: str | None, body: bytes, now: float) -> str:
    """The request's signature, checked; raises ``ApiError`` 401 saying what is wrong."""
    # A header of bytes that are not UTF-8 arrives with surrogates: refused, never a crash.
    stamp = (timestamp or "").strip()
    if not stamp.isascii() or not stamp.isdigit():
        raise ApiError(401, "UNAUTHORIZED", f"missing or invalid {TIMESTAMP_HEADER} (Unix seconds)")
    expected = signature(secret, stamp, body)
    if not hmac.compare_digest((offered or "").encode(errors="replace"), expected.encode()):
        raise ApiError(401, "UNAUTHORIZED", f"missing or invalid {SIGNATURE_HEADER}")
    if abs(now - int(stamp)) > WINDOW:
        raise ApiError(
            401,
            "WEBHOOK_EXPIRED",
            f"{TIMESTAMP_HEADER} is more than {WINDOW} seconds from this server's clock",
        )
    return expected


class ReplayGuard(Protocol):
    async def first_time(self, signature: str) -> bool:
        """Whether ``signature`` is seen for the first time (and remember it)."""
        ...

    async def close(self) -> None: ...


class MemoryReplayGuard:
    """This process's accepted signatures, each until twice the window has passed."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def first_time(self, signature: str) -> bool:
        now = time.monotonic()
        if len(self.seen) >= REMEMBERED:
            self.seen = {sig: until for sig, until in self.seen.items() if until > now}
            while len(self.seen) >= REMEMBERED:
                del self.seen[next(iter(self.seen))]
        until = self.seen.get(signature)
        if until is not None and until > now:
            return False
        self.seen[signature] = now + 2 * WINDOW
        return True

    async def close(self) -> None:
        return None


class RedisReplayGuard:
    """Accepted signatures in Redis, shared by every replica: one ``SET NX EX`` each."""

    def __init__(self, url: str, timeout: float) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self.timeout = timeout

    async def first_time(self, signature: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                stored = await self.client.set(REDIS_KEY + signature, b"1", nx=True, ex=2 * WINDOW)
        except (RedisError, OSError, TimeoutError):
            # Unable to tell a replay: refused (the sender retries), never let through.
            raise ApiError(
                503, "STORE_UNAVAILABLE", "Redis did not answer: cannot rule out a replay"
            ) from None
        return bool(stored)

    async def close(self) -> None:
        await self.client.aclose()
