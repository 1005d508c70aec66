"""The export's inputs: the event files the file sinks closed, and which of them the lake has.

A file sink writes ``*.jsonl.open`` and renames it ``*.jsonl`` once closed
(``service.events.sinks``); only closed files are read. An ``.open`` file no live process
holds (its writer died) counts as closed too, without being renamed: the export may only
read the replicas' directories. Files still open are reported with the time they were
opened, since a day is complete only once no open file can still hold its events.

A file is known by its fingerprint (its name without ``.open``, its size, and a hash of its
first and last 64 KiB), not its path: the directories may be mounted elsewhere next time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import xxhash

from service.durable import try_lock
from service.events.files import OPEN_SUFFIX
from service.export import InputUnreadable

__all__ = ["InputFile", "Inputs", "Manifest", "find_inputs"]

_EDGE = 64 * 1024


@dataclass(frozen=True, slots=True)
class InputFile:
    path: Path
    size: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Inputs:
    closed: tuple[InputFile, ...]
    #: When each file still being written was opened (seconds since the epoch).
    open_since: tuple[float, ...]


def find_inputs(directories: list[Path]) -> Inputs:
    """The closed files under ``directories`` (recursively, in name order) and the opening
    times of the open ones; ``InputUnreadable`` if a directory cannot be read."""
    closed: list[InputFile] = []
    open_since: list[float] = []
    for directory in directories:
        if not directory.is_dir():
            raise InputUnreadable(f"{directory}: not a directory that can be read")
        try:
            paths = sorted(directory.rglob("*.jsonl*"))
        except OSError as error:
            raise InputUnreadable(f"{directory}: {error.strerror}") from None
        for path in paths:
            if path.name.endswith(".jsonl"):
                closed.append(_input(path))
            elif path.name.endswith(".jsonl" + OPEN_SUFFIX):
                if _held(path):
                    open_since.append(_opened_at(path))
                else:
                    closed.append(_input(path))
    return Inputs(tuple(closed), tuple(open_since))


def _input(path: Path) -> InputFile:
    try:
        size = path.stat().st_size
        digest = xxhash.xxh3_64(path.name.removesuffix(OPEN_SUFFIX).encode())
        digest.update(size.to_bytes(8, "little"))
        with path.open("rb") as file:
            digest.update(file.read(_EDGE))
            if size > _EDGE:
                file.seek(max(_EDGE, size - _EDGE))
                digest.update(file.read(_EDGE))
    except OSError as error:
        raise InputUnreadable(f"{path}: {error.strerror}") from None
    return InputFile(path, size, digest.hexdigest())


def _held(path: Path) -> bool:
    """A live writer holds it (or it was closed meanwhile: the next run takes it)."""
    descriptor = try_lock(path)
    if descriptor is None:
        return True
    os.close(descriptor)
    return False


def _opened_at(path: Path) -> float:
    """The time in the file's name (``events-<time>-<pid>``), else its change time."""
    try:
        stamp = path.name.split("-")[1]
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC).timestamp()
    except (IndexError, ValueError):
        return path.stat().st_ctime


class Manifest:
    """The input files the lake has taken, by fingerprint."""

    def __init__(self, entries: dict[str, dict[str, object]]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, path: Path) -> Manifest:
        if not path.exists():
            return cls({})
        loaded: dict[str, dict[str, object]] = orjson.loads(path.read_bytes())
        return cls(loaded)

    def __contains__(self, file: InputFile) -> bool:
        return file.fingerprint in self.entries

    def add(self, file: InputFile, run: str) -> None:
        self.entries[file.fingerprint] = {
            "name": file.path.name.removesuffix(OPEN_SUFFIX),
            "size": file.size,
            "run": run,
        }

    def dumps(self) -> bytes:
        return orjson.dumps(self.entries, option=orjson.OPT_SORT_KEYS)
