"""Worker slots: the lowest free one, held until the process that claimed it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.workers.slots import claim_slot

HOLD = """
import sys, time
from pathlib import Path
from service.workers.slots import claim_slot
print(claim_slot(Path(sys.argv[1])).number, flush=True)
time.sleep(60)
"""


def hold_a_slot(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A process that claims a slot of ``root`` and keeps it; with the slot's number."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    return holder, int(holder.stdout.readline())


def test_a_dead_workers_slot_is_the_next_one_claimed(tmp_path: Path) -> None:
    """Slots are taken lowest first; the slot of a process that was killed is free again,
    and the next claim takes it rather than a new one."""
    first, first_number = hold_a_slot(tmp_path)
    second, second_number = hold_a_slot(tmp_path)
    try:
        assert (0, 1) == (first_number, second_number)
        first.kill()
        first.wait()
        freed, new = claim_slot(tmp_path), claim_slot(tmp_path)
        os.close(freed.descriptor)
        os.close(new.descriptor)
        assert 0 == freed.number
        assert tmp_path / "worker-2" == new.spool_dir
    finally:
        for holder in (first, second):
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()
