"""Sinks: where batches of records go. A small interface, so delivery does not care which.

    DeliveryError            a batch was not taken (.retry_after: seconds the sink asked for)
    └── Rejected             the sink refused the batch as malformed: retrying cannot help

``FileSink`` appends JSON Lines to files that rotate by size and by age; a file being written
is named ``*.jsonl.open`` and becomes ``*.jsonl`` once closed, so a reader (``flagpost
export``) takes only whole files. ``HttpSink`` posts to a collector
in one of three formats: ``native`` (a JSON array of records), ``tracker`` (one tracker payload
per visitor session, as a tracker endpoint takes them) or ``odp`` (ODP events only).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
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

from service.durable import sync_directory, try_lock
from service.events.files import OPEN_SUFFIX
from service.events.records import Batch
from service.logs import get_logger
from service.redaction import public_url

__all__ = [
    "DeliveryError",
    "FileSink",
    "HttpSink",
    "Rejected",
    "Sink",
    "close_orphans",
    "parse_sink",
]

T = TypeVar("T")
log = get_logger(__name__)
#: The suffix a file sink's file carries while it is being written.
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


#: Lines a file sink encodes and writes at a time (about 40 KB of single decisions' rows).
PIECE_LINES = 64


class FileSink:
    """JSON Lines under a directory, a new file whenever the current one passes ``max_bytes``
    or has been open ``max_age`` seconds (also when idle, so an idle replica's events still
    reach a reader).

    Each batch is written and flushed to the operating system before it counts as delivered,
    so it survives the process dying. A file is written as ``events-<time>-<pid>.jsonl.open``
    under an ``flock``; when it is rotated or closed it is fsynced and renamed to ``.jsonl``:
    a ``.jsonl`` file is whole and never written again. An ``.open`` file whose lock is free
    was left by a process that died; opening the sink closes those (renames them), and
    ``flagpost export`` treats them the same way. Every touch of the disk (creating the
    directory, opening, writing, syncing) runs in the sink's own thread, one at a time and
    in order: a slow or full disk never holds the event loop. A failed write (a full disk,
    say) raises ``DeliveryError``, and the part of the batch that did reach the file is cut
    off again, so a retry does not write a line twice.
    """

    kinds = ALL_KINDS

    def __init__(self, directory: Path, max_bytes: int, max_age: float = 300.0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.name = f"file:{directory}"
        self._file: IO[bytes] | None = None
        self._written = 0
        self._opened_at = 0.0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="flagpost-file-sink")
        self._ager: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._in_thread(self.directory.mkdir, parents=True, exist_ok=True)
        await self._in_thread(close_orphans, self.directory)
        self._ager = asyncio.create_task(self._close_when_old(), name="flagpost-file-ager")

    async def send(self, batch: Batch) -> None:
        try:
            await self._in_thread(self._write, batch.lines)
        except OSError as error:
            raise DeliveryError(f"cannot write to {self.directory}: {error}") from None

    def _write(self, lines: tuple[str, ...]) -> None:
        """Append ``lines`` as JSON lines, a piece of ``PIECE_LINES`` at a time: a batch's
        text made whole is hundreds of kilobytes of fresh memory, each of its cache lines a
        miss, while pieces reuse the same few tens of kilobytes, still in cache."""
        if self._file is None or self._written >= self.max_bytes or self._old():
            self._rotate()
        file = self._file
        assert file is not None
        start = file.tell()
        size = 0
        try:  # unbuffered: what failed to be written is not left in a buffer to go later
            for first in range(0, len(lines), PIECE_LINES):
                data = "\n".join([*lines[first : first + PIECE_LINES], ""]).encode()
                view, written = memoryview(data), 0
                while written < len(view):
                    written += file.write(view[written:]) or 0
                size += written
        except OSError:
            with contextlib.suppress(OSError):  # no half batch left for the retry to repeat
                file.truncate(start)
                file.seek(start)
            raise
        self._written += size

    def _old(self) -> bool:
        return time.monotonic() - self._opened_at >= self.max_age

    def _rotate(self) -> None:
        self._finish()
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.directory / f"events-{stamp}-{os.getpid()}.jsonl{OPEN_SUFFIX}"
        file = path.open("ab", buffering=0)
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file, self._written, self._opened_at = file, 0, time.monotonic()

    def _finish(self) -> None:
        """Close the current file, if any, and make it a ``.jsonl`` (in the sink's thread)."""
        finished, self._file = self._file, None
        if finished is not None:
            _sync_and_close(finished)

    def _finish_if_old(self) -> None:
        if self._file is not None and self._old():
            self._finish()

    async def _close_when_old(self) -> None:
        while True:
            await asyncio.sleep(min(self.max_age / 4, 5.0))
            try:
                await self._in_thread(self._finish_if_old)
            except OSError as error:  # a full disk, say: the next write or check tries again
                log.warning("events_file_not_closed", sink=self.name, error=str(error))

    async def close(self) -> None:
        if self._ager is not None:
            self._ager.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ager
        try:
            await self._in_thread(self._finish)
        except OSError as error:
            raise DeliveryError(f"cannot close a file of {self.directory}: {error}") from None
        finally:
            self._thread.shutdown(wait=False)

    async def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, partial(function, *args, **kwargs))


def close_orphans(directory: Path) -> list[Path]:
    """Close the ``.jsonl.open`` files of ``directory`` no live process holds (their writer
    died): renamed to ``.jsonl``, a truncated last line and all. Returns the closed files."""
    closed = []
    for path in sorted(directory.glob(f"*.jsonl{OPEN_SUFFIX}")):
        descriptor = try_lock(path)
        if descriptor is None:  # a live writer holds it, or closed it meanwhile
            continue
        try:
            target = path.with_name(path.name.removesuffix(OPEN_SUFFIX))
            path.rename(target)  # under the lock: a sibling doing the same skips it
            closed.append(target)
        finally:
            os.close(descriptor)
    if closed:
        sync_directory(directory)
    return closed


def _sync_and_close(file: IO[bytes]) -> None:
    """fsync, rename ``x.jsonl.open`` to ``x.jsonl`` (still holding the lock), close."""
    try:
        file.flush()
        os.fsync(file.fileno())
        path = Path(str(file.name))
        if path.name.endswith(OPEN_SUFFIX):
            path.rename(path.with_name(path.name.removesuffix(OPEN_SUFFIX)))
            sync_directory(path.parent)
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
    file_max_age: float = 300.0,
) -> Sink:
    """A sink from one entry of ``FLAGPOST_EVENTS``; ValueError says what is wrong with it."""
    if spec.startswith("file:"):
        directory = spec.removeprefix("file:")
        if not directory:
            raise ValueError(f"{spec!r} names no directory (write file:<dir>)")
        return FileSink(Path(directory), file_max_bytes, file_max_age)
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
