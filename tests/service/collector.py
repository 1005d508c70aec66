"""A real HTTP event collector on 127.0.0.1, in a thread, that can fail on purpose.

It keeps every body it accepted. Until ``failures`` runs out it answers ``fail_status`` (with
``Retry-After`` when set); ``down = True`` makes it fail until set back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Collector:
    url: str = ""
    down: bool = False
    failures: int = 0
    fail_status: int = 500
    retry_after: str | None = None
    #: While set, every request waits (up to a minute) before it is answered: a hanging collector.
    hang: threading.Event = field(default_factory=threading.Event)
    accepted: list[Any] = field(default_factory=list)
    #: (monotonic time, status) of every request, in order.
    attempts: list[tuple[float, int]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.headers.append(headers)
            if self.down or self.failures > 0:
                self.failures = max(0, self.failures - 1)
                status = self.fail_status
                extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            else:
                self.accepted.append(json.loads(body))
                status, extra = 200, {}
            self.attempts.append((time.monotonic(), status))
            return status, extra

    def records(self) -> list[dict[str, Any]]:
        """Every record received, in order (native format: each body is a list of records)."""
        with self.lock:
            return [record for body in self.accepted for record in body]


@contextmanager
def running_collector() -> Iterator[Collector]:
    state = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            deadline = time.monotonic() + 60
            while state.hang.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            status, extra = state.answer(body, dict(self.headers))
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/collect"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
