"""Worker slots: which of the spool directory's ``worker-<k>`` directories a worker uses.

A worker claims the lowest slot no live worker holds, with an ``flock`` the kernel releases
however the worker ends; the worker that replaces a dead one therefore takes the dead one's
slot and replays its spool. Slots, not process ids, name the directories, so their number
stays that of the workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.durable import Held, lock_file
from service.events.spool import WORKER_PREFIX

__all__ = ["WorkerSlot", "claim_slot"]


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """A slot this process holds until it ends."""

    number: int
    spool_dir: Path
    descriptor: int


def claim_slot(spool_root: Path) -> WorkerSlot:
    """Claim the lowest free slot of ``spool_root`` (blocks on the disk: call it at start)."""
    spool_root.mkdir(parents=True, exist_ok=True)
    number = 0
    while True:
        path = spool_root / f"{WORKER_PREFIX}{number}.claim"
        try:
            descriptor = lock_file(path)
        except Held:
            number += 1
            continue
        return WorkerSlot(number, spool_root / f"{WORKER_PREFIX}{number}", descriptor)
