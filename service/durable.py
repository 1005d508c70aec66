"""Files shared between processes: durable renames (``sync_directory``) and ``flock`` locks,
which the kernel releases however their holder ends, so a crash never leaves a stale one.

``lock_file`` takes a lock file of one's own (a spool directory's, a worker slot's, a lake's)
and writes the holder's pid in it for whoever finds it taken; ``try_lock`` takes the lock of
a file another process may be writing (an event file), reading nothing and writing nothing.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["Held", "lock_file", "sync_directory", "try_lock"]


class Held(Exception):
    """Another live process holds the lock; ``holder`` is the pid it wrote (or unknown)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by process {holder}")
        self.holder = holder


def lock_file(path: Path) -> int:
    """Create ``path`` if need be and lock it without waiting; the descriptor, which holds
    the lock until it is closed. Raises ``Held`` naming the holder, ``OSError`` if the file
    cannot be opened."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise Held(path, holder) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


def try_lock(path: Path) -> int | None:
    """Lock the existing file ``path`` without waiting; the descriptor holding the lock, or
    None when a live process holds it or the file is gone."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def sync_directory(directory: Path) -> None:
    """fsync ``directory``: a file created or renamed in it is known to the disk only then."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
