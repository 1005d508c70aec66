"""Keeping rules fresh against a real loopback HTTP source that changes, fails and recovers."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

import rules
from bench.generate import generate
from service.redaction import Secret
from service.refresher import release_cooperatively
from tests.service.conftest import DEMO, Api, AppFactory
from tests.service.rules_server import eventually, serve_rules

SECRET = "webhook-secret-for-tests"


async def revision(api: Api) -> str | None:
    return (await api.get("/v1/config")).body["revision"]  # type: ignore[no-any-return]


async def test_timer_refresh_follows_changes_and_failures(start: AppFactory) -> None:
    """A changed document is picked up; failures keep the last good one, shown in /v1/config."""
    async with serve_rules() as source, start(rules=source.url, refresh_interval=0.2) as api:
        assert "2026-12-02.1" == await revision(api)
        source.set_revision("r2", dark_mode="off")

        async def updated() -> bool:
            return await revision(api) == "r2"

        await eventually(updated)
        source.fail_with = 500

        async def failing() -> bool:
            return (await api.get("/v1/config")).body["last_error"] is not None

        await eventually(failing)
        config = (await api.get("/v1/config")).body
        assert "r2" == config["revision"]
        assert "HTTP 500" in config["last_error"]["message"]
        decision = await api.get(
            "/v1/flags/{flag}/decision", {"flag": "dark_mode"}, params={"visitor_code": "v"}
        )
        assert "off" == decision.body["variation"]  # still the last good rules
        source.fail_with = None
        source.set_revision("r3")

        async def recovered() -> bool:
            return await revision(api) == "r3"

        await eventually(recovered)
        metrics = (await api.get("/metrics")).body.decode()
        assert 'flagpost_rules_refreshes_total{result="failed"}' in metrics
        config = (await api.get("/v1/config")).body
        assert None is config["last_error"]  # a later success ends the failure...
        assert "HTTP 500" in config["previous_error"]["message"]  # ...which stays as history


async def test_polls_of_an_unchanged_file_are_counted_apart_from_loads(
    start: AppFactory, tmp_path: Path
) -> None:
    """A rules file polled while it does not change counts as unchanged, not as a load."""
    rules_file = tmp_path / "rules.json"
    rules_file.write_bytes(DEMO.read_bytes())
    async with start(rules=str(rules_file), refresh_interval=0.05) as api:

        async def polled() -> bool:
            return bool((await api.get("/v1/config")).body["refreshes"]["unchanged"] >= 3)

        await eventually(polled)
        config = (await api.get("/v1/config")).body
        assert (1, 0) == (config["refreshes"]["loaded"], config["refreshes"]["failed"])


async def test_invalid_document_never_replaces_the_served_one(start: AppFactory) -> None:
    """A broken document is refused with its problems shown; the old rules keep serving."""
    async with serve_rules() as source, start(rules=source.url, refresh_interval=0.2) as api:
        source.document = b'{"format": 1, "flags": {"x": {"variations": {}}}}'

        async def refused() -> bool:
            error = (await api.get("/v1/config")).body["last_error"]
            return error is not None and "invalid rules" in error["message"]

        await eventually(refused)
        assert "2026-12-02.1" == await revision(api)
        assert 200 == (await api.get("/readyz")).status


@pytest.mark.parametrize(
    ("limits", "shown"),
    [
        ({"max_rules_bytes": 8192}, "larger than FLAGPOST_MAX_RULES_BYTES (8192)"),
        ({"max_flags": 10}, "flags: holds 40 flags; the limit is 10"),
    ],
)
async def test_documents_over_the_limits_are_refused(
    start: AppFactory, limits: dict[str, int], shown: str
) -> None:
    """A document over the size or flag limit is refused with the limit named; the old stays."""
    async with (
        serve_rules() as source,
        start(rules=source.url, refresh_interval=0.2, **limits) as api,
    ):
        first = await revision(api)
        assert first is not None
        source.document = json.dumps(generate(40)).encode()

        async def refused() -> bool:
            error = (await api.get("/v1/config")).body["last_error"]
            return error is not None and shown in error["message"]

        await eventually(refused)
        assert first == await revision(api)


async def test_unchanged_documents_are_not_downloaded_again(start: AppFactory) -> None:
    """The source is asked with If-None-Match and its 304 costs no download."""
    async with serve_rules() as source, start(rules=source.url, refresh_interval=0.1) as api:

        async def revalidated() -> bool:
            return source.not_modified >= 3

        await eventually(revalidated)
        assert 1 == source.gets
        assert "2026-12-02.1" == await revision(api)


async def test_source_authorization_and_timeout(start: AppFactory) -> None:
    """The configured Authorization header is sent; a hanging source fails within the timeout."""
    async with (
        serve_rules() as source,
        start(
            rules=source.url,
            rules_auth=Secret("Bearer s3cret"),
            refresh_interval=0.2,
            rules_timeout=0.3,
        ) as api,
    ):
        assert "Bearer s3cret" == source.authorizations[0]
        source.hang = True

        async def timed_out() -> bool:
            error = (await api.get("/v1/config")).body["last_error"]
            return error is not None and "did not answer in time" in error["message"]

        await eventually(timed_out)
        assert 200 == (await api.get("/readyz")).status


async def test_restart_with_source_down_serves_the_cache(start: AppFactory) -> None:
    """The last good document is kept on disk and served when the source is down at start."""
    async with serve_rules() as source:
        source.set_revision("cached-rev")
        async with start(rules=source.url) as api:
            assert "cached-rev" == await revision(api)
        source.fail_with = 503
        async with start(rules=source.url) as api:
            config = (await api.get("/v1/config")).body
            assert ("cached-rev", "cache") == (config["revision"], config["origin"])
            assert 200 == (await api.get("/readyz")).status


async def test_not_ready_without_any_rules(start: AppFactory, tmp_path: Path) -> None:
    """With no source and no cache, readiness and decisions answer 503 NOT_READY."""
    async with start(
        rules=str(tmp_path / "missing.json"), cache_dir=str(tmp_path / "empty")
    ) as api:
        ready = await api.get("/readyz")
        decision = await api.post("/v1/decide", json={"visitor_code": "v"})
        assert (503, "NOT_READY") == (ready.status, ready.body["error"]["code"])
        assert (503, "NOT_READY") == (decision.status, decision.body["error"]["code"])
        assert 200 == (await api.get("/healthz")).status


async def test_file_changes_are_noticed(start: AppFactory, tmp_path: Path) -> None:
    """Rewriting the rules file is noticed without a webhook."""
    path = tmp_path / "rules.json"
    doc: dict[str, Any] = json.loads(DEMO.read_text())
    path.write_text(json.dumps(doc))
    async with start(rules=str(path), refresh_interval=0.1) as api:
        doc["revision"] = "edited"
        path.write_text(json.dumps(doc))

        async def noticed() -> bool:
            return await revision(api) == "edited"

        await eventually(noticed)


def sign(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    """The headers a sender signs ``body`` with, at ``at`` (now by default)."""
    stamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Flagpost-Timestamp": stamp, "X-Flagpost-Signature": f"sha256={digest}"}


async def test_webhook_signature(start: AppFactory) -> None:
    """Only a correct HMAC signature of the timestamp and the raw body is accepted."""
    body = b'{"event": "rules.updated"}'
    async with start(webhook_secret=Secret(SECRET)) as api:
        good = await api.post("/v1/webhooks/refresh", data=body, headers=sign(body))
        forged = await api.post("/v1/webhooks/refresh", data=body, headers=sign(body, "guess"))
        altered = await api.post("/v1/webhooks/refresh", data=body + b" ", headers=sign(body))
        missing = await api.post("/v1/webhooks/refresh", data=body)
        headers = sign(body)
        headers["X-Flagpost-Timestamp"] = str(int(headers["X-Flagpost-Timestamp"]) + 1)
        restamped = await api.post("/v1/webhooks/refresh", data=body, headers=headers)
        no_stamp = {"X-Flagpost-Signature": sign(body)["X-Flagpost-Signature"]}
        unstamped = await api.post("/v1/webhooks/refresh", data=body, headers=no_stamp)
    assert 202 == good.status
    for reply in (forged, altered, missing, restamped, unstamped):
        assert (401, "UNAUTHORIZED") == (reply.status, reply.body["error"]["code"])


async def test_a_webhook_cannot_be_replayed_or_sent_late(start: AppFactory) -> None:
    """The same signed request twice: the second is refused; so is one stamped 6 minutes off."""
    body = b'{"event": "rules.updated"}'
    async with start(webhook_secret=Secret(SECRET)) as api:
        headers = sign(body)
        first = await api.post("/v1/webhooks/refresh", data=body, headers=headers)
        again = await api.post("/v1/webhooks/refresh", data=body, headers=headers)
        late = await api.post(
            "/v1/webhooks/refresh", data=body, headers=sign(body, at=time.time() - 360)
        )
        early = await api.post(
            "/v1/webhooks/refresh", data=body, headers=sign(body, at=time.time() + 360)
        )
        fresh = await api.post(
            "/v1/webhooks/refresh", data=body, headers=sign(body, at=time.time() + 1)
        )
    assert [202, 401, 401, 401, 202] == [r.status for r in (first, again, late, early, fresh)]
    assert ["WEBHOOK_REPLAYED", "WEBHOOK_EXPIRED", "WEBHOOK_EXPIRED"] == [
        r.body["error"]["code"] for r in (again, late, early)
    ]


async def test_webhook_is_off_without_a_secret(api: Api) -> None:
    """With no secret configured the endpoint does not exist."""
    reply = await api.post("/v1/webhooks/refresh", data=b"{}", headers=sign(b"{}"))
    assert (404, "NOT_FOUND") == (reply.status, reply.body["error"]["code"])


async def test_webhook_burst_causes_one_fetch(start: AppFactory) -> None:
    """Twenty webhooks at once lead to one download of the new rules."""
    async with (
        serve_rules() as source,
        start(rules=source.url, webhook_secret=Secret(SECRET), refresh_interval=3600) as api,
    ):
        source.set_revision("pushed")
        bodies = [b'{"n": %d}' % n for n in range(20)]  # distinct: a repeat is a replay
        replies = await asyncio.gather(
            *(api.post("/v1/webhooks/refresh", data=body, headers=sign(body)) for body in bodies)
        )
        assert {202} == {reply.status for reply in replies}

        async def pushed() -> bool:
            return await revision(api) == "pushed"

        await eventually(pushed)
        await asyncio.sleep(0.3)  # room for any extra fetch the burst would wrongly cause
        assert 2 == source.gets  # the start, then one for the whole burst


async def test_large_swap_is_atomic_while_serving(start: AppFactory, tmp_path: Path) -> None:
    """While a 10,000-flag document is compiled and swapped in, every answer is whole."""
    small, large = generate(10_000, seed=1), generate(10_000, seed=1)
    small["flags"] = {key: small["flags"][key] for key in list(small["flags"])[:50]}
    for flag in large["flags"].values():
        flag["default"], flag["rules"] = "on", []
    large["revision"] = "large"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(small))
    async with start(rules=str(path), refresh_interval=0.1) as api:
        path.write_text(json.dumps(large))
        seen: set[str] = set()
        while "large" not in seen:
            reply = await api.post(
                "/v1/decide", json={"visitor_code": "v", "flags": ["flag_00000", "flag_00001"]}
            )
            assert 200 == reply.status
            body = reply.body
            seen.add(body["revision"])
            variations = {d["variation"] for d in body["decisions"].values()}
            if body["revision"] == "large":
                assert {"on"} == variations
        assert {"generated-10000-1", "large"} == seen


async def test_backoff_doubles_from_one_second_up_to_the_interval(tmp_path: Path) -> None:
    """After failures the next try comes after 1 s, 2 s, 4 s ... never later than the interval."""
    from service.refresher import Refresher
    from service.sources import FileSource
    from service.store import DiskCache, RulesStore

    source = FileSource(str(tmp_path / "missing.json"), max_bytes=1 << 20)
    refresher = Refresher(source, RulesStore("x"), DiskCache(str(tmp_path)), interval=10.0)
    delays = []
    for _ in range(6):
        await refresher.refresh()  # fails: the file does not exist
        delays.append(refresher._next_delay())
    for expected, delay in zip([1, 2, 4, 8, 10, 10], delays, strict=True):
        assert expected * 0.8 <= delay <= expected * 1.2


async def test_a_replaced_ruleset_is_released_only_when_nothing_holds_it() -> None:
    """The ruleset a swap replaced is taken apart when only the refresher holds it (a live
    view of its constant decisions empties), and left whole while something else (an
    unfinished request, say) still does."""
    replaced = [rules.load(DEMO.read_bytes())]
    constants = replaced[0].constant_decisions()
    assert constants
    held = rules.load(DEMO.read_bytes())
    holder = [held]
    assert [True, False] == [
        await release_cooperatively(replaced),
        await release_cooperatively(holder),
    ]
    assert ([], []) == (replaced, holder)
    assert {} == dict(constants)
    assert "new_checkout" == held.decide("new_checkout", "v-1").flag


class _Node:
    """Something to build a reference cycle of."""

    def __init__(self) -> None:
        self.me = self


async def test_a_rules_load_leaves_no_garbage_frozen(tmp_path: Path) -> None:
    """Cycles that were garbage before a load, or became garbage during it, are still
    collectable after it (a load freezes only what it built and what is alive)."""
    from service.refresher import load_cooperatively

    before = _Node()
    garbage = [weakref.ref(before)]
    del before
    made_during: list[weakref.ref[_Node]] = []

    async def make_garbage_meanwhile() -> None:
        while True:
            node = _Node()
            made_during.append(weakref.ref(node))
            del node
            await asyncio.sleep(0)

    litter = asyncio.create_task(make_garbage_meanwhile())
    try:
        ruleset = await load_cooperatively(json.dumps(generate(2000)).encode())
    finally:
        litter.cancel()
    assert made_during, "the load gave way to the other task"
    gc.collect()
    assert [] == [ref for ref in garbage + made_during if ref() is not None]
    assert 2000 == len(ruleset.flag_keys)


async def test_a_replaced_ruleset_leaves_nothing_frozen_behind() -> None:
    """Once a loaded ruleset is released, the frozen objects are back to what they were."""
    from service.refresher import load_cooperatively

    gc.collect()
    frozen = gc.get_freeze_count()
    holder = [await load_cooperatively(json.dumps(generate(2000)).encode())]
    assert gc.get_freeze_count() > frozen + 10_000
    assert await release_cooperatively(holder)
    # what is left is what was alive at a slice's end: the loop's and caches' few objects
    assert gc.get_freeze_count() - frozen < 1_000
