"""The Redis store against a real ``redis-server``: shared by processes, safe when it fails."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import rules
from service.visitors.changes import add_data, forget
from service.visitors.redis_store import RedisVisitors
from service.visitors.stores import StoreUnavailable
from tests.service.conftest import DEMO, Api
from tests.service.process import free_port, running_service
from tests.service.redis_server import running_redis

CART = [{"type": "page_view", "url": "https://shop.example/cart"}]
DATA = "/v1/visitors/{visitor_code}/data"


def _store(url: str, **changes: Any) -> RedisVisitors:
    settings: dict[str, Any] = {
        "ttl": 1800.0,
        "retention": 86400.0,
        "read_timeout": 0.5,
        "write_timeout": 2.0,
    }
    return RedisVisitors(url, **{**settings, **changes})


async def test_a_write_is_read_back_by_another_client(redis_url: str) -> None:
    """Two store instances (two processes' worth) see one record."""
    writer, reader = _store(redis_url), _store(redis_url)
    try:
        await writer.write("v1", add_data(CART))
        attributes = await reader.attributes("v1")
        assert attributes is not None
        assert "https://shop.example/cart" == attributes["visitor.page.url"]
        assert (None, None) == (await reader.attributes("v2"), (await reader.read("v2"))[2])
    finally:
        await writer.close()
        await reader.close()


async def test_concurrent_writes_to_one_visitor_lose_nothing(redis_url: str) -> None:
    """Fifty page views written at once by two clients all count: each write is one transaction."""
    one, two = _store(redis_url), _store(redis_url)
    try:
        views = [
            (one if n % 2 else two).write(
                "v1", add_data([{"type": "page_view", "url": f"https://a.example/{n}"}])
            )
            for n in range(50)
        ]
        failures = [
            r
            for r in await asyncio.gather(*views, return_exceptions=True)
            if isinstance(r, BaseException)
        ]
        assert [] == failures
        attributes = await one.attributes("v1")
        assert attributes is not None
        assert 50 == attributes["visitor.page_views"]
    finally:
        await one.close()
        await two.close()


async def test_a_linked_code_reads_the_users_data_in_one_round_trip(redis_url: str) -> None:
    """Data added under the user id is seen under a linked visitor code, and forgotten with it."""
    store = _store(redis_url)
    try:
        await store.write("phone", add_data([{"type": "unique_identifier", "value": "user-1"}]))
        await store.write("user-1", add_data(CART))
        attributes = await store.attributes("phone")
        assert attributes is not None
        assert "visitor.page.url" in attributes
        change = await store.write("phone", forget())
        assert change.result is True
        assert (None, None) == (await store.attributes("phone"), await store.attributes("user-1"))
    finally:
        await store.close()


async def test_redis_down_means_no_data_for_decisions_and_503_for_writes(tmp_path: Path) -> None:
    """With nothing listening, a decision's read answers None at once and a write refuses."""
    store = _store(f"redis://127.0.0.1:{free_port()}/0", write_timeout=0.5)
    try:
        assert await store.attributes("v1") is None
        with pytest.raises(StoreUnavailable):
            await store.write("v1", add_data(CART))
        assert (1, 1) == (store.read_errors, store.write_errors)
    finally:
        await store.close()


async def test_the_store_reconnects_when_redis_comes_back(tmp_path: Path) -> None:
    """A store that lost Redis works again once it restarts on the same port."""
    port = free_port()
    store = _store(f"redis://127.0.0.1:{port}/0")
    try:
        with running_redis(tmp_path / "first", port):
            await store.write("v1", add_data(CART))
        with pytest.raises(StoreUnavailable):
            await store.write("v1", add_data(CART))
        with running_redis(tmp_path / "second", port):
            await store.write("v1", add_data(CART))  # a fresh server: one page view
            await asyncio.sleep(1.1)  # past the back-off decisions take after a failure
            attributes = await store.attributes("v1")
            assert attributes is not None
            assert 1 == attributes["visitor.page_views"]
    finally:
        await store.close()


async def test_decisions_are_answered_while_redis_is_down(start: Any) -> None:
    """A decision for a flag reading visitor data answers 200, as if there were no data."""
    async with start(visitors=f"redis://127.0.0.1:{free_port()}/0") as api:
        reply = await api.post(
            "/v1/flags/{flag}/decision",
            {"flag": "cart_reminder"},
            json={"visitor_code": "v1", "track": False},
        )
        assert (200, "off") == (reply.status, reply.body["variation"])
        write = await api.post(DATA, {"visitor_code": "v1"}, json={"data": CART})
        assert (503, "STORE_UNAVAILABLE") == (write.status, write.body["error"]["code"])
        flush = await api.post("/v1/visitors/{visitor_code}/flush", {"visitor_code": "v1"})
        assert (503, "STORE_UNAVAILABLE") == (flush.status, flush.body["error"]["code"])


def _call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_two_processes_share_visitor_data_through_redis(tmp_path: Path, redis_url: str) -> None:
    """Data added through one real flagpost process steers decisions on another."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with (
        running_service(tmp_path / "one", DEMO, FLAGPOST_VISITORS=redis_url) as one,
        running_service(tmp_path / "two", DEMO, FLAGPOST_VISITORS=redis_url) as two,
    ):
        decide = {"visitor_code": "v1", "track": False}
        path = "/v1/flags/cart_reminder/decision"
        assert "off" == _call(two, "POST", path, decide)["variation"]
        _call(one, "POST", "/v1/visitors/v1/data", {"data": CART})
        assert "on" == _call(two, "POST", path, decide)["variation"]
        _call(two, "DELETE", "/v1/visitors/v1/data")
        assert "off" == _call(one, "POST", path, decide)["variation"]


async def test_the_redis_store_answers_the_routes_as_documented(start: Any, redis_url: str) -> None:
    """The data routes on Redis answer what the OpenAPI document says."""
    async with start(visitors=redis_url) as api:
        api_: Api = api
        added = await api_.post(DATA, {"visitor_code": "v1"}, json={"data": CART})
        read = await api_.get(DATA, {"visitor_code": "v1"})
        assert added.body["data"] == read.body["data"]


def _records(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl*"))  # the file still open too
        for line in path.read_text().splitlines()
    ]


def _wait_for(check: Any, what: str) -> Any:
    deadline = time.monotonic() + 10
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def test_consent_and_assignments_are_shared_by_processes(tmp_path: Path, redis_url: str) -> None:
    """Consent given or withdrawn through one process governs what another records, and an
    experiment exposure on one appears in the other's tracking code."""
    visitors = _visitors_with_an_experiment(2)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    shared = {"FLAGPOST_VISITORS": redis_url, "FLAGPOST_CONSENT_REQUIRED": "true"}
    with (
        running_service(tmp_path / "one", DEMO, **shared) as one,
        running_service(tmp_path / "two", DEMO, **shared) as two,
    ):
        consenting, withdrawn = visitors
        _call(one, "PUT", f"/v1/visitors/{consenting}/consent", {"consent": True})
        _call(one, "PUT", f"/v1/visitors/{withdrawn}/consent", {"consent": True})
        _call(one, "PUT", f"/v1/visitors/{withdrawn}/consent", {"consent": False})
        for visitor in visitors:
            _call(
                two, "POST", "/v1/decide", {"visitor_code": visitor, "context": _context(visitor)}
            )
        _call(two, "POST", "/v1/visitors/anyone/flush", {})
        events = tmp_path / "two" / "events"
        records = _wait_for(
            lambda: [r for r in _records(events) if r["rule"] in EXPERIMENTS], "no experiment"
        )
        time.sleep(0.3)  # and nothing else arrives for the visitor who withdrew
        assert {consenting} == {
            r["visitor_id"] for r in _records(events) if r["rule"] in EXPERIMENTS
        }
        assert records
        code = _wait_for(
            lambda: _text(one, f"/v1/visitors/{consenting}/tracking-code").count("assignVariation"),
            "the assignment did not reach the other process",
        )
        assert code >= 1


EXPERIMENTS = {"checkout_ab", "widgets_abn"}


def _context(visitor: str) -> dict[str, Any]:
    return {"account_id": visitor}


def _visitors_with_an_experiment(count: int) -> list[str]:
    ruleset = rules.load(DEMO.read_bytes())
    found = [
        f"v{n}"
        for n in range(1000)
        if any(
            d.rule_type == "experiment"
            for d in ruleset.decide_all(f"v{n}", _context(f"v{n}")).values()
        )
    ]
    return found[:count]


def _text(base: str, path: str) -> str:
    with urllib.request.urlopen(base + path, timeout=10) as response:
        return str(response.read().decode())


async def test_a_slow_redis_costs_a_decision_its_timeout_at_most(tmp_path: Path) -> None:
    """While Redis is stalled, a decision's read gives up after the timeout, and the next ones
    skip it for the back-off: the error is counted, never raised."""
    with running_redis(tmp_path / "slow", None, "--enable-debug-command", "yes") as url:
        store = _store(url, read_timeout=0.05)
        staller = _store(url)
        try:
            await store.write("v1", add_data(CART))
            stall = asyncio.ensure_future(staller.client.execute_command("DEBUG", "SLEEP", "1"))  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.1)  # the server is asleep now
            started = time.monotonic()
            first = await store.attributes("v1")
            second = await store.attributes("v1")
            waited = time.monotonic() - started
            await stall
            assert (None, None, 2) == (first, second, store.read_errors)
            assert waited < 0.9, waited  # the stall lasts 1 s: the reads did not wait it out
        finally:
            await store.close()
            await staller.close()


