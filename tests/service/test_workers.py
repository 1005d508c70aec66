"""flagpost's shell under gunicorn (``service.workers.ShellWorker``), as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.service.conftest import DEMO
from tests.service.process import free_port, service_env, wait_ready


def workers_of(arbiter: int) -> set[int]:
    """The live child processes of ``arbiter``."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == arbiter and fields[0] != "Z":
                children.add(int(entry.name))
    return children


def decide(base: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"{base}/v1/flags/new_checkout/decision",
        data=json.dumps({"visitor_code": "v-1", "context": {"device": "phone"}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


def test_gunicorn_workers_answer_are_replaced_when_they_die_and_stop_on_sigterm(
    tmp_path: Path,
) -> None:
    """Two workers answer on one port; one killed is replaced while the other answers; the
    arbiter's SIGTERM stops them all and it exits 0."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = service_env(tmp_path, DEMO, port, FLAGPOST_EVENTS="off")
    command = [
        sys.executable, "-m", "gunicorn", "service.workers:create",
        "--worker-class", "service.workers.ShellWorker", "--workers", "2",
        "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "15",
    ]  # fmt: skip
    with log.open("ab") as output:
        arbiter = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, arbiter, log)
        deadline = time.monotonic() + 30
        while len(workers_of(arbiter.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        first = workers_of(arbiter.pid)
        assert 2 == len(first)
        assert "new_checkout" == decide(base)["flag"]
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        answered = [decide(base)["flag"] for _ in range(20)]
        while len(workers_of(arbiter.pid) - {killed}) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        replaced = workers_of(arbiter.pid)
        assert ["new_checkout"] * 20 == answered
        assert 2 == len(replaced)
        assert killed not in replaced
        arbiter.send_signal(signal.SIGTERM)
        assert 0 == arbiter.wait(timeout=30)
        assert set() == workers_of(arbiter.pid)
    finally:
        if arbiter.poll() is None:
            arbiter.kill()
            arbiter.wait()


def test_workers_that_cannot_start_stop_the_arbiter_with_the_reason(tmp_path: Path) -> None:
    """Two workers on one spool: the second cannot take it, and gunicorn stops (non-zero)
    with the reason in its log instead of restarting workers that fail the same way."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = service_env(tmp_path, DEMO, port)  # events on, one spool directory for both
    command = [
        sys.executable, "-m", "gunicorn", "service.workers:create",
        "--worker-class", "service.workers.ShellWorker", "--workers", "2",
        "--bind", f"127.0.0.1:{port}",
    ]  # fmt: skip
    with log.open("ab") as output:
        arbiter = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        assert 0 != arbiter.wait(timeout=60)
    finally:
        if arbiter.poll() is None:
            arbiter.kill()
            arbiter.wait()
    written = log.read_text(errors="replace")
    assert "worker_failed_to_start" in written
    assert "in use" in written or "locked" in written.lower()
