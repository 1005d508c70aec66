"""Replicas in step: a refresh asked of one replica (or worker) is asked of all, through Redis.

A webhook accepted anywhere is published on one channel; every process subscribed to it
triggers its own refresh, so all of them fetch the new rules within a second. A process that
loses Redis resubscribes by itself (after ``RETRY`` seconds) and refreshes once it has, since
it may have missed a message meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.logs import get_logger

__all__ = ["CHANNEL", "RefreshBroadcast"]

log = get_logger(__name__)

CHANNEL: Final = "flagpost:refresh"
#: Seconds between attempts to resubscribe after Redis was lost.
RETRY: Final = 1.0


class RefreshBroadcast:
    def __init__(self, url: str, timeout: float, refresh: Callable[[], None]) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self.refresh = refresh
        self.timeout = timeout
        #: Messages received (each triggered a refresh), and publications that failed.
        self.received = 0
        self.unpublished = 0

    async def publish(self) -> None:
        """Ask every subscribed process to refresh (this one too). A failure is logged and
        counted, never raised: the caller refreshes itself anyway."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.publish(CHANNEL, b"refresh")
        except (RedisError, OSError, TimeoutError) as error:
            self.unpublished += 1
            log.warning("refresh_not_broadcast", error=type(error).__name__)

    async def listen(self) -> None:
        """Subscribe and refresh on each message, until cancelled; resubscribe when lost."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.refresh()  # a message may have gone by while this process was away
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self.received += 1
                        self.refresh()
            except (RedisError, OSError) as error:
                log.warning("refresh_channel_lost", error=type(error).__name__, retry=RETRY)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RETRY)

    async def close(self) -> None:
        await self.client.aclose()
