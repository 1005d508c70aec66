"""Sinks: where batches of records go. A small interface, so delivery does not care which.

    DeliveryError            a batch was not taken (.retry_after: seconds the sink asked for)
    └── Rejected             the sink refused the batch as malformed: retrying cannot help

``FileSink`` appends JSON Lines to files that rotate by size. ``HttpSink`` posts to a collector
in one of three formats: ``native`` (a JSON array of records), ``tracker`` (one tracker payload
per visitor session, as a tracker endpoint takes them) or ``odp`` (ODP events only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from service.events.records import Batch
from service.redaction import public_url

__all__ = ["DeliveryError", "FileSink", "HttpSink", "Rejected", "Sink", "parse_sink"]

T = TypeVar("T")
ALL_KINDS = frozenset({"decision", "conversion", "odp", "visitor_data"})
FORMATS = {
    "native": ALL_KINDS,
    "tracker": frozenset({"decision", "conversion", "visitor_data"}),
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
    so it survives the process dying; a file is fsynced when it is rotated or closed. Every
    touch of the disk (creating the directory, opening, writing, syncing) runs in the sink's
    own thread, one at a time and in order: a slow or full disk never holds the event loop.
    A failed write (a full disk, say) raises ``DeliveryError``, and the part of the batch
    that did reach the file is cut off again, so a retry does not write a line twice.
    """

    kinds = ALL_KINDS

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.name = f"file:{directory}"
        self._file: IO[bytes] | None = None
        self._written = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="flagpost-file-sink")

    async def open(self) -> None:
        await self._in_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def send(self, batch: Batch) -> None:
        data = batch.json_lines()
        try:
            await self._in_thread(self._write, data)
        except OSError as error:
            raise DeliveryError(f"cannot write to {self.directory}: {error}") from None

    def _write(self, data: bytes) -> None:
        if self._file is None or self._written >= self.max_bytes:
            self._rotate()
        file = self._file
        assert file is not None
        start = file.tell()
        try:  # unbuffered: what failed to be written is not left in a buffer to go later
            view, written = memoryview(data), 0
            while written < len(view):
                written += file.write(view[written:]) or 0
        except OSError:
            with contextlib.suppress(OSError):  # no half batch left for the retry to repeat
                file.truncate(start)
                file.seek(start)
            raise
        self._written += len(data)

    def _rotate(self) -> None:
        finished, self._file = self._file, None
        if finished is not None:
            _sync_and_close(finished)
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.directory / f"events-{stamp}-{os.getpid()}.jsonl"
        self._file = path.open("ab", buffering=0)
        self._written = 0

    async def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                await self._in_thread(_sync_and_close, file)
            except OSError as error:
                raise DeliveryError(f"cannot close {file.name}: {error}") from None
        self._thread.shutdown(wait=False)

    async def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, partial(function, *args, **kwargs))


def _sync_and_close(file: IO[bytes]) -> None:
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
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
        if kind == "visitor_data":  # typed by slug (page-view, custom-data, ...)
            kind, properties = record["type"].replace("_", "-"), record["data"]
        else:
            kind = "flag-exposure" if kind == "decision" else "conversion"
            properties = {
                name: value
                for name, value in record.items()
                if name not in ("kind", "visitor_id", "session_id")
            }
        payload["events"].append(
            {
                "type": kind,
                "properties": properties,
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
