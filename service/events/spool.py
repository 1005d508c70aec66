"""The spool: batches a sink could not take yet, kept on disk until it can.

Each batch is one file of JSON lines, written once under a temporary name, flushed to disk and
renamed: a crash leaves either the whole batch or none of it, never half. Names are sequence
numbers, so batches are replayed in the order they were spooled, after a restart too. A
delivered batch's file is removed. A batch that does not fit under ``max_bytes`` is refused
(``write`` returns False) and the caller counts and logs it: that is the one way accepted events
can be dropped, and it is never silent.

Batches a collector rejected as malformed (a 4xx other than 408 and 429) are moved aside to
``rejected/`` for a person to look at: replaying them would fail forever and block the rest.

The methods block on the disk; the delivery worker calls them in a thread.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson

from service.events.records import Batch

__all__ = ["Spool"]

_SUFFIX = ".jsonl"


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

    def write(self, batch: Batch) -> bool:
        """Append ``batch`` durably; False (and nothing written) if it would pass the cap."""
        return self._append(batch, capped=True) is not None

    def _append(self, batch: Batch, *, capped: bool) -> Path | None:
        if not self._opened:
            self.open()
        data = batch.json_lines()
        with self._lock:
            if capped and self.bytes + len(data) > self.max_bytes:
                return None
            number, self._next = self._next, self._next + 1
            path = self.directory / f"{number:020d}{_SUFFIX}"
            self._files.append((path, len(data)))
            self.bytes += len(data)
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temporary.rename(path)
        _sync_directory(self.directory)
        return path

    def head(self) -> tuple[Path, Batch] | None:
        """The oldest batch, without removing it."""
        with self._lock:
            if not self._files:
                return None
            path = self._files[0][0]
        lines = [line for line in path.read_text().splitlines() if line]
        return path, Batch(lines, [orjson.loads(line)["kind"] for line in lines])

    def remove(self, path: Path, *, rejected: bool = False) -> None:
        """Forget a delivered batch (or move a rejected one aside)."""
        with self._lock:
            for index, (known, size) in enumerate(self._files):
                if known == path:
                    del self._files[index]
                    self.bytes -= size
                    break
        if rejected:
            aside = self.directory / "rejected"
            aside.mkdir(exist_ok=True)
            path.rename(aside / path.name)
        else:
            path.unlink(missing_ok=True)

    def reject(self, batch: Batch) -> None:
        """Keep a batch the collector refused (one never spooled), outside the replay order:
        written like any other, then set aside. The cap does not apply: it is kept for a
        person to look at, not replayed."""
        path = self._append(batch, capped=False)
        assert path is not None
        self.remove(path, rejected=True)


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk too.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
