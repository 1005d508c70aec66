"""The spool: batches a sink could not take yet, kept on disk until it can.

Each batch is one file of JSON lines, written once under a temporary name, flushed to disk and
renamed: a crash leaves either the whole batch or none of it, never half. Names are sequence
numbers, so batches are replayed in the order they were spooled, after a restart too. A
delivered batch's file is removed. A batch that does not fit under ``max_bytes`` is refused
(``write`` returns False) and the caller counts and logs it: that is the one way accepted events
can be dropped, and it is never silent.

Batches a collector rejected as malformed (a 4xx other than 408 and 429) are moved aside to
``rejected/`` for a person to look at: replaying them would fail forever and block the rest;
so is a spool file that cannot be read back as records (``unreadable/``).

The methods block on the disk; the delivery worker calls them in a thread. Disk errors
(a full disk, say) are raised as ``OSError``: the caller keeps the batch and tries again.

``SpoolLock`` makes a spool directory one process's: a second flagpost started on the same
directory would number its files over the first one's. Under ``flagpost serve --workers N``
each worker spools in ``<spool dir>/worker-<k>``; ``adopt_spools`` moves batches a layout no
longer in use left behind (a single process's, or a worker slot beyond N) into one in use, so
they are replayed rather than forgotten.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import orjson

from service.durable import Held, lock_file, sync_directory
from service.events.records import Batch

__all__ = ["WORKER_PREFIX", "Spool", "SpoolLock", "SpoolLocked", "adopt_spools"]


class SpoolLocked(Exception):
    """Another process holds the spool directory."""


class SpoolLock:
    """An exclusive lock on a spool directory for as long as this process holds it open.

    ``flock`` is released by the kernel when the process ends, however it ends, so a crash
    never leaves a stale lock behind."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``SpoolLocked`` naming who has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._descriptor = lock_file(self.path)
        except Held as held:
            raise SpoolLocked(
                f"the spool directory {self.path.parent} is in use by another flagpost "
                f"process (pid {held.holder}); give each process its own FLAGPOST_SPOOL_DIR"
            ) from None

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing releases the flock
            self._descriptor = None


_SUFFIX = ".jsonl"
#: The name of a worker's spool directory inside the spool directory is this and its slot.
WORKER_PREFIX = "worker-"


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: list[tuple[Path, int]] = []  # (path, size) in order
        self.bytes = 0
        self._next = 1
        self._opened = False

    def open(self) -> None:
        """Find what an earlier run left; remove half-written files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        files = sorted(self.directory.glob(f"*{_SUFFIX}"))
        self._files = [(path, path.stat().st_size) for path in files]
        self.bytes = sum(size for _, size in self._files)
        self._next = int(files[-1].stem) + 1 if files else 1
        self._opened = True

    def __len__(self) -> int:
        return len(self._files)

    def append(self, batch: Batch) -> Path | None:
        """Write ``batch`` durably at the end; its file, or None (and nothing written) if it
        would pass the cap. Raises ``OSError`` when the disk fails (nothing is left of it)."""
        return self._append(batch, capped=True)

    def _append(self, batch: Batch, *, capped: bool) -> Path | None:
        if not self._opened:
            self.open()
        data = batch.json_lines()
        with self._lock:
            if capped and self.bytes + len(data) > self.max_bytes:
                return None
            number, self._next = self._next, self._next + 1
            path = self.directory / f"{number:020d}{_SUFFIX}"
            self.bytes += len(data)  # reserved: writes in two threads stay under the cap
        temporary = path.with_suffix(".tmp")
        try:
            with temporary.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            temporary.rename(path)
            sync_directory(self.directory)
        except OSError:
            with self._lock:
                self.bytes -= len(data)
            with contextlib.suppress(OSError):  # a full disk leaves no half batch behind
                temporary.unlink(missing_ok=True)
            raise
        with self._lock:  # known only once it is whole on disk; numbers keep the order
            self._files.append((path, len(data)))
            self._files.sort()
        return path

    def head(self) -> tuple[Path, Batch | None] | None:
        """The oldest batch, without removing it; ``(path, None)`` when its file holds no
        records that can be read (the caller sets it aside with ``remove``)."""
        with self._lock:
            if not self._files:
                return None
            path = self._files[0][0]
        data = path.read_bytes()
        try:
            lines = [line for line in data.decode().splitlines() if line]
            kinds = tuple([orjson.loads(line)["kind"] for line in lines])
            return path, Batch(tuple(lines), kinds)
        except (UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError):
            return path, None

    def remove(self, path: Path, *, aside: str | None = None) -> None:
        """Forget a delivered batch, or move it to the folder ``aside`` (``rejected``,
        ``unreadable``) for a person to look at."""
        if aside:
            folder = self.directory / aside
            folder.mkdir(exist_ok=True)
            path.rename(folder / path.name)
        else:
            path.unlink(missing_ok=True)
        with self._lock:  # forgotten only once the disk agrees
            for index, (known, size) in enumerate(self._files):
                if known == path:
                    del self._files[index]
                    self.bytes -= size
                    break

    def reject(self, batch: Batch) -> None:
        """Keep a batch the collector refused (one never spooled), outside the replay order:
        written like any other, then set aside. The cap does not apply: it is kept for a
        person to look at, not replayed."""
        path = self._append(batch, capped=False)
        assert path is not None
        self.remove(path, aside="rejected")


def adopt_spools(sources: list[Path], into: Path) -> int:
    """Move the batches of every sink spool under each of ``sources`` (worker directories
    skipped) into the same sink's spool under ``into``, numbered after the batches there, in
    their order; returns how many moved. The caller holds the locks of all of them. Batches
    set aside (``rejected/``, ``unreadable/``) stay where a person may be looking at them."""
    moved = 0
    for source in sources:
        if not source.is_dir():
            continue
        for sink in sorted(source.iterdir()):
            if not sink.is_dir() or sink.name.startswith(WORKER_PREFIX):
                continue
            batches = sorted(sink.glob(f"*{_SUFFIX}"))
            if not batches:
                continue
            target = into / sink.name
            target.mkdir(parents=True, exist_ok=True)
            present = sorted(target.glob(f"*{_SUFFIX}"))
            number = int(present[-1].stem) + 1 if present else 1
            for batch in batches:
                batch.rename(target / f"{number:020d}{_SUFFIX}")
                number += 1
                moved += 1
            sync_directory(target)
            sync_directory(sink)
    return moved
