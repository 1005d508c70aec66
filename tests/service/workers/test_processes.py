"""``flagpost serve --workers N`` as real processes: gunicorn's arbiter, flagpost's workers, a
real ``redis-server`` for their visitor store and a real collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.workers.worker import HEARTBEAT
from tests.service.collector import running_collector
from tests.service.conftest import DEMO
from tests.service.process import (
    free_port,
    running_service,
    service_env,
    wait_ready,
    workers_of,
)

FR_PHONE = {"geo": {"country": "FR"}, "device": "phone"}


def decide(base: str, visitor: str = "v-1") -> dict[str, object]:
    """new_checkout for a French phone: a delivery to everyone, so one exposure a visitor."""
    request = urllib.request.Request(
        f"{base}/v1/flags/new_checkout/decision",
        data=json.dumps({"visitor_code": visitor, "context": FR_PHONE}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


def eventually(check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


@contextmanager
def running_workers(
    tmp: Path, count: int, **extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``flagpost serve --workers count``, ready and with all its workers up; killed after
    the block if the block did not stop it."""
    port = free_port()
    log = tmp / "flagpost.log"
    env = service_env(tmp, DEMO, port, **extra)
    command = [sys.executable, "-m", "service", "serve", "--workers", str(count)]
    with log.open("ab") as output:
        arbiter = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, arbiter, log)
        eventually(lambda: len(workers_of(arbiter.pid)) == count)
        yield arbiter, base
    finally:
        if arbiter.poll() is None:
            arbiter.kill()
            arbiter.wait()


def metric(base: str, name: str, **labels: str) -> float:
    """A sample of the server's ``/metrics`` (0 if absent)."""
    text = get(f"{base}/metrics").decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def exposures_in(directory: Path) -> list[dict[str, object]]:
    """Every exposure record in the JSON Lines files under ``directory``."""
    records = [
        json.loads(line)
        for path in sorted(directory.rglob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]
    return [record for record in records if record.get("kind") == "decision"]


def test_workers_answer_are_replaced_when_they_die_sum_metrics_and_drain_on_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    """Two workers answer on one port; /metrics on either counts both; one killed is
    replaced while the other answers; SIGTERM drains both (every exposure is in the event
    files) and the server exits 0."""
    with running_workers(tmp_path, 2, FLAGPOST_VISITORS=redis_url) as (arbiter, base):
        assert 2 == json.loads(get(f"{base}/v1/config"))["workers"]
        for number in range(30):
            assert "new_checkout" == decide(base, f"before-{number}")["flag"]
        route = {"route": "/v1/flags/{flag}/decision", "status": "200"}
        eventually(lambda: metric(base, "flagpost_http_requests_total", **route) == 30)
        eventually(lambda: metric(base, "flagpost_workers") == 2)
        time.sleep(2 * HEARTBEAT)  # each worker has published its counts since (a kill loses
        # what a worker counted after its last publication, at most a second's)
        killed = min(workers_of(arbiter.pid))
        os.kill(killed, signal.SIGKILL)
        answered = [decide(base, f"after-{number}")["flag"] for number in range(20)]
        eventually(lambda: len(workers_of(arbiter.pid) - {killed}) == 2)
        assert ["new_checkout"] * 20 == answered
        assert killed not in workers_of(arbiter.pid)
        # What the killed worker had counted and published stays counted.
        eventually(lambda: metric(base, "flagpost_http_requests_total", **route) == 50)
        arbiter.send_signal(signal.SIGTERM)
        assert 0 == arbiter.wait(timeout=60)
        assert set() == workers_of(arbiter.pid)
    visitors = {record["visitor_id"] for record in exposures_in(tmp_path / "events")}
    assert {f"after-{number}" for number in range(20)} <= visitors


def test_a_dead_workers_spool_is_replayed_by_its_successor(tmp_path: Path, redis_url: str) -> None:
    """Exposures spooled while the collector was down, by workers then killed, reach the
    collector through the workers that replaced them (delivery is at least once: a batch
    whose answer came too late is sent again, with the same uuids)."""
    with running_collector() as collector:
        collector.down = True
        with running_workers(
            tmp_path,
            2,
            FLAGPOST_VISITORS=redis_url,
            FLAGPOST_EVENTS=collector.url,
            FLAGPOST_SINK_TIMEOUT="1",
            FLAGPOST_FLUSH_INTERVAL="0.1",
        ) as (arbiter, base):
            for number in range(40):
                decide(base, f"visitor-{number}")
            spool = tmp_path / "spool"
            eventually(lambda: len(exposures_in(spool)) == 40)
            for worker in workers_of(arbiter.pid):
                os.kill(worker, signal.SIGKILL)
            collector.down = False
            eventually(lambda: len(collector.records()) >= 40)
            eventually(lambda: exposures_in(spool) == [])
            arbiter.send_signal(signal.SIGTERM)
            assert 0 == arbiter.wait(timeout=60)
    delivered = {record["uuid"]: record["visitor_id"] for record in collector.records()}
    assert sorted(f"visitor-{number}" for number in range(40)) == sorted(delivered.values())


def test_a_second_server_on_the_spool_directory_is_refused_with_one_line(
    tmp_path: Path, redis_url: str
) -> None:
    """A server with workers on a spool directory another server uses stops at once, saying
    why, before it forks a worker."""
    with running_service(tmp_path, DEMO):
        env = service_env(tmp_path, DEMO, free_port(), FLAGPOST_VISITORS=redis_url)
        result = subprocess.run(
            [sys.executable, "-m", "service", "serve", "--workers", "2"],
            env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert 1 == result.returncode
    assert result.stderr.strip().splitlines()[-1].startswith("flagpost: the spool directory")


def test_workers_that_cannot_start_stop_the_server_with_the_reason(
    tmp_path: Path, redis_url: str
) -> None:
    """A worker slot that cannot be a spool (a file is in its place): the workers cannot
    start, and the server stops (non-zero) with the reason logged instead of restarting
    workers that would fail the same way."""
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "worker-0").write_text("not a directory")
    env = service_env(tmp_path, DEMO, free_port(), FLAGPOST_VISITORS=redis_url)
    log = tmp_path / "flagpost.log"
    with log.open("ab") as output:
        arbiter = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--workers", "2"],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert 0 != arbiter.wait(timeout=60)
    finally:
        if arbiter.poll() is None:
            arbiter.kill()
            arbiter.wait()
    written = log.read_text(errors="replace")
    assert "worker_failed_to_start" in written
    assert "worker-0" in written
