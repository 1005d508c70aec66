"""The decision API: every endpoint, GET and POST, and every kind of bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.service.conftest import Api, AppFactory

FR_PHONE = {"geo": {"country": "FR"}, "device": "phone"}
DECISION = "/v1/flags/{flag}/decision"
ACTIVE = "/v1/flags/{flag}/active"
VARIABLE = "/v1/flags/{flag}/variables/{variable}"


async def test_list_flags(api: Api) -> None:
    """GET /v1/flags lists every flag key with the revision."""
    reply = await api.get("/v1/flags")
    assert 200 == reply.status
    assert "2026-12-02.1" == reply.body["revision"]
    assert "new_checkout" in reply.body["flags"]


async def test_variations(api: Api) -> None:
    """Every variation comes with its id, value and full variables."""
    reply = await api.get("/v1/flags/{flag}/variations", {"flag": "new_checkout"})
    assert 200 == reply.status
    assert {"id": 2, "value": "bold", "variables": {"button_color": "red", "max_items": 5}} == (
        reply.body["variations"]["bold"]
    )
    assert "off" == reply.body["default"]


async def test_decision_by_post_uses_context(api: Api) -> None:
    """POST with a context matches the targeted delivery."""
    reply = await api.post(
        DECISION, {"flag": "new_checkout"}, json={"visitor_code": "v1", "context": FR_PHONE}
    )
    assert 200 == reply.status
    assert ("on", "beta", "TARGETING_MATCH") == (
        reply.body["variation"],
        reply.body["rule"],
        reply.body["reason"],
    )
    assert reply.headers["X-Request-Id"]


async def test_decision_by_get_takes_query(api: Api) -> None:
    """GET decides from visitor_code and environment in the query."""
    reply = await api.get(
        DECISION,
        {"flag": "search_ranking"},
        params={"visitor_code": "v", "environment": "development"},
    )
    assert ("on", "STATIC") == (reply.body["variation"], reply.body["reason"])


async def test_disabled_flag_is_not_an_error(api: Api) -> None:
    """A flag disabled in the environment answers 200 with its default and reason DISABLED."""
    reply = await api.post(
        DECISION, {"flag": "new_checkout"}, json={"visitor_code": "v", "environment": "staging"}
    )
    assert (200, "off", "DISABLED") == (reply.status, reply.body["variation"], reply.body["reason"])


async def test_active_and_variable(api: Api) -> None:
    """The active and variable endpoints answer from the same decision."""
    body = {"visitor_code": "v1", "context": FR_PHONE}
    active = await api.post(ACTIVE, {"flag": "new_checkout"}, json=body)
    variable = await api.post(
        VARIABLE, {"flag": "new_checkout", "variable": "button_color"}, json=body
    )
    assert {"flag": "new_checkout", "active": True, "variation": "on"} == active.body
    assert {
        "flag": "new_checkout",
        "variable": "button_color",
        "value": "green",
        "variation": "on",
    } == (variable.body)


async def test_decide_all_flags(api: Api) -> None:
    """POST /v1/decide without flags decides every flag."""
    reply = await api.post("/v1/decide", json={"visitor_code": "v1", "context": FR_PHONE})
    assert 200 == reply.status
    assert 8 == len(reply.body["decisions"])
    assert "on" == reply.body["decisions"]["new_checkout"]["variation"]
    assert "errors" not in reply.body


async def test_decide_some_flags_reports_unknown_ones(api: Api) -> None:
    """Unknown requested flags are listed under errors; the others are still decided."""
    reply = await api.post(
        "/v1/decide", json={"visitor_code": "v", "flags": ["dark_mode", "ghost", "dark_mode"]}
    )
    assert ["dark_mode"] == list(reply.body["decisions"])
    assert "FLAG_NOT_FOUND" == reply.body["errors"]["ghost"]["code"]


async def test_active_only(api: Api) -> None:
    """active_only leaves out inactive decisions."""
    reply = await api.post("/v1/decide", json={"visitor_code": "v", "active_only": True})
    assert all(decision["active"] for decision in reply.body["decisions"].values())
    assert "dark_mode" in reply.body["decisions"]
    assert "maintenance_banner" not in reply.body["decisions"]


async def test_same_answer_from_every_endpoint(api: Api) -> None:
    """Single, bulk and OFREP endpoints agree for the same visitor and context."""
    context = {"account_id": "acme-42", "platform": "ios", "app_version": "5.0.0"}
    bulk = await api.post("/v1/decide", json={"visitor_code": "v9", "context": context})
    ofrep = await api.post(
        "/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "v9", **context}}
    )
    for key, decision in bulk.body["decisions"].items():
        single = await api.post(
            DECISION, {"flag": key}, json={"visitor_code": "v9", "context": context}
        )
        assert decision == single.body
    assert {f["key"]: f["variant"] for f in ofrep.body["flags"]} == {
        key: d["variation"] for key, d in bulk.body["decisions"].items()
    }


BAD_BODIES: list[tuple[str, Any, int, str, str | None]] = [
    ("malformed JSON", b"{visitor_code:", 400, "INVALID_REQUEST", None),
    ("not an object", [1, 2], 400, "INVALID_REQUEST", None),
    ("no visitor code", {}, 400, "INVALID_VISITOR_CODE", "visitor_code"),
    ("empty visitor code", {"visitor_code": ""}, 400, "INVALID_VISITOR_CODE", "visitor_code"),
    ("300-character visitor code", {"visitor_code": "x" * 300}, 400, "INVALID_VISITOR_CODE", "visitor_code"),
    ("numeric visitor code", {"visitor_code": 42}, 400, "INVALID_VISITOR_CODE", "visitor_code"),
    ("unknown field", {"visitor_code": "v", "user": "x"}, 400, "INVALID_REQUEST", "user"),
    ("context not an object", {"visitor_code": "v", "context": ["a"]}, 400, "INVALID_REQUEST", "context"),
    ("track not a boolean", {"visitor_code": "v", "track": "yes"}, 400, "INVALID_REQUEST", "track"),
    ("environment not a string", {"visitor_code": "v", "environment": 3}, 400, "INVALID_REQUEST", "environment"),
    ("unknown environment", {"visitor_code": "v", "environment": "qa"}, 400, "UNKNOWN_ENVIRONMENT", None),
    ("too many attributes", {"visitor_code": "v", "context": {f"a{i}": i for i in range(201)}}, 400, "INVALID_REQUEST", "context"),
    ("too deep", {"visitor_code": "v", "context": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}, 400, "INVALID_REQUEST", "context"),
    ("huge list attribute", {"visitor_code": "v", "context": {"ids": list(range(500))}}, 400, "INVALID_REQUEST", "context"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        pytest.param(body, status, code, field, id=name)
        for name, body, status, code, field in BAD_BODIES
    ],
)
async def test_bad_bodies_get_their_error(
    api: Api, body: Any, status: int, code: str, field: str | None
) -> None:
    """Each kind of bad body gets its 4xx, its stable code and the field named."""
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    for route, path in ((DECISION, {"flag": "dark_mode"}), ("/v1/decide", None)):
        reply = await api.post(route, path, **kwargs)
        assert (status, code) == (reply.status, reply.body["error"]["code"])
        assert field == reply.body["error"].get("field")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"visitor_code": "v", "flags": "dark_mode"}, "flags"),
     ({"visitor_code": "v", "flags": [1]}, "flags"),
     ({"visitor_code": "v", "flags": ["f"] * 1001}, "flags"),
     ({"visitor_code": "v", "active_only": 1}, "active_only")],
)  # fmt: skip
async def test_bad_decide_fields(api: Api, body: dict[str, Any], field: str) -> None:
    """/v1/decide refuses wrong types of its own fields, naming them."""
    reply = await api.post("/v1/decide", json=body)
    assert (400, "INVALID_REQUEST", field) == (
        reply.status,
        reply.body["error"]["code"],
        reply.body["error"]["field"],
    )


@pytest.mark.parametrize(
    ("params", "code"),
    [({}, "INVALID_VISITOR_CODE"), ({"visitor_code": ""}, "INVALID_VISITOR_CODE"),
     ({"visitor_code": "v", "colour": "red"}, "INVALID_REQUEST"),
     ({"visitor_code": "v", "track": "maybe"}, "INVALID_REQUEST")],
)  # fmt: skip
async def test_bad_queries(api: Api, params: dict[str, str], code: str) -> None:
    """GET refuses missing visitor codes, unknown parameters and bad booleans."""
    reply = await api.get(DECISION, {"flag": "dark_mode"}, params=params)
    assert (400, code) == (reply.status, reply.body["error"]["code"])


async def test_unknown_flag_and_variable(api: Api) -> None:
    """Unknown flags and variables are 404 with their own codes."""
    flag = await api.get(DECISION, {"flag": "ghost"}, params={"visitor_code": "v"})
    variable = await api.get(
        VARIABLE, {"flag": "new_checkout", "variable": "size"}, params={"visitor_code": "v"}
    )
    variations = await api.get("/v1/flags/{flag}/variations", {"flag": "ghost"})
    assert (404, "FLAG_NOT_FOUND") == (flag.status, flag.body["error"]["code"])
    assert (404, "VARIABLE_NOT_FOUND") == (variable.status, variable.body["error"]["code"])
    assert (404, "FLAG_NOT_FOUND") == (variations.status, variations.body["error"]["code"])


async def test_body_over_the_limit_is_413(start: AppFactory) -> None:
    """A body over FLAGPOST_MAX_BODY is refused with 413, with or without a length header."""
    async with start(max_body=2048) as api:
        big = {"visitor_code": "v", "context": {"note": "x" * 4000}}
        reply = await api.post("/v1/decide", json=big)
        assert (413, "PAYLOAD_TOO_LARGE") == (reply.status, reply.body["error"]["code"])

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"visitor_code": "v", "context": {"note": "'
            yield b"x" * 4000
            yield b'"}}'

        streamed = await api.post("/v1/decide", data=chunks())
        assert (413, "PAYLOAD_TOO_LARGE") == (streamed.status, streamed.body["error"]["code"])


async def test_unknown_route_and_method_answer_json(api: Api) -> None:
    """Routing errors use the same error body."""
    missing = await api.get("/v2/everything")
    wrong = await api.call("DELETE", "/v1/decide")
    assert (404, "NOT_FOUND") == (missing.status, missing.body["error"]["code"])
    assert (405, "METHOD_NOT_ALLOWED") == (wrong.status, wrong.body["error"]["code"])
    assert "POST" == wrong.headers["Allow"]


async def test_caller_request_id_is_echoed(api: Api) -> None:
    """An acceptable X-Request-Id is kept; an unacceptable one is replaced."""
    kept = await api.get("/healthz", headers={"X-Request-Id": "abc-123"})
    replaced = await api.get("/healthz", headers={"X-Request-Id": "bad id\u00e9"})
    assert "abc-123" == kept.headers["X-Request-Id"]
    assert replaced.headers["X-Request-Id"] not in ("", "bad id\u00e9")
