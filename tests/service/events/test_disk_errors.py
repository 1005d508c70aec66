"""A real full disk (a small tmpfs) under the file sink and the spool: nothing accepted is lost,
nothing crashes, and delivery resumes by itself once there is room again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.events.sinks import FileSink
from tests.service.conftest import DEMO
from tests.service.events.test_delivery import conversion, eventually, make_pipeline, sample


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (mounting needs root, as CI runs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
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


def test_a_real_process_on_a_full_disk_answers_every_decision_and_exits_cleanly(
    small_disk: Path,
) -> None:
    """flagpost with its event files and spool on a full disk: no decision answers 500,
    SIGTERM exits 0 once there is room, and every accepted exposure is in the event files or
    the spool (which the next start delivers)."""
    from tests.service.process import start_service

    process, base = start_service(
        small_disk.parent,  # its log and cache, off the full disk
        DEMO,
        FLAGPOST_EVENTS=f"file:{small_disk / 'events'}",
        FLAGPOST_SPOOL_DIR=str(small_disk / "spool"),
        FLAGPOST_SINK_TIMEOUT="0.2",
        FLAGPOST_FLUSH_INTERVAL="0.1",
    )
    filler = fill(small_disk)
    statuses: dict[int, int] = {}
    try:
        for number in range(600):
            url = f"{base}/v1/flags/holiday_theme/decision?visitor_code=visitor-{number}"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
            statuses[status] = statuses.get(status, 0) + 1
        deadline = time.monotonic() + 30
        while "flagpost_events_io_errors_total{" not in metrics(base):  # the spool failed too
            assert time.monotonic() < deadline, "the spool never met the full disk"
            time.sleep(0.1)
        with urllib.request.urlopen(f"{base}/v1/config", timeout=10) as response:
            sinks = json.loads(response.read())["events"]["sinks"]
        filler.unlink()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert {200: 600} == statuses
    assert False is sinks[0]["healthy"]
    assert 0 == process.returncode
    rows = [
        json.loads(line)
        for path in [*small_disk.glob("events/*.jsonl"), *small_disk.glob("spool/*/*.jsonl")]
        for line in path.read_text().splitlines()
    ]
    assert {f"visitor-{number}" for number in range(600)} == {row["visitor_id"] for row in rows}


def metrics(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        return str(response.read().decode())
