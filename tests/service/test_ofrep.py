"""OFREP: answers shaped as the protocol says, checked in process and with the real client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openfeature import api as openfeature
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from tests.service.conftest import Api
from tests.service.process import running_service

ONE = "/ofrep/v1/evaluate/flags/{key}"
ALL = "/ofrep/v1/evaluate/flags"
MOBILE = {"platform": "ios", "app_version": "5.0.0"}


async def test_single_evaluation(api: Api) -> None:
    """A success carries key, value, reason, variant and metadata."""
    reply = await api.post(
        ONE, {"key": "recommendations"}, json={"context": {"targetingKey": "v-1", **MOBILE}}
    )
    assert 200 == reply.status
    assert {
        "key": "recommendations",
        "value": "carousel",
        "reason": "SPLIT",
        "variant": "carousel",
    } == {k: reply.body[k] for k in ("key", "value", "reason", "variant")}
    assert {"flagId": 1003, "rule": "widgets_abn", "experimentId": 9002, "variationId": 11} == {
        k: reply.body["metadata"][k] for k in ("flagId", "rule", "experimentId", "variationId")
    }


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [(b"{nope", 400, "PARSE_ERROR"),
     ({"context": []}, 400, "INVALID_CONTEXT"),
     ({"context": {}}, 400, "TARGETING_KEY_MISSING"),
     ({}, 400, "TARGETING_KEY_MISSING"),
     ({"context": {"targetingKey": ""}}, 400, "TARGETING_KEY_MISSING"),
     ({"context": {"targetingKey": 7}}, 400, "INVALID_CONTEXT"),
     ({"context": {"targetingKey": "x" * 300}}, 400, "INVALID_CONTEXT"),
     ({"context": {"targetingKey": "v", "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}}}}, 400, "INVALID_CONTEXT")],
)  # fmt: skip
async def test_single_evaluation_errors(api: Api, body: Any, status: int, code: str) -> None:
    """Bad requests answer 400 with the key, an OFREP error code and details."""
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    reply = await api.post(ONE, {"key": "dark_mode"}, **kwargs)
    assert (status, code, "dark_mode") == (reply.status, reply.body["errorCode"], reply.body["key"])
    assert reply.body["errorDetails"]


async def test_missing_flag(api: Api) -> None:
    """An unknown flag answers 404 FLAG_NOT_FOUND."""
    reply = await api.post(ONE, {"key": "ghost"}, json={"context": {"targetingKey": "v"}})
    assert (404, "FLAG_NOT_FOUND", "ghost") == (
        reply.status,
        reply.body["errorCode"],
        reply.body["key"],
    )


async def test_bulk_evaluation_and_etag(api: Api) -> None:
    """Bulk answers every flag with an ETag; the same tag back gets 304."""
    body = {"context": {"targetingKey": "v-1", **MOBILE}}
    first = await api.post(ALL, json=body)
    assert 200 == first.status
    assert 8 == len(first.body["flags"])
    etag = first.headers["ETag"]
    again = await api.post(ALL, json=body, headers={"If-None-Match": etag})
    other = await api.post(
        ALL, json={"context": {"targetingKey": "v-2"}}, headers={"If-None-Match": etag}
    )
    assert (304, etag) == (again.status, again.headers["ETag"])
    assert 200 == other.status


async def test_bulk_errors(api: Api) -> None:
    """A bulk request without a targeting key is a 400 with code and details."""
    reply = await api.post(ALL, json={"context": {"plan": "pro"}})
    assert (400, "TARGETING_KEY_MISSING") == (reply.status, reply.body["errorCode"])


async def test_configuration(api: Api) -> None:
    """The provider configuration names the service and its polling floor."""
    reply = await api.get("/ofrep/v1/configuration")
    assert "flagpost" == reply.body["name"]


# -- the real OpenFeature client against a real flagpost process --------------------------

KEY = "ofrep-test-key-0123456789"
RULES: dict[str, Any] = {
    "format": 1,
    "revision": "ofrep-1",
    "flags": {
        "enabled_flag": {"variations": {"off": {}, "on": {}}, "default": "on"},
        "greeting": {"variations": {"en": {"value": "hello"}, "fr": {"value": "bonjour"}}, "default": "en",
                     "rules": [{"key": "fr", "type": "targeted_delivery", "variation": "fr",
                                "condition": {"attr": "lang", "op": "eq", "value": "fr"}}]},
        "ratio": {"variations": {"low": {"value": 0.25}, "one": {"value": 1.0}}, "default": "one"},
        "layout": {"variations": {"grid": {"value": {"columns": 3, "cards": ["a", "b"]}}}, "default": "grid"},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_service(
        tmp_path_factory.mktemp("ofrep"), RULES, FLAGPOST_API_KEYS=KEY
    ) as base_url:
        provider = OFREPProvider(
            base_url, headers_factory=lambda: {"Authorization": f"Bearer {KEY}"}, timeout=5
        )
        openfeature.set_provider_and_wait(provider, domain="flagpost")
        yield openfeature.get_client("flagpost")
        openfeature.shutdown()


def test_real_client_boolean(client: Any) -> None:
    """A boolean flag resolves with its variant and reason."""
    details = client.get_boolean_details("enabled_flag", False, EvaluationContext("visitor-1"))
    assert (True, "on", Reason.STATIC) == (details.value, details.variant, details.reason)


def test_real_client_string_with_targeting(client: Any) -> None:
    """Context attributes reach the targeting rules."""
    details = client.get_string_details(
        "greeting", "?", EvaluationContext("visitor-1", {"lang": "fr"})
    )
    assert ("bonjour", "fr", Reason.TARGETING_MATCH) == (
        details.value,
        details.variant,
        details.reason,
    )


def test_real_client_number_and_object(client: Any) -> None:
    """Floats arrive as floats and objects as objects."""
    ratio = client.get_float_details("ratio", 0.0, EvaluationContext("visitor-1"))
    layout = client.get_object_details("layout", {}, EvaluationContext("visitor-1"))
    assert (1.0, None) == (ratio.value, ratio.error_code)
    assert {"columns": 3, "cards": ["a", "b"]} == layout.value


def test_real_client_missing_flag(client: Any) -> None:
    """A missing flag gives the caller's default with FLAG_NOT_FOUND."""
    details = client.get_boolean_details("ghost", False, EvaluationContext("visitor-1"))
    assert (False, ErrorCode.FLAG_NOT_FOUND) == (details.value, details.error_code)


def test_real_client_missing_targeting_key(client: Any) -> None:
    """No targeting key gives the default with TARGETING_KEY_MISSING."""
    details = client.get_boolean_details("enabled_flag", False, EvaluationContext())
    assert (False, ErrorCode.TARGETING_KEY_MISSING) == (details.value, details.error_code)


def test_real_client_unauthorized(client: Any) -> None:
    """A client with a wrong key gets its default and an error, never a flag value."""
    intruder = OFREPProvider(
        client.provider.base_url, headers_factory=lambda: {"X-API-Key": "wrong-key-0123456789"}
    )
    openfeature.set_provider_and_wait(intruder, domain="intruder")
    details = openfeature.get_client("intruder").get_boolean_details(
        "enabled_flag", False, EvaluationContext("v")
    )
    assert (False, ErrorCode.GENERAL) == (details.value, details.error_code)
    assert "unauthorized" in (details.error_message or "")
