"""Replicas sharing a Redis: a webhook accepted by one is a replay to every other."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.service.conftest import DEMO
from tests.service.process import running_service

SECRET = "replica-webhook-secret"


def _send(base: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
    request = urllib.request.Request(
        base + "/v1/webhooks/refresh", body, {**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]["code"]


def test_a_webhook_replayed_to_another_replica_is_refused(tmp_path: Path, redis_url: str) -> None:
    """Accepted by one process, the same signed request is refused by the other."""
    body = b'{"event": "rules.updated"}'
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"X-Flagpost-Timestamp": stamp, "X-Flagpost-Signature": f"sha256={digest}"}
    shared = {"FLAGPOST_REDIS_URL": redis_url, "FLAGPOST_WEBHOOK_SECRET": SECRET}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with (
        running_service(tmp_path / "one", DEMO, **shared) as one,
        running_service(tmp_path / "two", DEMO, **shared) as two,
    ):
        assert (202, None) == _send(one, body, headers)
        assert (401, "WEBHOOK_REPLAYED") == _send(two, body, headers)
        assert (401, "WEBHOOK_REPLAYED") == _send(one, body, headers)
