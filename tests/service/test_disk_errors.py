"""A real full disk (a small tmpfs) under the file sink and the spool: nothing accepted is lost,
nothing crashes, and delivery resumes by itself once there is room again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.events.sinks import FileSink
from tests.service.test_delivery import conversion, eventually, make_pipeline, sample


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted for the test (mounting needs root, as CI runs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the file that holds the space."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    return filler


async def test_a_full_disk_loses_nothing_and_recovers_by_itself(small_disk: Path) -> None:
    """With sink and spool on a full disk, events wait in memory, errors are counted and the
    sink reported unhealthy; once space is freed, every event reaches the file, once."""
    sink = FileSink(small_disk / "events", max_bytes=10**6)
    pipeline = make_pipeline(small_disk, [sink], spool_dir=small_disk / "spool", retry_timeout=0.2)
    await pipeline.start()
    worker = pipeline.workers[0]
    filler = fill(small_disk)
    sent = []
    for _ in range(30):
        record = conversion()
        sent.append(record["uuid"])
        pipeline.accept(record)
        await asyncio.sleep(0.01)
    await eventually(
        lambda: sample(pipeline, "flagpost_events_io_errors_total", sink=worker.name) > 0
    )
    assert False is worker.health()["healthy"]
    assert 0 == sample(
        pipeline, "flagpost_events_dropped_total", kind="conversion", sink=worker.name
    )
    filler.unlink()
    await eventually(lambda: worker.delivered == len(sent) and not worker.outbox, within=60)
    await pipeline.stop()
    lines = [
        json.loads(line)["uuid"]
        for path in sorted((small_disk / "events").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert sent == lines
    health = worker.health()
    assert (True, None) == (health["healthy"], health["last_error"])
    assert health["previous_error"] is not None
