"""Operations: health, metrics, configuration, the OpenAPI document, API keys, change stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from openapi_spec_validator import validate

import rules
from service.app import create_app
from service.keys import SHELL, STORE
from service.ops import OPENAPI_PATH
from service.redaction import Secret
from service.store import DROPPED, SUBSCRIBER_BACKLOG, RulesStore
from tests.service.conftest import DEMO, SPEC, Api, AppFactory, settings_for

KEY = "k" * 24


async def test_health_and_readiness(api: Api) -> None:
    """Both probes answer 200 once rules are loaded."""
    health, ready = await api.get("/healthz"), await api.get("/readyz")
    assert {"status": "ok"} == health.body
    assert {"status": "ready", "revision": "2026-12-02.1"} == ready.body


async def test_config_reports_rules_and_refreshing(api: Api) -> None:
    """GET /v1/config shows revision, source, counts and the default environment."""
    config = (await api.get("/v1/config")).body
    assert ("2026-12-02.1", 8, "production", "source") == (
        config["revision"],
        config["flag_count"],
        config["environment"],
        config["origin"],
    )
    assert config["source"].endswith("demo.json")
    assert (None, 1) == (config["last_error"], config["refreshes"]["loaded"])


async def test_metrics_count_requests_and_decisions(api: Api) -> None:
    """Prometheus text has request counts by route and status, latencies and decisions by reason."""
    await api.post("/v1/flags/{flag}/decision", {"flag": "dark_mode"}, json={"visitor_code": "v"})
    await api.get("/v1/flags/{flag}/decision", {"flag": "ghost"}, params={"visitor_code": "v"})
    text = (await api.get("/metrics")).body.decode()
    assert (
        'flagpost_http_requests_total{method="POST",route="/v1/flags/{flag}/decision",status="200"} 1.0'
        in text
    )
    assert (
        'flagpost_http_requests_total{method="GET",route="/v1/flags/{flag}/decision",status="404"} 1.0'
        in text
    )
    assert 'flagpost_decisions_total{reason="STATIC"} 1.0' in text
    assert "flagpost_http_request_duration_seconds_bucket" in text
    assert "flagpost_rules_age_seconds" in text


async def test_openapi_document_is_served_and_valid(api: Api) -> None:
    """The served document is the shipped one, and it is valid OpenAPI 3.1."""
    reply = await api.get("/openapi.json")
    assert json.loads(OPENAPI_PATH.read_text()) == reply.body
    validate(reply.body)


def test_openapi_documents_every_route() -> None:
    """Every route the app serves is in the OpenAPI document, and nothing more."""
    app = create_app(settings_for(Path("/nonexistent")))
    served = {
        (resource.template, method.lower())
        for resource in app[SHELL].router.resources()
        for method in resource.methods
    }
    documented = {(path, method) for path, ops in SPEC["paths"].items() for method in ops}
    assert documented == served


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}],
)
async def test_api_keys_guard_the_api(start: AppFactory, headers: dict[str, str]) -> None:
    """With keys set, /v1 and /ofrep need one; probes and the webhook do not."""
    async with start(api_keys=(Secret(KEY), Secret("other-key-0123456789"))) as api:
        body = {"visitor_code": "v"}
        denied = await api.post("/v1/decide", json=body)
        wrong = await api.post("/v1/decide", json=body, headers={"X-API-Key": "w" * 24})
        allowed = await api.post("/v1/decide", json=body, headers=headers)
        ofrep = await api.post("/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "v"}})
        probe = await api.get("/healthz")
        webhook = await api.post("/v1/webhooks/refresh", data=b"{}")
    assert (401, "UNAUTHORIZED") == (denied.status, denied.body["error"]["code"])
    assert "Bearer" in denied.headers["WWW-Authenticate"]
    assert 401 == wrong.status
    assert 200 == allowed.status
    assert 401 == ofrep.status
    assert 200 == probe.status
    assert 404 == webhook.status  # no secret: off, and not hidden behind the API keys


async def test_change_stream_sends_current_rules_then_changes(start: AppFactory) -> None:
    """A subscriber gets the current revision, then an event when the rules change."""
    async with start() as api:
        store = api.client.app[STORE]
        async with api.client.get("/v1/config/stream") as response:
            assert "text/event-stream" in response.headers["Content-Type"]
            first = await _next_event(response)
            ruleset = store.current.ruleset
            store.swap(ruleset, "source")
            second = await _next_event(response)
    assert "2026-12-02.1" == first["revision"]
    assert (8, "source") == (second["flag_count"], second["origin"])


async def _next_event(response: object) -> dict[str, object]:
    data = b""
    while not data.startswith(b"data:"):
        data = await asyncio.wait_for(response.content.readline(), 5)  # type: ignore[attr-defined]
    return json.loads(data[5:])  # type: ignore[no-any-return]


async def test_slow_subscriber_is_dropped_not_waited_for() -> None:
    """A subscriber that stops reading is dropped after its backlog; swapping never blocks."""
    store = RulesStore("test")
    slow = store.subscribe()
    ruleset = rules.load(DEMO.read_bytes())
    for _ in range(SUBSCRIBER_BACKLOG + 1):
        store.swap(ruleset, "source")
    assert DROPPED is slow.get_nowait()
    assert slow.empty()


def test_a_metrics_scrape_renders_the_counts_of_the_moment_it_was_taken() -> None:
    """The renderer snapshot() returns (run in a thread) shows the counts copied on the loop,
    whatever the loop counts meanwhile."""
    from service.metrics import Metrics
    from service.store import RulesStore

    metrics = Metrics(RulesStore("test"))
    metrics.requests.record("decide", "POST", 200, 0.001)
    metrics.decision_tally["SPLIT"] += 1
    render = metrics.snapshot()
    metrics.requests.record("decide", "POST", 200, 0.001)
    metrics.decision_tally["SPLIT"] += 5
    text = render().decode()
    assert 'flagpost_http_requests_total{method="POST",route="decide",status="200"} 1.0' in text
    assert 'flagpost_decisions_total{reason="SPLIT"} 1.0' in text
