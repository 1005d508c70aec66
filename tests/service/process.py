"""Running the real ``flagpost serve`` process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

READY_WITHIN = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_env(tmp: Path, rules: dict[str, Any] | Path, port: int, **extra: str) -> dict[str, str]:
    if isinstance(rules, dict):
        path = tmp / "rules.json"
        path.write_text(json.dumps(rules))
    else:
        path = rules
    return {
        **os.environ,
        "FLAGPOST_RULES": str(path),
        "FLAGPOST_PORT": str(port),
        "FLAGPOST_CACHE_DIR": str(tmp / "cache"),
        "FLAGPOST_EVENTS": f"file:{tmp / 'events'}",
        "FLAGPOST_SPOOL_DIR": str(tmp / "spool"),
        "FLAGPOST_LOG_LEVEL": "warning",
        **extra,
    }


def start_service(
    tmp: Path, rules: dict[str, Any] | Path, **extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m service`` (which serves by default); return it and its base URL
    once ready."""
    port = free_port()
    log = tmp / "flagpost.log"  # a file, not a pipe: an unread pipe could block the server
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=service_env(tmp, rules, port, **extra),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, process, log)
    return process, base


@contextmanager
def running_service(tmp: Path, rules: dict[str, Any] | Path, **extra: str) -> Iterator[str]:
    """``start_service`` for the length of a block, stopped with SIGTERM after it."""
    process, base = start_service(tmp, rules, **extra)
    try:
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            raise AssertionError(f"flagpost exited with {process.returncode}: {output}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("flagpost did not become ready")


def workers_of(parent: int) -> set[int]:
    """The live (not zombie) child processes of ``parent``: a server's workers."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                children.add(int(entry.name))
    return children
