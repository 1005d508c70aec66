"""Replicas sharing a Redis: a webhook accepted by one is a replay to every other."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tests.service.conftest import DEMO
from tests.service.process import free_port, running_service
from tests.service.redis_server import running_redis

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


def _revision(base: str) -> str:
    with urllib.request.urlopen(base + "/v1/config", timeout=10) as response:
        return str(json.loads(response.read())["revision"])


def _eventually(check: Callable[[], bool], what: str, within: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, what
        time.sleep(0.05)
    return time.monotonic() - started


def _signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Flagpost-Timestamp": stamp, "X-Flagpost-Signature": f"sha256={digest}"}


def _with_revision(path: Path, revision: str) -> None:
    document = json.loads(DEMO.read_text())
    document["revision"] = revision
    path.write_text(json.dumps(document))


def test_a_webhook_to_one_replica_refreshes_every_one(tmp_path: Path, redis_url: str) -> None:
    """The rules change; a webhook reaches one process; the other refreshes within a second
    though its own timer is an hour away."""
    rules = tmp_path / "rules.json"
    _with_revision(rules, "first")
    shared = {"FLAGPOST_REDIS_URL": redis_url, "FLAGPOST_WEBHOOK_SECRET": SECRET,
              "FLAGPOST_REFRESH_INTERVAL": "3600"}  # fmt: skip
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with (
        running_service(tmp_path / "one", rules, **shared) as one,
        running_service(tmp_path / "two", rules, **shared) as two,
    ):
        assert ["first", "first"] == [_revision(one), _revision(two)]
        _with_revision(rules, "second")
        body = b'{"event": "rules.updated"}'
        assert (202, None) == _send(one, body, _signed(body))
        took = _eventually(lambda: _revision(two) == "second", "the other replica kept old rules")
        assert took < 5, took  # its own timer is an hour away: only the broadcast explains it
        _eventually(lambda: _revision(one) == "second", "the replica that took it kept old rules")


def test_a_replica_that_lost_redis_catches_up_when_it_returns(tmp_path: Path) -> None:
    """Rules changed while Redis was down (no webhook could be taken then) reach both
    replicas once Redis is back: each refreshes when it subscribes again."""
    port = free_port()
    rules = tmp_path / "rules.json"
    _with_revision(rules, "first")
    shared = {"FLAGPOST_REDIS_URL": f"redis://127.0.0.1:{port}/0",
              "FLAGPOST_WEBHOOK_SECRET": SECRET, "FLAGPOST_REFRESH_INTERVAL": "3600"}  # fmt: skip
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with ExitStack() as stack:
        first_redis = ExitStack()
        first_redis.enter_context(running_redis(tmp_path / "redis-a", port))
        one = stack.enter_context(running_service(tmp_path / "one", rules, **shared))
        two = stack.enter_context(running_service(tmp_path / "two", rules, **shared))
        first_redis.close()  # Redis is gone
        _with_revision(rules, "second")
        body = b'{"event": "rules.updated"}'
        assert (503, "STORE_UNAVAILABLE") == _send(one, body, _signed(body))
        # Neither timer (an hour) nor webhook (refused) refreshes them: only subscribing again
        # does, which each does when Redis is back (or, harmlessly, when it believes so).
        stack.enter_context(running_redis(tmp_path / "redis-b", port))
        _eventually(lambda: [_revision(one), _revision(two)] == ["second", "second"],
                    "a replica did not catch up after Redis returned")  # fmt: skip
