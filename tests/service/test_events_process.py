"""The real ``flagpost`` process: SIGTERM delivers every queued exposure, and a restart
replays what an unreachable collector left in the spool."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import rules
from tests.service.collector import running_collector
from tests.service.conftest import DEMO
from tests.service.process import start_service

FR_PHONE = {"geo": {"country": "FR"}, "device": "phone"}
RULESET = rules.load(DEMO.read_bytes())


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    return start_service(tmp_path, DEMO, **env)


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def decide_all(base: str, visitor: str) -> None:
    body = json.dumps({"visitor_code": visitor, "context": FR_PHONE}).encode()
    request = urllib.request.Request(f"{base}/v1/decide", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert 200 == response.status


def expected_exposures(visitors: list[str]) -> list[tuple[str, str, str]]:
    found = []
    for visitor in visitors:
        for flag in RULESET.flag_keys:
            decision = RULESET.decide(flag, visitor, FR_PHONE)
            if decision.rule is not None:
                found.append((visitor, flag, decision.variation))
    return sorted(found)


def exposures_in(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted(
        (r["visitor_id"], r["flag"], r["variation"]) for r in records if r["kind"] == "decision"
    )


def test_sigterm_delivers_every_queued_exposure_to_the_file_sink(tmp_path: Path) -> None:
    """Exposures still queued at SIGTERM (no flush was due) are all in the file sink after."""
    process, base = start(tmp_path, FLAGPOST_BATCH_SIZE="100000", FLAGPOST_FLUSH_INTERVAL="3600")
    visitors = [f"sigterm-{number}" for number in range(150)]
    try:
        for visitor in visitors:
            decide_all(base, visitor)
    finally:
        code = stop(process)
    assert 0 == code
    files = sorted((tmp_path / "events").glob("*.jsonl"))
    records = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    expected = expected_exposures(visitors)
    assert len(expected) > len(visitors)  # several flags with rules per visitor
    assert expected == exposures_in(records)
    assert len(records) == len({record["uuid"] for record in records})


def test_a_restart_replays_what_the_collector_could_not_take(tmp_path: Path) -> None:
    """Exposures for a collector that is down are spooled at stop and delivered after a
    restart, once it is back; none is lost."""
    with running_collector() as collector:
        collector.down = True
        settings = {
            "FLAGPOST_EVENTS": collector.url,
            "FLAGPOST_SINK_TIMEOUT": "0.3",
            "FLAGPOST_DRAIN_TIMEOUT": "1",
            "FLAGPOST_FLUSH_INTERVAL": "0.1",
            "FLAGPOST_BATCH_SIZE": "20",
        }
        process, base = start(tmp_path, **settings)
        visitors = [f"replay-{number}" for number in range(40)]
        try:
            for visitor in visitors:
                decide_all(base, visitor)
        finally:
            assert 0 == stop(process)
        spooled = list((tmp_path / "spool").rglob("*.jsonl"))
        assert spooled
        assert [] == collector.records()

        collector.down = False
        process, base = start(tmp_path, **settings)
        try:
            deadline = time.monotonic() + 20
            while exposures_in(collector.records()) != expected_exposures(visitors):
                assert time.monotonic() < deadline, "the spool was not replayed"
                time.sleep(0.05)
        finally:
            assert 0 == stop(process)
    assert [] == list((tmp_path / "spool").rglob("*.jsonl"))