async def test_store_errors_are_counted_in_the_metrics(start: Any) -> None:
    """A failed read and a failed write show in flagpost_visitor_store_errors_total."""
    async with start(visitors=f"redis://127.0.0.1:{free_port()}/0") as api:
        await api.post("/v1/flags/{flag}/decision", {"flag": "cart_reminder"},
                       json={"visitor_code": "v1", "track": False})  # fmt: skip
        await api.post(DATA, {"visitor_code": "v1"}, json={"data": CART})
        metrics = (await api.get("/metrics")).body.decode()
        config = (await api.get("/v1/config")).body
    assert 'flagpost_visitor_store_errors_total{operation="read",store="redis"} 1.0' in metrics
    assert 'flagpost_visitor_store_errors_total{operation="write",store="redis"} 1.0' in metrics
    assert ("redis", 1) == (config["visitors"]["store"], config["visitors"]["read_errors"])


async def test_reads_of_one_turn_share_one_round_trip(redis_url: str) -> None:
    """Twenty decisions reading at once get each their own visitor's data from one script call."""
    store = _store(redis_url)
    try:
        for n in range(20):
            page = {"type": "page_view", "url": f"https://shop.example/{n}"}
            await store.write(f"v{n}", add_data([page]))
        await store.attributes("warm-up")  # (the first call loads the script: two commands)
        before = (await store.client.info("commandstats"))["cmdstat_evalsha"]
        found = await asyncio.gather(*(store.attributes(f"v{n}") for n in [*range(20), 3, 99]))
        after = (await store.client.info("commandstats"))["cmdstat_evalsha"]
        urls = [None if a is None else a["visitor.page.url"] for a in found]
        assert [
            *(f"https://shop.example/{n}" for n in range(20)),
            "https://shop.example/3",
            None,
        ] == urls
        assert 1 == after["calls"] - before["calls"]
    finally:
        await store.close()
