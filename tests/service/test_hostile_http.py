"""Hostile bytes on the wire, sent to a real ``flagpost serve``: each gets a 4xx in the JSON
error shape, never a 500, a traceback or an echo of what was sent."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import DEMO
from tests.service.process import running_service

KEY = "k" * 20
SECRET = "webhook-secret"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real flagpost with API keys, the webhook on, and a 1 s body timeout."""
    tmp = tmp_path_factory.mktemp("hostile")
    with running_service(
        tmp,
        DEMO,
        FLAGPOST_API_KEYS=KEY,
        FLAGPOST_WEBHOOK_SECRET=SECRET,
        FLAGPOST_BODY_TIMEOUT="1",
        FLAGPOST_LOG_LEVEL="info",
    ) as base:
        yield base, tmp / "flagpost.log"


def exchange(base: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes and read one answer: its status, headers and body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            received += connection.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        while len(body) < int(headers["content-length"]):
            body += connection.recv(65536)
    return int(status_line.split()[1]), headers, body


def request(method: str, path: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: flagpost", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


BODY = b'{"visitor_code": "v1"}'
DECIDE = "/v1/flags/dark_mode/decision"


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("X-API-Key not UTF-8", request("POST", DECIDE, b"X-API-Key: \xff\xfe", body=BODY), 401, "UNAUTHORIZED"),
        ("Bearer token not UTF-8", request("POST", DECIDE, b"Authorization: Bearer \xc3\x28", body=BODY), 401, "UNAUTHORIZED"),
        ("signature not UTF-8", request("POST", "/v1/webhooks/refresh", b"X-Flagpost-Signature: sha256=\xff", body=b"{}"), 401, "UNAUTHORIZED"),
        ("bogus gzip body", request("POST", DECIDE, f"X-API-Key: {KEY}".encode(), b"Content-Encoding: gzip", body=BODY), 400, "INVALID_REQUEST"),
        ("bogus deflate webhook", request("POST", "/v1/webhooks/refresh", b"Content-Encoding: deflate", body=b"nonsense"), 400, "INVALID_REQUEST"),
        ("control byte in a header name", request("GET", "/healthz", b"Bad\x01Header: <script>alert(1)</script>"), 400, "MALFORMED_HTTP"),
        ("broken Content-Length", b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 12<b>\r\n\r\n", 400, "MALFORMED_HTTP"),
        ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03<script>\r\n\r\n", 400, "MALFORMED_HTTP"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else "",
)  # fmt: skip
def test_hostile_requests_get_a_json_4xx(
    service: tuple[str, Path], name: str, data: bytes, status: int, code: str
) -> None:
    """Each hostile request is answered with its status and stable code as JSON, echoing nothing."""
    base, _ = service
    answered, headers, body = exchange(base, data)
    assert (status, code) == (answered, json.loads(body)["error"]["code"]), name
    assert headers["content-type"].startswith("application/json")
    assert b"script" not in body
    assert b"\xff" not in body


def test_a_stalled_body_is_answered_408_and_closed(service: tuple[str, Path]) -> None:
    """A body that announces 100 bytes and sends 5 gets 408 after the body timeout, not a hang."""
    base, _ = service
    head = f"POST {DECIDE} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Length: 100\r\n\r\n"
    started = time.monotonic()
    status, headers, body = exchange(base, head.encode() + b'{"vis')
    assert (408, "REQUEST_TIMEOUT") == (status, json.loads(body)["error"]["code"])
    assert "close" == headers.get("connection", "").lower()
    assert time.monotonic() - started < 9  # the body timeout (1 s), not keep-alive's 75 s


def test_a_well_signed_webhook_still_works(service: tuple[str, Path]) -> None:
    """The signature check that refuses bad bytes still accepts a good signature."""
    base, _ = service
    body = b'{"event": "rules.updated"}'
    stamp = str(int(time.time()))
    signed = f"{stamp}.".encode() + body
    signature = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    stamped, signed_by = f"X-Flagpost-Timestamp: {stamp}", f"X-Flagpost-Signature: {signature}"
    data = request("POST", "/v1/webhooks/refresh", stamped.encode(), signed_by.encode(), body=body)
    assert 202 == exchange(base, data)[0]


def test_hostile_requests_leave_no_traceback_in_the_log(service: tuple[str, Path]) -> None:
    """What clients got wrong is logged as one line each, without a traceback or an error level."""
    base, log = service
    exchange(base, request("GET", "/healthz", b"Bad\x01Header: x"))
    exchange(
        base,
        request("POST", DECIDE, f"X-API-Key: {KEY}".encode(), b"Content-Encoding: gzip", body=BODY),
    )
    expected = {"request_malformed", "request_body_unreadable"}
    deadline = time.monotonic() + 10
    while True:  # the server writes its log lines after answering
        lines = [json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"]
        if expected <= {line["event"] for line in lines}:
            break
        assert time.monotonic() < deadline, "the log lines never came"
        time.sleep(0.02)
    assert [] == [line for line in lines if "exception" in line or line["level"] == "error"]
