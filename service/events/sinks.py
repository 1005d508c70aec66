"""Sinks: where batches of records go. A small interface, so delivery does not care which.

    DeliveryError            a batch was not taken (.retry_after: seconds the sink asked for)
    └── Rejected             the sink refused the batch as malformed: retrying cannot help

``FileSink`` appends JSON Lines to files that rotate by size. ``HttpSink`` posts to a collector
in one of three formats: ``native`` (a JSON array of records), ``tracker`` (one tracker payload
per visitor session, as a tracker endpoint takes them) or ``odp`` (ODP events only).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from service.events.records import Batch
from service.redaction import public_url

__all__ = ["DeliveryError", "FileSink", "HttpSink", "Rejected", "Sink", "parse_sink"]

ALL_KINDS = frozenset({"decision", "conversion", "odp"})
FORMATS = {
    "native": ALL_KINDS,
    "tracker": frozenset({"decision", "conversion"}),
    "odp": frozenset({"odp"}),
}


class DeliveryError(Exception):
    """The sink did not take the batch; it may be retried."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(DeliveryError):
    """The sink refused the batch itself (a 4xx): sending it again would fail again."""


class Sink(Protocol):
    #: Names the sink in metrics and logs; never holds credentials.
    name: str
    #: The record kinds this sink takes; others are skipped for it.
    kinds: frozenset[str]

    async def open(self) -> None: ...

    async def send(self, batch: Batch) -> None:
        """Deliver every record, or raise ``DeliveryError``."""

    async def close(self) -> None: ...


class FileSink:
    """JSON Lines under a directory, a new file whenever the current one passes ``max_bytes``.

    Each batch is written and flushed to the operating system before it counts as delivered,
    so it survives the process dying; a file is fsynced when it is rotated or closed. Writes
    happen on the event loop: a batch is a few hundred KiB into the page cache, cheaper than
    handing it to a thread and waiting for the GIL back. Only the fsync of a rotated file,
    which can take long, runs in a thread.
    """

    kinds = ALL_KINDS

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.name = f"file:{directory}"
        self._file: IO[bytes] | None = None
        self._written = 0
        self._closing: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    async def send(self, batch: Batch) -> None:
        data = batch.json_lines()
        try:
            if self._file is None or self._written >= self.max_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
        except OSError as error:
            raise DeliveryError(f"cannot write to {self.directory}: {error}") from None
        self._written += len(data)

    def _rotate(self) -> None:
        if self._file is not None:
            finished = asyncio.create_task(asyncio.to_thread(_sync_and_close, self._file))
            self._closing.add(finished)
            finished.add_done_callback(self._closing.discard)
            self._file = None
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.directory / f"events-{stamp}-{os.getpid()}.jsonl"
        self._file = path.open("ab")
        self._written = 0

    async def close(self) -> None:
        await asyncio.gather(*self._closing)
        if self._file is not None:
            await asyncio.to_thread(_sync_and_close, self._file)
            self._file = None


def _sync_and_close(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


class HttpSink:
    """Posts batches to a collector. 2xx delivers; 408, 429 and 5xx (and network errors) are
    retried by the caller, honouring ``Retry-After``; other 4xx reject the batch."""

    def __init__(
        self,
        url: str,
        format: str,
        timeout: float,
        authorization: str | None,
        source_id: str,
    ) -> None:
        self.url = url
        self.format = format
        self.kinds = FORMATS[format]
        # Named as before query values were shown masked: a spool directory is named after
        # its sink, and batches spooled by an earlier version must still be found.
        self.name = f"{public_url(url).partition('?')[0]}?format={format}"
        self.timeout = timeout
        self.source_id = source_id
        self._headers = {"Content-Type": "application/json"}
        if authorization:
            self._headers["Authorization"] = authorization
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), headers=self._headers
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, batch: Batch) -> None:
        if self.format == "tracker":
            for payload in tracker_payloads(batch.records(), self.source_id):
                await self._post(orjson.dumps(payload))
        elif self.format == "odp":
            await self._post(orjson.dumps([odp_event(record) for record in batch.records()]))
        else:
            await self._post(batch.json_array())

    async def _post(self, body: bytes) -> None:
        assert self._session is not None, "open() first"
        try:
            async with self._session.post(self.url, data=body) as response:
                await response.read()
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DeliveryError(f"{type(error).__name__}: {error}") from None
        if 200 <= status < 300:
            return
        if status in (408, 429) or status >= 500:
            raise DeliveryError(f"the collector answered {status}", retry_after)
        raise Rejected(f"the collector refused the batch with {status}")


def odp_event(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": record["type"],
        "action": record["action"],
        "identifiers": record["identifiers"],
        "data": record["data"],
    }


def tracker_payloads(records: Iterable[dict[str, Any]], source_id: str) -> list[dict[str, Any]]:
    """One tracker payload per (visitor, session), each record one event in it."""
    payloads: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        visitor, session = record["visitor_id"], record["session_id"]
        payload = payloads.get((visitor, session))
        if payload is None:
            payload = payloads[visitor, session] = {
                "source": {"id": source_id},
                "session": {"id": session},
                "profile": {"id": visitor},
                "context": {},
                "properties": {},
                "events": [],
                "options": {},
            }
        kind = record["kind"]
        payload["events"].append(
            {
                "type": "flag-exposure" if kind == "decision" else "conversion",
                "properties": {
                    name: value
                    for name, value in record.items()
                    if name not in ("kind", "visitor_id", "session_id")
                },
                "time": {"insert": _iso(record["timestamp"])},
                "options": {},
                "context": {},
            }
        )
    return list(payloads.values())


def _iso(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat().replace("+00:00", "Z")


def _retry_after(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def parse_sink(
    spec: str,
    *,
    file_max_bytes: int,
    timeout: float,
    authorization: str | None,
    source_id: str,
) -> Sink:
    """A sink from one entry of ``FLAGPOST_EVENTS``; ValueError says what is wrong with it."""
    if spec.startswith("file:"):
        directory = spec.removeprefix("file:")
        if not directory:
            raise ValueError(f"{spec!r} names no directory (write file:<dir>)")
        return FileSink(Path(directory), file_max_bytes)
    parts = urlsplit(spec)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{public_url(spec)!r} is neither file:<dir> nor an http(s) URL")
    query = parse_qsl(parts.query, keep_blank_values=True)
    formats = [value for name, value in query if name == "format"]
    format = formats[-1] if formats else "native"
    if format not in FORMATS:
        raise ValueError(
            f"{public_url(spec)!r} asks for format {format!r}; use native, tracker or odp"
        )
    rest = urlencode([(name, value) for name, value in query if name != "format"])
    url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", rest, ""))
    return HttpSink(url, format, timeout, authorization, source_id)
