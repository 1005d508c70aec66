"""The errors the HTTP API answers with, each with a stable code and status.

    ApiError                    {"error": {"code", "message"}} with an HTTP status
    ├── 400 INVALID_REQUEST     malformed JSON, wrong types, unknown fields (.field names it)
    ├── 400 INVALID_VISITOR_CODE
    ├── 400 UNKNOWN_ENVIRONMENT
    ├── 400 MALFORMED_HTTP      not parseable as HTTP/1.1 (nothing of it is echoed)
    ├── 401 UNAUTHORIZED, WEBHOOK_EXPIRED, WEBHOOK_REPLAYED
    ├── 404 FLAG_NOT_FOUND, VARIABLE_NOT_FOUND, EVENT_NOT_FOUND, NOT_FOUND
    ├── 408 REQUEST_TIMEOUT     the body did not arrive within FLAGPOST_BODY_TIMEOUT
    ├── 413 PAYLOAD_TOO_LARGE
    ├── 503 NOT_READY           no ruleset has been loaded yet
    └── 503 STORE_UNAVAILABLE   the visitor store (or Redis) did not answer in time

Errors of the ``rules`` core map onto these through ``from_rules_error``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

import rules

__all__ = ["ApiError", "error_response", "from_rules_error", "json_response"]


class ApiError(Exception):
    """An error answered to the client as JSON with a stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        closes: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        #: The connection is closed after the answer: what is left of the request cannot be
        #: read (an undecodable or stalled body).
        self.closes = closes

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def invalid(message: str, field: str | None = None) -> ApiError:
    """A 400 INVALID_REQUEST naming the offending field."""
    return ApiError(400, "INVALID_REQUEST", message, field)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer: every JSON response of flagpost's is made here."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response(error.body(), error.status, headers or error.headers or None)
    if error.closes:
        response.force_close()
    return response


_RULES_ERRORS: dict[type[rules.RulesError], tuple[int, str]] = {
    rules.FlagNotFound: (404, "FLAG_NOT_FOUND"),
    rules.VariableNotFound: (404, "VARIABLE_NOT_FOUND"),
    rules.InvalidVisitorCode: (400, "INVALID_VISITOR_CODE"),
    rules.UnknownEnvironment: (400, "UNKNOWN_ENVIRONMENT"),
    rules.InvalidContext: (400, "INVALID_REQUEST"),
}


def from_rules_error(error: rules.RulesError) -> ApiError:
    """The API error for an error of the decision core."""
    status, code = _RULES_ERRORS.get(type(error), (400, "INVALID_REQUEST"))
    return ApiError(status, code, str(error))
