"""Where the rules come from: a file or an http(s) URL, behind one small interface.

A source answers ``fetch()`` with the document's bytes, or with ``None`` when nothing
changed since the last fetch, so an unchanged document is neither re-read in full nor
re-compiled. Failures raise ``SourceError`` with a message fit for ``GET /v1/config``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

import aiohttp

from service.redaction import public_url

__all__ = ["FileSource", "HttpSource", "RulesSource", "SourceError", "open_source"]


class SourceError(Exception):
    """The source could not give a document this time."""


class RulesSource(Protocol):
    #: Shown in ``GET /v1/config`` (a URL's credentials are never in it).
    description: str
    #: How often a change check is cheap enough to run, in seconds (None: the refresh interval).
    poll_interval: float | None

    async def fetch(self) -> bytes | None:
        """The document's bytes, or None if it has not changed since the last fetch."""
        ...

    async def close(self) -> None: ...


class FileSource:
    """A rules file, noticed changed by its size, modification time and inode."""

    poll_interval: float | None = 1.0  # a stat costs microseconds: check often

    def __init__(self, path: str, *, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.description = str(self.path)
        self._seen: tuple[int, int, int] | None = None

    async def fetch(self) -> bytes | None:
        try:  # in a thread, like the read: a stat of a network file system can hang
            info = await asyncio.to_thread(os.stat, self.path)
        except OSError as error:
            raise SourceError(f"cannot read {self.path}: {error.strerror}") from None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._seen:
            return None
        if info.st_size > self.max_bytes:
            raise SourceError(_too_large(self.description, info.st_size, self.max_bytes))
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as error:
            raise SourceError(f"cannot read {self.path}: {error.strerror}") from None
        self._seen = stamp
        return data

    async def close(self) -> None:
        return None


class HttpSource:
    """A rules document at an http(s) URL, fetched conditionally (ETag, Last-Modified)."""

    poll_interval: float | None = None

    def __init__(
        self, url: str, *, timeout: float, max_bytes: int, authorization: str | None = None
    ) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.description = public_url(url)  # never shows credentials or tokens
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._authorization = authorization
        self._session: aiohttp.ClientSession | None = None
        self._etag: str | None = None
        self._last_modified: str | None = None

    async def fetch(self) -> bytes | None:
        if self._session is None:  # created on first use: constructing a source does no I/O
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Accept": "application/json"}
        if self._etag:
            headers["If-None-Match"] = self._etag
        if self._last_modified:
            headers["If-Modified-Since"] = self._last_modified
        if self._authorization:
            headers["Authorization"] = self._authorization
        try:
            async with self._session.get(self.url, headers=headers) as response:
                if response.status == 304:
                    return None
                if response.status != 200:
                    raise SourceError(f"{self.description} answered HTTP {response.status}")
                data = await self._read_limited(response)
                self._etag = response.headers.get("ETag")
                self._last_modified = response.headers.get("Last-Modified")
                return data
        except TimeoutError:
            raise SourceError(f"{self.description} did not answer in time") from None
        except aiohttp.ClientError as error:
            raise SourceError(f"cannot fetch {self.description}: {error}") from None

    async def _read_limited(self, response: aiohttp.ClientResponse) -> bytes:
        if (response.content_length or 0) > self.max_bytes:
            assert response.content_length is not None
            raise SourceError(_too_large(self.description, response.content_length, self.max_bytes))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_bytes:
                raise SourceError(_too_large(self.description, size, self.max_bytes, "over "))
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def open_source(
    location: str, *, timeout: float, max_bytes: int, authorization: str | None
) -> RulesSource:
    """The source for a setting's value: an http(s) URL or a file path."""
    if location.startswith(("http://", "https://")):
        return HttpSource(
            location, timeout=timeout, max_bytes=max_bytes, authorization=authorization
        )
    return FileSource(location, max_bytes=max_bytes)


def _too_large(description: str, size: int, limit: int, over: str = "") -> str:
    return (
        f"{description} is {over}{size} bytes, larger than FLAGPOST_MAX_RULES_BYTES "
        f"({limit}): refused, the last good rules stay"
    )
